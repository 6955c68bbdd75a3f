//! The `notafs` inspection and scripting tool. The helpers it shares with
//! `mkfs.notafs` and `fsck.notafs` live in [`notafs_tools_common`],
//! re-exported here as [`common`].
pub mod app;
pub mod demo;
pub mod dump;
mod readahead;
mod signals;

pub use notafs_tools_common as common;
