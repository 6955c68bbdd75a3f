//! The `notafs` inspection and scripting tool, and the helpers it shares
//! with `mkfs.notafs` ([`common`]).
pub mod app;
pub mod common;
pub mod demo;
pub mod dump;
