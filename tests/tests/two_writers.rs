//! One writer at a time, across real processes and the real release tools
//! (issue 8, item 5): while a writer holds an image, every other writer
//! (`notafs put`, `mkfs.notafs -F`, `fsck.notafs -y` / `-p`, a second
//! `notafs-fuse --rw`) fails with exit 8 and one line saying the image is in
//! use, while readers (`notafs ls`, `fsck.notafs -n`) go on working.
//!
//! The holder is either this test binary re-executed with `HOLD_ENV` set (it
//! keeps a writable `FileDevice` open until its stdin closes) or a
//! `notafs-fuse --rw` mount when FUSE works here.
//!
//! The tools are the binaries next to this test's directory
//! (`target/release/` for `cargo test --release`), built by
//! `cargo test --workspace` or `cargo build --release`.
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use notafs_blockdev::file::{FileDevice, FileOptions};

const HOLD_ENV: &str = "NOTAFS_TWO_WRITERS_HOLD";

/// The directory holding the workspace's binaries: the parent of `deps/`.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the tools first (cargo build --release --bins)",
        p.display()
    );
    p
}

/// In the re-executed child: hold the image writable until stdin closes.
fn child_mode() -> bool {
    let Ok(path) = std::env::var(HOLD_ENV) else {
        return false;
    };
    match FileDevice::open(&path, &FileOptions::default()) {
        Ok(dev) => {
            println!("\nHELD");
            std::io::stdout().flush().unwrap();
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(dev);
        }
        Err(e) => println!("\nFAILED {e}"),
    }
    true
}

fn spawn_holder(test: &str, img: &Path) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(HOLD_ENV, img)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("holder exited early").unwrap();
        assert!(!line.starts_with("FAILED"), "holder: {line}");
        if line == "HELD" {
            // Keep reading, so the holder's last lines never meet a closed pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return child;
        }
    }
}

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(bin(prog))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A writer refused: exit 8 and exactly one line on stderr saying the image
/// is in use by another writer.
fn assert_refused(o: &Output, what: &str, holder: &str) {
    assert_eq!(o.status.code(), Some(8), "{what}: {}", show(o));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line expected: {}", show(o));
    assert!(
        lines[0].contains("in use by another writer"),
        "{what}: {}",
        show(o)
    );
    assert!(
        lines[0].contains(holder),
        "{what}: holder {holder}: {}",
        show(o)
    );
}

fn assert_ok(o: &Output, what: &str) {
    assert_eq!(o.status.code(), Some(0), "{what}: {}", show(o));
}

/// A formatted image holding /a.txt.
fn setup(dir: &Path) -> (String, PathBuf) {
    let img = dir.join("img");
    let s = img.to_str().unwrap().to_string();
    assert_ok(&run("mkfs-notafs", &["-q", "-s", "32M", &s]), "mkfs");
    let local = dir.join("a.txt");
    std::fs::write(&local, b"first writer's data\n").unwrap();
    assert_ok(
        &run("notafs", &["put", &s, local.to_str().unwrap(), "/a.txt"]),
        "put /a.txt",
    );
    (s, local)
}

/// Every writer is refused, every reader works, and nothing changed.
fn writers_refused_readers_work(img: &str, local: &Path, holder: &str) {
    let before = std::fs::read(img).unwrap();
    let l = local.to_str().unwrap();
    assert_refused(
        &run("notafs", &["put", img, l, "/b.txt"]),
        "notafs put",
        holder,
    );
    assert_refused(
        &run("notafs", &["mkdir", img, "/d"]),
        "notafs mkdir",
        holder,
    );
    assert_refused(&run("mkfs-notafs", &["-F", "-q", img]), "mkfs -F", holder);
    assert_refused(&run("fsck-notafs", &["-y", img]), "fsck -y", holder);
    assert_refused(&run("fsck-notafs", &["-p", img]), "fsck -p", holder);

    let ls = run("notafs", &["ls", img, "/"]);
    assert_ok(&ls, "notafs ls");
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("a.txt"),
        "{}",
        show(&ls)
    );
    let cat = run("notafs", &["cat", img, "/a.txt"]);
    assert_ok(&cat, "notafs cat");
    assert_eq!(cat.stdout, b"first writer's data\n");
    assert_ok(&run("fsck-notafs", &["-n", img]), "fsck -n");
    assert!(
        std::fs::read(img).unwrap() == before,
        "a refused writer changed the image"
    );
}

#[test]
fn tools_refuse_a_second_writer_while_a_process_holds_the_image() {
    if child_mode() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, local) = setup(dir.path());
    let mut holder = spawn_holder(
        "tools_refuse_a_second_writer_while_a_process_holds_the_image",
        Path::new(&img),
    );
    let pid = format!("pid {}", holder.id());
    writers_refused_readers_work(&img, &local, &pid);
    // The holder lets go: writers work again.
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert_ok(
        &run("notafs", &["put", &img, local.to_str().unwrap(), "/b.txt"]),
        "put after the holder closed",
    );
    assert_ok(&run("fsck-notafs", &["-y", &img]), "fsck -y after");
}

fn fuse_usable() -> bool {
    Path::new("/dev/fuse").exists()
        && Command::new("fusermount3")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn mounted(mnt: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let m = mnt.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(m))
}

/// Unmounts and reaps the daemon even when the test fails.
struct Mount {
    child: Child,
    mnt: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        if mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .status();
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tools_refuse_a_second_writer_while_notafs_fuse_rw_is_mounted() {
    if child_mode() {
        return;
    }
    if !fuse_usable() {
        eprintln!("SKIPPED: /dev/fuse or fusermount3 missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, local) = setup(dir.path());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let child = Command::new(bin("notafs-fuse"))
        .args(["--rw", &img, mnt.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = format!("pid {}", child.id());
    let mut m = Mount {
        child,
        mnt: mnt.clone(),
    };
    let t = Instant::now();
    while !mounted(&mnt) {
        if let Ok(Some(st)) = m.child.try_wait() {
            let mut err = String::new();
            let _ = m.child.stderr.take().unwrap().read_to_string(&mut err);
            eprintln!("SKIPPED: notafs-fuse could not mount ({st}): {err}");
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "mount timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
    writers_refused_readers_work(&img, &local, &pid);

    // A second read-write mount is refused too; a read-only one works.
    let mnt2 = dir.path().join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let o = run("notafs-fuse", &["--rw", &img, mnt2.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0), "second --rw mount: {}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use by another writer"),
        "second --rw mount: {}",
        show(&o)
    );
    assert!(!mounted(&mnt2));
    drop(m);
    assert_ok(
        &run("notafs", &["put", &img, local.to_str().unwrap(), "/c.txt"]),
        "put after unmount",
    );
}
