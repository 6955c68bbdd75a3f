//! Shared by the tests that need every tool built (install, documentation
//! commands): where the repository and the release binaries are.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository's root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The built names of the tools the install script installs.
pub const TOOLS: [&str; 4] = ["mkfs-notafs", "fsck-notafs", "notafs", "notafs-fuse"];

/// The directory holding this build's binaries (target/release), with every
/// tool in it: `cargo test --workspace` builds them all; a test of this
/// package alone builds the missing ones with the cargo that runs it (after
/// changing mkfs, fsck or notafs-fuse, build them or test the workspace).
pub fn built_binaries() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_notafs"))
        .parent()
        .unwrap()
        .to_path_buf();
    if TOOLS.iter().any(|t| !dir.join(t).exists()) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut c = std::process::Command::new(cargo);
        c.current_dir(repo_root())
            .args(["build", "-p", "mkfs", "-p", "fsck", "-p", "notafs-fuse"]);
        if profile == "release" {
            c.arg("--release");
        }
        let st = c.status().expect("run cargo build");
        assert!(st.success(), "cargo build of the tools failed");
    }
    for t in TOOLS {
        assert!(dir.join(t).exists(), "{t} not built in {}", dir.display());
    }
    dir
}

/// Every path under `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p.clone());
                }
                out.push(p);
            }
        }
    }
    out
}
