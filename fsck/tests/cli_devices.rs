//! The command line around the check (issue 12, "The tools"): the block
//! size comes from the superblock, `--generation` that is not retained is
//! named as such, `--json` prints the UUID in its standard form, `--help`
//! lists the device forms. Runs the real binary.
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;

const LIM: Duration = Duration::from_secs(30);

/// An image file of `blocks` blocks of `bs` bytes, formatted (and with one
/// file committed) through a device presenting `bs`-byte blocks.
fn image_with_block_size(dir: &Path, bs: u32, blocks: u64) -> String {
    let p = dir.join(format!("bs{bs}.img"));
    std::fs::File::create(&p)
        .unwrap()
        .set_len(bs as u64 * blocks)
        .unwrap();
    let ps = p.to_str().unwrap().to_string();
    let dev = notafs_blockdev::open(
        &ps,
        &notafs_blockdev::OpenOptions {
            block_size: Some(bs),
            ..Default::default()
        },
    )
    .unwrap();
    let fs = notafs_core::Fs::format(
        Arc::from(dev),
        &notafs_core::FormatOptions {
            uuid: Some(UUID),
            ..Default::default()
        },
    )
    .unwrap();
    fs.create("f").unwrap().append(&pattern(3, 10_000)).unwrap();
    fs.commit().unwrap();
    ps
}

#[test]
fn block_size_is_read_from_the_superblock() {
    let dir = tempfile::tempdir().unwrap();
    for bs in [512u32, 16384] {
        let img = image_with_block_size(dir.path(), bs, (8 << 20) / bs as u64);
        let r = run_fsck(&["-n", &img], LIM);
        assert_eq!(r.code, 0, "bs {bs}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("1 files"), "{}", r.stdout);
        // An explicit -b still wins (and a wrong one is an operational error).
        let b = bs.to_string();
        assert_eq!(run_fsck(&["-n", "-b", &b, &img], LIM).code, 0);
        assert_eq!(run_fsck(&["-n", "-b", "4096", &img], LIM).code & 8, 8);
        // Repairs open it the same way.
        assert_eq!(run_fsck(&["-p", &img], LIM).code, 0);
    }
}

#[test]
fn generation_not_retained_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "g.img", &good_image());
    let img = img.to_str().unwrap();
    let r = run_fsck(&["-n", "--generation", "99", img], LIM);
    assert_eq!(r.code, 8, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("generation 99 is not retained"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stdout.contains("ERRORS LEFT UNCORRECTED"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("blocks used"), "{}", r.stdout);
    let r = run_fsck(&["-n", "--json", "--generation", "99", img], LIM);
    assert_eq!(r.code, 8);
    assert!(r.stdout.contains("\"exit_code\":8"), "{}", r.stdout);
    assert!(r.stdout.contains("is not retained"), "{}", r.stdout);
    // A retained one is checked as before.
    let j = run_fsck(&["-n", "--json", img], LIM);
    let newest = j
        .stdout
        .split("\"newest\":")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .to_string();
    let r = run_fsck(&["-n", "--generation", &newest, img], LIM);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

#[test]
fn json_uuid_has_dashes() {
    let dir = tempfile::tempdir().unwrap();
    let img = write_image(dir.path(), "j.img", &good_image());
    let r = run_fsck(&["-n", "--json", img.to_str().unwrap()], LIM);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("\"uuid\":\"11111111-1111-1111-1111-111111111111\""),
        "{}",
        r.stdout
    );
}

#[test]
fn help_lists_the_device_forms() {
    let r = run_fsck(&["--help"], LIM);
    assert_eq!(r.code, 0);
    for form in ["nbd://", "nbd+unix://", "nbds://", "file:PATH", "/dev/"] {
        assert!(
            r.stdout.contains(form),
            "--help lacks {form}:\n{}",
            r.stdout
        );
    }
}

#[test]
fn block_size_comes_from_the_backup_when_the_primary_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let img = image_with_block_size(dir.path(), 512, 16384);
    // Zero the primary superblock: only the backup (last 512-byte block)
    // says the block size is 512.
    let mut b = std::fs::read(&img).unwrap();
    b[..512].fill(0);
    std::fs::write(&img, &b).unwrap();
    let r = run_fsck(&["-n", &img], LIM);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("superblock"), "{}", r.stdout);
    let r = run_fsck(&["-p", &img], LIM);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let r = run_fsck(&["-n", &img], LIM);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // A copy with the magic but a bad checksum is not trusted for the size.
    let mut b = std::fs::read(&img).unwrap();
    b[100] ^= 0xff;
    let n = b.len();
    b[n - 512 + 100] ^= 0xff;
    std::fs::write(&img, &b).unwrap();
    let r = run_fsck(&["-n", &img], LIM);
    assert_eq!(r.code, 8, "{}{}", r.stdout, r.stderr);
}

/// `qemu-nbd` serving an image file on a Unix socket; killed on drop.
struct QemuNbd {
    child: std::process::Child,
    sock: std::path::PathBuf,
}

impl QemuNbd {
    fn serve(img: &str, dir: &Path) -> Option<QemuNbd> {
        use std::process::{Command, Stdio};
        let ok = Command::new("qemu-nbd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            println!("SKIPPED: qemu-nbd is not installed");
            return None;
        }
        let sock = dir.join("nbd.sock");
        let child = Command::new("qemu-nbd")
            .arg("-k")
            .arg(&sock)
            .args([
                "-f",
                "raw",
                "--persistent",
                "--shared=8",
                "--cache=none",
                img,
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn qemu-nbd");
        let mut s = QemuNbd { child, sock };
        let t0 = std::time::Instant::now();
        while !s.sock.exists() {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("qemu-nbd exited at start: {st}");
            }
            assert!(t0.elapsed() < LIM, "qemu-nbd did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(s)
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn block_size_is_read_from_the_superblock_over_nbd() {
    let dir = tempfile::tempdir().unwrap();
    for bs in [512u32, 16384] {
        let sub = dir.path().join(bs.to_string());
        std::fs::create_dir(&sub).unwrap();
        let img = image_with_block_size(&sub, bs, (8 << 20) / bs as u64);
        let Some(srv) = QemuNbd::serve(&img, &sub) else {
            return;
        };
        let uri = format!("nbd+unix:///?socket={}", srv.sock.display());
        let r = run_fsck(&["-n", &uri], LIM);
        assert_eq!(r.code, 0, "bs {bs}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("1 files"), "{}", r.stdout);
        let r = run_fsck(&["-n", "--json", &uri], LIM);
        assert!(
            r.stdout.contains(&format!("\"block_size\":{bs}")),
            "{}",
            r.stdout
        );
    }
}
