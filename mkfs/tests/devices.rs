//! mkfs.notafs on block devices and NBD exports (issues 11 and 12): 4096-byte
//! blocks on a loop device with 512-byte sectors, URIs formatted without a
//! local-path check, signature detection and -F over NBD. Runs the real
//! binaries; prints SKIPPED (and passes) where root, losetup or qemu-nbd
//! are missing.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn mkfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mkfs-notafs"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("spawn mkfs")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("killed by a signal")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn skip(why: &str) {
    println!("SKIPPED: {why}");
    eprintln!("SKIPPED: {why}");
}

/// A loop device over an image file; detached on drop.
struct Loop(String);

impl Loop {
    fn attach(img: &Path) -> Option<Loop> {
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(img)
            .output()
            .ok()?;
        if !o.status.success() {
            return None;
        }
        Some(Loop(String::from_utf8_lossy(&o.stdout).trim().to_string()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn loop_device_with_512_byte_sectors_gets_4096_byte_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("loop.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let Some(lo) = Loop::attach(&img) else {
        return skip("cannot attach a loop device (needs root and losetup)");
    };
    let sys = format!(
        "/sys/block/{}/queue/logical_block_size",
        lo.0.trim_start_matches("/dev/")
    );
    let sector = std::fs::read_to_string(&sys).unwrap_or_default();
    if sector.trim() != "512" {
        return skip(&format!(
            "{} has {:?}-byte sectors, not 512",
            lo.0,
            sector.trim()
        ));
    }
    let o = mkfs(&[&lo.0]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("block size:   4096 bytes (8192 blocks)"),
        "{}",
        text(&o)
    );
    // The same image as a file gets the same: one format, whatever the path.
    drop(lo);
    let sb = std::fs::read(&img).unwrap();
    assert_eq!(u32::from_le_bytes(sb[56..60].try_into().unwrap()), 4096);
    // -b 512 still gives 512 on the device.
    let Some(lo) = Loop::attach(&img) else {
        return skip("cannot attach a loop device a second time");
    };
    let o = mkfs(&["-F", "-b", "512", &lo.0]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("block size:   512 bytes"), "{}", text(&o));
}

/// `qemu-nbd` serving an image file on a Unix socket; killed on drop.
struct QemuNbd {
    child: Child,
    sock: PathBuf,
}

impl QemuNbd {
    fn serve(img: &Path, dir: &Path) -> Option<QemuNbd> {
        let ok = Command::new("qemu-nbd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            skip("qemu-nbd is not installed");
            return None;
        }
        let sock = dir.join("nbd.sock");
        let child = Command::new("qemu-nbd")
            .arg("-k")
            .arg(&sock)
            .args(["-f", "raw", "--persistent", "--shared=8", "--cache=none"])
            .arg(img)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn qemu-nbd");
        let mut s = QemuNbd { child, sock };
        let t0 = Instant::now();
        while !s.sock.exists() {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("qemu-nbd exited at start: {st}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "qemu-nbd did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(s)
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nbd_uri_is_formatted_detected_and_forced() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("nbd.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    // A foreign signature first: ext4's magic at byte 1080.
    let mut raw = std::fs::read(&img).unwrap();
    raw[1080] = 0x53;
    raw[1081] = 0xEF;
    std::fs::write(&img, &raw).unwrap();
    let Some(srv) = QemuNbd::serve(&img, dir.path()) else {
        return;
    };
    let uri = srv.uri();
    // Found over NBD, refused without -F, nothing written.
    let o = mkfs(&[&uri]);
    assert_eq!(code(&o), 8, "{}", text(&o));
    assert!(text(&o).contains("ext2/3/4"), "{}", text(&o));
    assert!(text(&o).contains("use -F"), "{}", text(&o));
    assert!(std::fs::read(&img).unwrap() == raw, "refused mkfs wrote");
    // A dry run reads but does not write.
    let o = mkfs(&["-n", "-F", &uri]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(std::fs::read(&img).unwrap() == raw, "dry run wrote");
    // -F formats (and wipes the foreign magic).
    let o = mkfs(&["-F", "-L", "over-nbd", &uri]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("overwrote an ext2/3/4"), "{}", text(&o));
    assert!(text(&o).contains("block size:   4096 bytes (4096 blocks)"));
    let now = std::fs::read(&img).unwrap();
    assert_eq!(&now[0..6], b"NOTAFS");
    assert_ne!(&now[1080..1082], &[0x53, 0xEF]);
    // Now a notafs filesystem is found over NBD.
    let o = mkfs(&[&uri]);
    assert_eq!(code(&o), 8, "{}", text(&o));
    assert!(text(&o).contains("a notafs filesystem"), "{}", text(&o));
    // --size makes no sense for an export.
    let o = mkfs(&["-s", "1G", &uri]);
    assert_eq!(code(&o), 8, "{}", text(&o));
    assert!(text(&o).contains("image files only"), "{}", text(&o));
}

#[test]
fn help_lists_the_device_forms() {
    let o = mkfs(&["--help"]);
    assert_eq!(code(&o), 0);
    for form in ["nbd://", "nbd+unix://", "nbds://", "file:PATH", "/dev/"] {
        assert!(
            text(&o).contains(form),
            "--help lacks {form}:\n{}",
            text(&o)
        );
    }
}
