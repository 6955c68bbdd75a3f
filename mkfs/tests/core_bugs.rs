//! Reproducers of notafs-core bugs found while writing the tools. Ignored
//! until fixed in notafs-core (the tools work around them); run with
//! `cargo test -p mkfs --test core_bugs -- --ignored`.
use std::sync::Arc;

use notafs_blockdev::memory::MemoryDevice;
use notafs_core::{FormatOptions, Fs};

/// `Fs::generations` is documented as "those whose slot and roots verified
/// at open, plus commits made since", but of the commits made through a
/// handle only the newest is listed: after format + 3 commits it returns
/// [4, 1] instead of [4, 3, 2, 1]. A fresh `Fs::open` lists all four.
/// (`notafs demo` prints the generations after reopening for this reason.)
#[test]
fn generations_lists_every_commit_made_through_the_handle() {
    let dev = Arc::new(MemoryDevice::new(4096, 4096).unwrap());
    let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
    for i in 0..3u8 {
        fs.create(&format!("f{i}")).unwrap();
        fs.commit().unwrap();
    }
    let reopened: Vec<u64> = Fs::open(dev, &Default::default())
        .unwrap()
        .generations()
        .iter()
        .map(|g| g.generation)
        .collect();
    assert_eq!(reopened, [4, 3, 2, 1]);
    let live: Vec<u64> = fs.generations().iter().map(|g| g.generation).collect();
    assert_eq!(live, [4, 3, 2, 1]);
}
