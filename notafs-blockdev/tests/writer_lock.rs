//! One writer at a time: a writable open of an image file takes an exclusive
//! lock that works across processes; read-only opens take none.
//!
//! The other process is this test binary re-executed with `HOLD_ENV` set: it
//! opens the image (writable or read-only as asked), prints `HELD`, and keeps
//! it open until its stdin is closed or it is killed.
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use notafs_blockdev::file::{FileDevice, FileOptions};
use notafs_blockdev::{open, BlockDevice, BlockError, OpenOptions};

const HOLD_ENV: &str = "NOTAFS_TEST_HOLD_IMAGE";
const HOLD_RO_ENV: &str = "NOTAFS_TEST_HOLD_READ_ONLY";

/// In the child: hold the image until stdin closes. Returns false in the
/// parent (the variable is unset), so the calling test runs normally.
fn child_mode() -> bool {
    let Ok(path) = std::env::var(HOLD_ENV) else {
        return false;
    };
    let read_only = std::env::var(HOLD_RO_ENV).is_ok();
    let dev = FileDevice::open(
        &path,
        &FileOptions {
            read_only,
            ..Default::default()
        },
    );
    match dev {
        Ok(dev) => {
            println!("\nHELD");
            std::io::stdout().flush().unwrap();
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            drop(dev);
        }
        Err(e) => println!("\nFAILED {e}"),
    }
    true
}

/// Start a process holding `img` open (writable unless `read_only`).
fn spawn_holder(test: &str, img: &Path, read_only: bool) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(HOLD_ENV, img)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if read_only {
        cmd.env(HOLD_RO_ENV, "1");
    }
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    loop {
        let line = lines
            .next()
            .expect("holder exited before holding the image")
            .unwrap();
        if line == "HELD" {
            break;
        }
        assert!(!line.starts_with("FAILED"), "holder: {line}");
    }
    // Keep reading, so the holder's last lines never meet a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

fn image(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(1 << 20).unwrap();
    img
}

fn rw() -> FileOptions {
    FileOptions::default()
}

fn ro() -> FileOptions {
    FileOptions {
        read_only: true,
        ..Default::default()
    }
}

#[test]
fn second_writer_in_another_process_is_refused() {
    if child_mode() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    // Something the writer wrote, to see that a refused create leaves it.
    {
        let d = FileDevice::open(&img, &rw()).unwrap();
        d.write(3, &[0xAB; 4096]).unwrap();
        d.flush().unwrap();
    }
    let mut child = spawn_holder("second_writer_in_another_process_is_refused", &img, false);
    let pid = child.id();

    let e = FileDevice::open(&img, &rw())
        .err()
        .expect("second writer opened");
    assert!(e.is_busy(), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("in use by another writer"), "{msg}");
    assert!(msg.contains(&img.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("pid {pid}")), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");

    // The generic open used by every tool gives the same error.
    let e = open(img.to_str().unwrap(), &OpenOptions::default())
        .err()
        .expect("second writer opened through open()");
    assert!(matches!(e, BlockError::Busy { .. }), "{e}");
    // O_DIRECT writers too.
    let e = FileDevice::open(
        &img,
        &FileOptions {
            direct: true,
            ..Default::default()
        },
    )
    .err()
    .expect("O_DIRECT second writer opened");
    assert!(
        e.is_busy() || matches!(e, BlockError::Unsupported { .. }),
        "{e}"
    );
    // create() must not truncate an image another writer holds.
    let e = FileDevice::create(&img, 1 << 20)
        .err()
        .expect("create over a held image");
    assert!(e.is_busy(), "{e}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 1 << 20);

    // Readers are not blocked by the writer.
    let r = FileDevice::open(&img, &ro()).unwrap();
    let mut b = vec![0u8; 4096];
    r.read(3, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0xAB), "create() truncated the image");
    let r2 = open(
        img.to_str().unwrap(),
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    r2.read(3, &mut b).unwrap();

    // The holder lets go: the next writer gets the image.
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    FileDevice::open(&img, &rw()).expect("writer after the holder closed");
}

#[test]
fn lock_is_released_when_the_holder_is_killed() {
    if child_mode() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let mut child = spawn_holder("lock_is_released_when_the_holder_is_killed", &img, false);
    assert!(FileDevice::open(&img, &rw()).err().unwrap().is_busy());
    child.kill().unwrap();
    child.wait().unwrap();
    FileDevice::open(&img, &rw()).expect("writer after the holder was killed");
}

#[test]
fn readers_in_another_process_do_not_block_a_writer() {
    if child_mode() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let mut child = spawn_holder(
        "readers_in_another_process_do_not_block_a_writer",
        &img,
        true,
    );
    let w = FileDevice::open(&img, &rw()).expect("writer while a reader holds the image");
    w.write(0, &[1; 4096]).unwrap();
    // And a reader opens while the writer holds it.
    FileDevice::open(&img, &ro()).expect("reader while a writer holds the image");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

#[test]
fn two_writers_in_one_process_conflict() {
    if child_mode() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let a = FileDevice::open(&img, &rw()).unwrap();
    let e = FileDevice::open(&img, &rw())
        .err()
        .expect("second writer opened");
    let msg = e.to_string();
    assert!(e.is_busy(), "{msg}");
    assert!(
        msg.contains(&format!("pid {}, this process", std::process::id())),
        "{msg}"
    );
    drop(a);
    FileDevice::open(&img, &rw()).expect("writer after the first was dropped");
}
