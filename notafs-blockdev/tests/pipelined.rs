//! Single large O_DIRECT transfers from unaligned caller buffers: on io_uring
//! writes go through the bounce buffer in 256 KiB pieces in flight together
//! (each copied in just before it is submitted), reads through it one
//! 1 MiB `pread` at a time. Every size around the piece and chunk
//! boundaries, on an image file and on a loop device, must move exactly the
//! caller's bytes on every engine, and a read that comes up short must fail
//! the call.
mod common;

use common::*;
use notafs_blockdev::file::{AlignedBuf, FileDevice, FileOptions, IoEngine};
use notafs_blockdev::raw::{RawDevice, RawOptions};
use notafs_blockdev::{BlockDevice, BlockError};

const KIB: usize = 1024;

/// Transfer sizes (bytes, all multiples of 4 KiB) around the 256 KiB pieces
/// and the 1 MiB bounce chunk.
const SIZES: [usize; 8] = [
    256 * KIB,
    512 * KIB,
    516 * KIB,
    1024 * KIB - 4 * KIB,
    1024 * KIB,
    1024 * KIB + 12 * KIB,
    2304 * KIB - 4 * KIB,
    3 * 1024 * KIB,
];

/// `len` bytes at an address that is 8 bytes past a 4096 boundary (never
/// usable for O_DIRECT as it is).
struct Unaligned {
    raw: AlignedBuf,
    len: usize,
}

impl Unaligned {
    fn new(len: usize) -> Unaligned {
        Unaligned {
            raw: AlignedBuf::zeroed(len + 8, 4096).expect("alloc"),
            len,
        }
    }
    fn get(&self) -> &[u8] {
        &self.raw[8..8 + self.len]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.raw[8..8 + self.len]
    }
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    (0..len / 4096)
        .flat_map(|b| pattern(seed, b as u64, 4096))
        .collect()
}

/// Write each size at a few block offsets from an unaligned buffer, check
/// what the device then holds with an aligned read (no bounce), and read it
/// back into an unaligned buffer; finally overwrite the middle of a large
/// range and check the seams.
fn exercise(dev: &dyn BlockDevice, seed: u64) {
    let bs = dev.geometry().block_size as usize;
    let blocks = |bytes: usize| (bytes / bs) as u64;
    for (i, &len) in SIZES.iter().enumerate() {
        for start in [0u64, blocks(4096), blocks(300 * KIB)] {
            let want = data(seed + i as u64 * 7 + start, len);
            let mut w = Unaligned::new(len);
            w.get_mut().copy_from_slice(&want);
            dev.write(start, w.get()).unwrap();
            let mut aligned = AlignedBuf::zeroed(len, 4096).unwrap();
            dev.read(start, &mut aligned).unwrap();
            assert!(
                aligned[..] == want[..],
                "aligned read-back of {len} at {start}"
            );
            let mut r = Unaligned::new(len);
            dev.read(start, r.get_mut()).unwrap();
            assert!(r.get() == &want[..], "unaligned read of {len} at {start}");
        }
    }
    // Overwrite 516 KiB in the middle of 3 MiB: the bytes on both sides of
    // each seam are the right ones.
    let base = data(seed ^ 0xAB, 3 * 1024 * KIB);
    let mut w = Unaligned::new(base.len());
    w.get_mut().copy_from_slice(&base);
    dev.write(0, w.get()).unwrap();
    let mid = data(seed ^ 0xCD, 516 * KIB);
    let mut w2 = Unaligned::new(mid.len());
    w2.get_mut().copy_from_slice(&mid);
    let at = 700 * KIB;
    dev.write(blocks(at), w2.get()).unwrap();
    let mut want = base.clone();
    want[at..at + mid.len()].copy_from_slice(&mid);
    let mut r = Unaligned::new(want.len());
    dev.read(0, r.get_mut()).unwrap();
    assert!(r.get() == &want[..], "overwrite seams");
}

fn open_file_direct(img: &std::path::Path) -> Option<FileDevice> {
    let opts = FileOptions {
        direct: true,
        ..Default::default()
    };
    match FileDevice::open(img, &opts) {
        Ok(d) => Some(d),
        Err(e @ BlockError::Unsupported { .. }) => {
            println!("SKIPPED: O_DIRECT refused by the filesystem of {img:?}: {e}");
            None
        }
        Err(e) => panic!("open O_DIRECT: {e}"),
    }
}

#[test]
fn file_direct_unaligned_large_transfers_all_engines() {
    for engine in [IoEngine::Uring, IoEngine::Threads, IoEngine::Sequential] {
        let dir = disk_tempdir();
        let img = make_image(dir.path(), "img", 8 << 20);
        let Some(dev) = open_file_direct(&img) else {
            return;
        };
        dev.set_io_engine(engine);
        exercise(&dev, 11);
        // The file itself (read without O_DIRECT) holds what was written.
        dev.flush().unwrap();
        let mut through = AlignedBuf::zeroed(3 * 1024 * KIB, 4096).unwrap();
        dev.read(0, &mut through).unwrap();
        let bytes = std::fs::read(&img).unwrap();
        assert!(bytes[..through.len()] == through[..], "{engine:?}");
    }
}

#[test]
fn raw_loop_direct_unaligned_large_transfers() {
    let _g = loop_lock();
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 8 << 20);
    let Some(lo) = attach_or_skip(&img, Some(4096)) else {
        return;
    };
    let dev = RawDevice::open(&lo.dev, &RawOptions::default()).unwrap();
    assert_eq!(dev.geometry().block_size, 4096);
    exercise(&dev, 23);
    dev.set_io_engine(IoEngine::Sequential);
    exercise(&dev, 29);
}

#[test]
fn raw_loop_512_direct_unaligned_large_transfers() {
    // 512-byte sectors: the device takes 512-byte aligned offsets, the
    // pieces still start on 256 KiB boundaries of the transfer.
    let _g = loop_lock();
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 8 << 20);
    let Some(lo) = attach_or_skip(&img, None) else {
        return;
    };
    let dev = RawDevice::open(&lo.dev, &RawOptions::default()).unwrap();
    assert_eq!(dev.geometry().block_size, 512);
    exercise(&dev, 31);
}

#[test]
fn a_read_across_a_shrunk_end_fails() {
    // The image shrinks under the open device: a 1 MiB read that starts
    // before the new end gets part of its bytes and then end-of-file. The
    // call must fail (not return with part of the buffer left as it was),
    // whichever engine is set.
    for engine in [IoEngine::Uring, IoEngine::Sequential] {
        let dir = disk_tempdir();
        let img = make_image(dir.path(), "img", 4 << 20);
        let Some(dev) = open_file_direct(&img) else {
            return;
        };
        dev.set_io_engine(engine);
        let want = data(5, 2 << 20);
        let mut w = Unaligned::new(want.len());
        w.get_mut().copy_from_slice(&want);
        dev.write(0, w.get()).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.set_len(1536 * KIB as u64).unwrap();
        let mut r = Unaligned::new(1 << 20);
        let res = dev.read(256, r.get_mut());
        match res {
            Err(BlockError::Io { .. }) => {}
            other => panic!("{engine:?}: read across the end of the file gave {other:?}"),
        }
        // A read wholly before the end still works, with the right bytes.
        let mut r = Unaligned::new(1 << 20);
        dev.read(64, r.get_mut()).unwrap();
        assert!(
            r.get() == &want[256 * KIB..256 * KIB + (1 << 20)],
            "{engine:?}"
        );
    }
}
