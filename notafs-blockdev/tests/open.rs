//! `open(spec)` picks the backend from the spec.
mod common;

use common::*;
use notafs_blockdev::open::parse_size;
use notafs_blockdev::{open, BlockError, OpenOptions};

#[test]
fn memory_spec() {
    let d = open("memory:64M", &OpenOptions::default()).unwrap();
    let g = d.geometry();
    assert_eq!((g.block_size, g.block_count), (4096, 16384));
    assert!(d.describe().starts_with("memory"));
    let d = open(
        "memory:1M",
        &OpenOptions {
            block_size: Some(512),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(d.geometry().block_count, 2048);
    d.write(5, &[7u8; 512]).unwrap();
    let mut b = [0u8; 512];
    d.read(5, &mut b).unwrap();
    assert_eq!(b, [7u8; 512]);
    for bad in ["memory:", "memory:lots", "memory:100", "memory:1Q"] {
        assert!(open(bad, &OpenOptions::default()).is_err(), "{bad}");
    }
}

#[test]
fn file_spec_and_plain_path() {
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 1 << 20);
    let s = img.display().to_string();
    for spec in [s.clone(), format!("file:{s}")] {
        let d = open(&spec, &OpenOptions::default()).unwrap();
        assert_eq!(d.geometry().block_count, 256);
        assert!(d.describe().starts_with("file:"), "{}", d.describe());
        d.write(1, &pattern(1, 1, 4096)).unwrap();
        d.flush().unwrap();
    }
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(bytes[4096..8192], pattern(1, 1, 4096)[..]);
    // Options are passed through.
    let ro = open(
        &s,
        &OpenOptions {
            read_only: true,
            block_size: Some(1024),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ro.geometry().block_size, 1024);
    assert!(ro.write(0, &[0u8; 1024]).is_err());
    let direct = open(
        &s,
        &OpenOptions {
            direct: true,
            ..Default::default()
        },
    );
    match direct {
        Ok(d) => assert!(d.describe().contains("O_DIRECT"), "{}", d.describe()),
        Err(e) => println!("SKIPPED O_DIRECT: {e}"),
    }
}

#[test]
fn missing_path_and_wrong_kinds() {
    let dir = disk_tempdir();
    let missing = dir.path().join("nope");
    let e = open(&missing.display().to_string(), &OpenOptions::default())
        .err()
        .expect("missing file must fail");
    assert!(
        e.to_string()
            .contains(&format!("no such file: {}", missing.display())),
        "{e}"
    );
    let e = open(
        &format!("file:{}", missing.display()),
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("no such file"), "{e}");
    let e = open(&dir.path().display().to_string(), &OpenOptions::default())
        .err()
        .expect("a directory is not a device");
    assert!(e.to_string().contains("directory"), "{e}");
    let e = open("/dev/null", &OpenOptions::default()).err().unwrap();
    assert!(e.to_string().contains("character device"), "{e}");
    let e = open("ftp://example/x", &OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(e, BlockError::Invalid(_)), "{e}");
}

#[test]
fn nbd_uris_route_to_the_nbd_backend() {
    // A socket that does not exist: the NBD backend tries to connect and
    // fails with an I/O error (not "unsupported", not a file lookup).
    let e = open(
        "nbd+unix:///?socket=/nonexistent/notafs-nbd.sock",
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert!(e.is_io(), "{e}");
    // A unix URI without a socket is a malformed spec.
    let e = open("nbd+unix:///x", &OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(e, BlockError::Invalid(_)), "{e}");
    // TLS forms are NBD URIs too: a missing socket is an I/O error, a
    // certificate directory that does not exist is refused before any
    // connection.
    let e = open(
        "nbds+unix:///?socket=/nonexistent/notafs-nbd.sock",
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert!(e.is_io(), "{e}");
    let e = open(
        "nbds+unix:///?socket=/nonexistent/s&tls-certificates=/nonexistent/pki",
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert!(
        matches!(e, BlockError::Invalid(ref m) if m.contains("not a directory")),
        "{e}"
    );
}

#[test]
fn block_device_spec() {
    let _g = loop_lock();
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 4 << 20);
    let Some(lo) = attach_or_skip(&img, None) else {
        return;
    };
    let d = open(&lo.dev.display().to_string(), &OpenOptions::default()).unwrap();
    assert!(d.describe().starts_with("block device"), "{}", d.describe());
    assert_eq!(d.geometry().block_size, 512);
    assert_eq!(d.geometry().size_bytes(), 4 << 20);
    let d4 = open(
        &format!("file:{}", lo.dev.display()),
        &OpenOptions {
            read_only: true,
            block_size: Some(4096),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(d4.geometry().block_count, 1024);
}

#[test]
fn sizes() {
    assert_eq!(parse_size("4096"), Some(4096));
    assert_eq!(parse_size("512K"), Some(512 << 10));
    assert_eq!(parse_size("64M"), Some(64 << 20));
    assert_eq!(parse_size("1G"), Some(1 << 30));
    assert_eq!(parse_size("2T"), Some(2 << 40));
    assert_eq!(parse_size("1X"), None);
    assert_eq!(parse_size(""), None);
}
