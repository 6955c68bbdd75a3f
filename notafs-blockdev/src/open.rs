//! Open a device from a user-supplied spec (being written).
use crate::{BlockDevice, Result};

/// Options for [`open`].
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    pub read_only: bool,
    pub direct: bool,
}

/// Open the device named by `spec`.
pub fn open(spec: &str, opts: &OpenOptions) -> Result<Box<dyn BlockDevice>> {
    let _ = (spec, opts);
    Err(crate::BlockError::Unsupported { op: "open" })
}
