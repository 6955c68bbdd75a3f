//! Large appends land on the device's preferred I/O boundaries (1 MiB):
//! 1 MiB direct writes at +40 KiB from a boundary were 20-31 % slower than
//! aligned ones on the loop device of docs/BENCHMARKS.md, and every commit
//! puts its tree nodes right after the data written so far, where the next
//! append would otherwise continue.
use std::sync::{Arc, Mutex};

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::{BlockDevice, Geometry, Result as BResult, WriteReq};
use notafs_core::{FormatOptions, Fs, OpenOptions};

/// Records the (block, blocks) of every write.
struct Recording {
    inner: MemoryDevice,
    writes: Mutex<Vec<(u64, u64)>>,
}

impl Recording {
    fn note(&self, block: u64, len: usize) {
        let bs = self.inner.geometry().block_size as usize;
        self.writes
            .lock()
            .unwrap()
            .push((block, (len / bs) as u64));
    }
}

impl BlockDevice for Recording {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn read(&self, b: u64, buf: &mut [u8]) -> BResult<()> {
        self.inner.read(b, buf)
    }
    fn write(&self, b: u64, d: &[u8]) -> BResult<()> {
        self.note(b, d.len());
        self.inner.write(b, d)
    }
    fn write_batch(&self, w: &[WriteReq<'_>]) -> BResult<()> {
        for r in w {
            self.note(r.block, r.data.len());
        }
        self.inner.write_batch(w)
    }
    fn write_zeroes(&self, b: u64, c: u64) -> BResult<()> {
        self.inner.write_zeroes(b, c)
    }
    fn discard(&self, b: u64, c: u64) -> BResult<()> {
        self.inner.discard(b, c)
    }
    fn flush(&self) -> BResult<()> {
        self.inner.flush()
    }
}

#[test]
fn large_appends_start_on_preferred_io_boundaries() {
    let dev = Arc::new(Recording {
        inner: MemoryDevice::new(4096, 300 * 256).unwrap(),
        writes: Mutex::new(Vec::new()),
    });
    let unit = (dev.geometry().preferred_io / dev.geometry().block_size) as u64;
    assert_eq!(unit, 256);
    Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
    let fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
    dev.writes.lock().unwrap().clear();
    let f = fs.create("log").unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i >> 3) as u8).collect();
    for i in 0..100 {
        f.append(&chunk).unwrap();
        if (i + 1) % 16 == 0 {
            fs.commit().unwrap();
        }
    }
    fs.commit().unwrap();
    let data: Vec<(u64, u64)> = dev
        .writes
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|w| w.1 == unit)
        .collect();
    assert_eq!(data.len(), 100, "one 1 MiB write per append");
    let off: Vec<(u64, u64)> = data.iter().copied().filter(|w| w.0 % unit != 0).collect();
    assert!(off.is_empty(), "1 MiB writes off a 1 MiB boundary: {off:?}");
    // Still one file of the right content, checked clean.
    drop(f);
    drop(fs);
    let fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
    let v = fs.snapshot().read_to_vec("log").unwrap();
    assert_eq!(v.len(), 100 << 20);
    assert!(v.chunks(1 << 20).all(|c| c == &chunk[..]));
    drop(fs);
    let r = notafs_core::check::check(dev, &Default::default()).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
}
