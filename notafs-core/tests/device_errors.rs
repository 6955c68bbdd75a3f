//! Device errors: EIO on read is an error for that call; a failed write or
//! flush makes the filesystem refuse further writes until it is reopened,
//! with the last commit intact. Also covers the write-behind flusher.
use std::sync::Arc;

use notafs_blockdev::fault::{FaultConfig, FaultDevice};
use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::BlockDevice;
use notafs_core::{Error, FormatOptions, Fs, OpenOptions};

fn setup() -> (Arc<FaultDevice<MemoryDevice>>, Vec<u8>) {
    let mem = MemoryDevice::new(4096, 4096).unwrap();
    let dev = Arc::new(FaultDevice::new(mem, 1, FaultConfig::default()));
    let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    fs.create("f").unwrap().write_at(0, &data).unwrap();
    fs.commit().unwrap();
    (dev, data)
}

fn reopen_and_verify(dev: Arc<dyn BlockDevice>, data: &[u8]) {
    let fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
    assert_eq!(fs.snapshot().read_to_vec("f").unwrap(), data);
    let r = notafs_core::check::check(dev, &Default::default()).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
}

#[test]
fn failed_write_stops_writes_until_reopen() {
    let (dev, data) = setup();
    let fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
    dev.fail_next_write(1);
    let f = fs.open_file("f").unwrap();
    let r = f.write_at(0, &vec![9u8; 65536]);
    assert!(matches!(r, Err(Error::Device(_))), "{r:?}");
    assert!(matches!(fs.commit(), Err(Error::Failed)));
    assert!(matches!(fs.create("g"), Err(Error::Failed)));
    drop(f);
    drop(fs);
    reopen_and_verify(dev, &data);
}

#[test]
fn failed_flush_in_commit_stops_writes() {
    let (dev, data) = setup();
    let fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
    fs.open_file("f")
        .unwrap()
        .write_at(0, &vec![9u8; 65536])
        .unwrap();
    dev.fail_next_flush(1);
    assert!(matches!(fs.commit(), Err(Error::Device(_))));
    assert!(matches!(fs.commit(), Err(Error::Failed)));
    drop(fs);
    // The failed commit may or may not have become durable; either way the
    // image opens, checks clean and shows one whole generation.
    let fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
    let v = fs.snapshot().read_to_vec("f").unwrap();
    assert!(v == data || v[..65536].iter().all(|&b| b == 9));
    let r = notafs_core::check::check(dev, &Default::default()).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
}

#[test]
fn read_error_is_an_error_for_that_call_only() {
    let (dev, data) = setup();
    let fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
    let s = fs.snapshot();
    dev.fail_next_read(1);
    assert!(s.read_to_vec("f").is_err());
    assert_eq!(s.read_to_vec("f").unwrap(), data);
    fs.open_file("f")
        .unwrap()
        .write_at(0, b"still writable")
        .unwrap();
    fs.commit().unwrap();
}

#[test]
fn write_behind_flushes_and_reports_failure() {
    let (dev, _) = setup();
    let fs = Fs::open(
        dev.clone(),
        &OpenOptions {
            write_behind: Some(64 * 1024),
            ..Default::default()
        },
    )
    .unwrap();
    let before = dev.stats().flushes;
    let f = fs.create("big").unwrap();
    for i in 0..64u8 {
        f.append(&vec![i; 65536]).unwrap();
    }
    // The flusher runs asynchronously: give it a moment.
    for _ in 0..200 {
        if dev.stats().flushes > before {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(dev.stats().flushes > before, "no background flush happened");
    fs.commit().unwrap();
    // A background flush failure fails the filesystem like any flush error.
    dev.configure(|c| c.flush_error_rate = 1.0);
    for i in 0..64u8 {
        if f.append(&vec![i; 65536]).is_err() {
            break;
        }
    }
    let mut failed = false;
    for _ in 0..200 {
        if fs.commit().is_err() {
            failed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        failed,
        "commit kept succeeding on a device whose flushes fail"
    );
}

/// Fast defaults (issue 10): a library user who sets nothing gets
/// write-behind.
#[test]
fn write_behind_is_on_by_default() {
    let (dev, _) = setup();
    let fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
    let f = fs.create("big").unwrap();
    f.append(&vec![1u8; 65536]).unwrap();
    let before = dev.stats().flushes;
    for i in 0..(notafs_core::DEFAULT_WRITE_BEHIND / 65536 + 16) {
        f.append(&vec![i as u8; 65536]).unwrap();
    }
    for _ in 0..400 {
        if dev.stats().flushes > before {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        dev.stats().flushes > before,
        "default options: no background flush after {} MiB",
        notafs_core::DEFAULT_WRITE_BEHIND >> 20
    );
    fs.commit().unwrap();
}
