use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::BlockDevice;
use notafs_core::{Error, FormatOptions, Fs};
use std::sync::Arc;
#[test]
fn short_write_leaves_no_stale_tail() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::new(4096, 200).unwrap());
    let fs = Fs::format(
        dev,
        &FormatOptions {
            root_slots: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let f = fs.create("c").unwrap();
    f.write_at(0, &vec![1u8; 20808]).unwrap();
    fs.commit().unwrap();
    let free = fs.info().free_blocks;
    eprintln!("free {free}");
    let r = f.write_at(12370, &vec![154u8; 4096 * (free as usize + 10)]);
    assert!(matches!(r, Err(Error::NoSpace)), "{r:?}");
    let len = f.len().unwrap();
    eprintln!("len {len}");
    f.set_len(len + 10000).unwrap();
    let mut b = vec![0u8; 10000];
    f.read_at(len, &mut b).unwrap();
    assert!(
        b.iter().all(|&x| x == 0),
        "stale bytes past old end: {:?}",
        &b[..8]
    );
}

/// A long write that fails for lack of space must not undo earlier
/// accepted writes to its range that are still buffered: block 0 reads
/// what the earlier write put there (or what the failed write got to write
/// there), never the committed content.
#[test]
fn failed_long_write_keeps_earlier_buffered_blocks() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::new(4096, 1024).unwrap());
    let fs = Fs::format(dev, &FormatOptions::default()).unwrap();
    let f = fs.create("f").unwrap();
    f.write_at(0, &vec![1u8; 64 << 10]).unwrap();
    fs.commit().unwrap();
    // Accepted, buffered (a small whole-block write).
    f.write_at(0, &[2u8; 4096]).unwrap();
    // Fill the device.
    let g = fs.create("g").unwrap();
    let mut off = 0u64;
    while g.write_at(off, &vec![3u8; 256 << 10]).is_ok() {
        off += 256 << 10;
    }
    while g.write_at(off, &[3u8; 4096]).is_ok() {
        off += 4096;
    }
    let r = f.write_at(0, &vec![4u8; 1 << 20]);
    assert!(matches!(r, Err(Error::NoSpace)), "{r:?}");
    let mut b = vec![0u8; 4096];
    f.read_at(0, &mut b).unwrap();
    assert!(
        b.iter().all(|&x| x == 2) || b.iter().all(|&x| x == 4),
        "block 0 lost the accepted write: starts with {:?}",
        &b[..8]
    );
    drop((f, g));
    fs.commit().unwrap();
}
