//! Every command in README.md and docs/USER-GUIDE.md runs as written.
//!
//! The fenced `sh` blocks of each document are run in order, as one bash
//! script (`set -euo pipefail`), in a fresh temporary directory that is also
//! `$HOME`, with the tools installed by `install.sh` under their installed
//! names. Lines that need a root-only block device or a FUSE mount are not
//! run: each prints `SKIPPED (reason): line`. `cargo` is a stand-in: the
//! harness has built the release binaries already, so `cargo build` does
//! nothing, `cargo run -p notafs-cli -- ARGS` runs the built `notafs ARGS`,
//! and `cargo test` (this very suite) is SKIPPED.
//!
//! The demo's "Try next" lines run the same way.
mod harness;

use std::path::Path;
use std::process::Command;

use harness::*;

/// Why a documented line cannot run here, if it cannot.
fn skip_reason(line: &str) -> Option<&'static str> {
    let t = line.trim_start();
    if ["/dev/sd", "/dev/loop", "/dev/nvme", "/dev/nbd", "/dev/vd"]
        .iter()
        .any(|d| t.contains(d))
    {
        return Some("needs a root-only block device");
    }
    if t.contains("/mnt/")
        || t.starts_with("fusermount")
        || t.starts_with("umount")
        || t.starts_with("mount ")
        || (t.starts_with("notafs-fuse ") && !t.contains("--help"))
    {
        return Some("needs a FUSE mount");
    }
    if t.starts_with("cargo test") {
        return Some("the test suite itself, which runs this test");
    }
    None
}

/// The commands of the fenced `sh` blocks of `md`, continuation lines joined.
fn sh_commands(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in md.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && t == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(line);
        let cmd = std::mem::take(&mut pending);
        let c = cmd.trim();
        if !c.is_empty() && !c.starts_with('#') {
            out.push(c.to_string());
        }
    }
    out
}

/// Single-quote `s` for bash.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A directory with a `cargo` stand-in (see the module documentation).
fn cargo_shim(dir: &Path, bins: &Path) {
    let shim = format!(
        r#"#!/bin/sh
case "$1" in
    build) echo "(docs test: binaries already built by the harness: cargo $*)"; exit 0 ;;
    run) while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift; done
         [ $# -gt 0 ] && shift
         exec {bins}/notafs "$@" ;;
    test) echo "SKIPPED (the test suite itself, which runs this test): cargo $*"; exit 0 ;;
    *) echo "docs test cargo stand-in: unexpected cargo $*" >&2; exit 2 ;;
esac
"#,
        bins = bins.display()
    );
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("cargo");
    std::fs::write(&p, shim).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Run `lines` as one bash script in `home`, as described above; returns
/// the output, or panics with it.
fn run_lines(home: &Path, bins: &Path, lines: &[String], what: &str) -> String {
    let shim = home.join(".docs-test-bin");
    cargo_shim(&shim, bins);
    let link = home.join("install.sh");
    if !link.exists() {
        std::os::unix::fs::symlink(repo_root().join("install.sh"), &link).unwrap();
    }
    let mut script = String::from("set -euo pipefail\n");
    let mut ran = 0;
    for l in lines {
        match skip_reason(l) {
            Some(why) => {
                script.push_str(&format!("echo {}\n", q(&format!("SKIPPED ({why}): {l}"))))
            }
            None => {
                ran += 1;
                script.push_str(&format!("echo {}\n{l}\n", q(&format!("+ {l}"))));
            }
        }
    }
    assert!(ran > 0, "{what}: no command to run");
    let path = format!(
        "{}:{}:{}:{}",
        shim.display(),
        home.join(".local/bin").display(),
        home.join(".local/sbin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("bash")
        .args(["-c", &script])
        .current_dir(home)
        .env("HOME", home)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", bins.parent().unwrap())
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The SKIPPED lines are part of the test's report.
    for l in out.lines().filter(|l| l.starts_with("SKIPPED")) {
        println!("{what}: {l}");
    }
    assert!(
        o.status.success(),
        "{what}: a documented command failed (exit {:?}); output, each command after '+':\n{out}",
        o.status.code()
    );
    out
}

fn run_document(rel: &str) {
    let bins = built_binaries();
    let md = std::fs::read_to_string(repo_root().join(rel)).unwrap();
    let lines = sh_commands(&md);
    let home = tempfile::tempdir().unwrap();
    run_lines(home.path(), &bins, &lines, rel);
}

#[test]
fn readme_commands_run_as_written() {
    run_document("README.md");
}

#[test]
fn user_guide_commands_run_as_written() {
    run_document("docs/USER-GUIDE.md");
}

#[test]
fn demo_try_next_lines_run_once_installed() {
    let bins = built_binaries();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // Not installed: the demo says how to install.
    let o = Command::new(bins.join("notafs"))
        .args(["demo", "d.img"])
        .current_dir(h)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("./install.sh"), "{out}");
    // Installed: every "Try next" line runs.
    run_lines(
        h,
        &bins,
        &["./install.sh --prefix ~/.local".to_string()],
        "install",
    );
    let installed = h.join(".local/bin/notafs");
    let o = Command::new(&installed)
        .args(["demo", "d.img"])
        .current_dir(h)
        .env(
            "PATH",
            format!(
                "{}:{}:/usr/bin:/bin",
                h.join(".local/bin").display(),
                h.join(".local/sbin").display()
            ),
        )
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        !out.contains("./install.sh"),
        "install hint while installed:\n{out}"
    );
    let next: Vec<String> = out
        .lines()
        .skip_while(|l| !l.starts_with("Try next"))
        .skip(1)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(next.len() >= 5, "{out}");
    assert!(
        next.iter().any(|l| l.starts_with("fsck.notafs")),
        "{next:?}"
    );
    run_lines(h, &bins, &next, "demo's Try next");
}

#[test]
fn extraction_and_skips() {
    let md = "text\n```sh\na --x \\\n  b   # c\n# only a comment\n\nmkfs.notafs /dev/sdb1\n```\n```text\nnot run\n```\n```sh\nnotafs-fuse d /mnt/x\ncargo test --release\n```\n";
    let c = sh_commands(md);
    assert_eq!(
        c,
        vec![
            "a --x   b   # c",
            "mkfs.notafs /dev/sdb1",
            "notafs-fuse d /mnt/x",
            "cargo test --release"
        ]
    );
    assert_eq!(skip_reason(&c[0]), None);
    assert!(skip_reason(&c[1]).unwrap().contains("block device"));
    assert!(skip_reason(&c[2]).unwrap().contains("FUSE"));
    assert!(skip_reason(&c[3]).is_some());
    assert_eq!(skip_reason("notafs-fuse --help"), None);
}
