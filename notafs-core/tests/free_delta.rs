//! The free-space delta (issue 10, FORMAT.md "Free-space delta"): a small
//! commit writes the changes to free space into its root slot instead of a
//! whole new free-space list, so what it writes does not grow with how
//! fragmented the free space is; and a hostile delta is refused with a clear
//! error.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::{BlockDevice, Geometry, WriteReq};
use notafs_core::check::{check, CheckOptions};
use notafs_core::raw::{blake, read_slot_list, NodeCache, NodeIo};
use notafs_core::{FormatOptions, Fs, OpenOptions, RootSlot};

/// A memory device that counts the bytes written to it, and the
/// free-space list nodes among them (node magic, kind 3).
struct Counting {
    inner: MemoryDevice,
    written: AtomicU64,
    list_nodes: AtomicU64,
}

impl Counting {
    fn count(&self, d: &[u8]) {
        self.written.fetch_add(d.len() as u64, Ordering::SeqCst);
        for b in d.chunks(4096) {
            if b.len() > 4 && &b[0..4] == b"NTND" && b[4] == 3 {
                self.list_nodes.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

impl BlockDevice for Counting {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn read(&self, b: u64, buf: &mut [u8]) -> notafs_blockdev::Result<()> {
        self.inner.read(b, buf)
    }
    fn write(&self, b: u64, d: &[u8]) -> notafs_blockdev::Result<()> {
        self.count(d);
        self.inner.write(b, d)
    }
    fn write_batch(&self, w: &[WriteReq<'_>]) -> notafs_blockdev::Result<()> {
        for r in w {
            self.count(r.data);
        }
        self.inner.write_batch(w)
    }
    fn write_zeroes(&self, b: u64, c: u64) -> notafs_blockdev::Result<()> {
        self.inner.write_zeroes(b, c)
    }
    fn discard(&self, b: u64, c: u64) -> notafs_blockdev::Result<()> {
        self.inner.discard(b, c)
    }
    fn flush(&self) -> notafs_blockdev::Result<()> {
        self.inner.flush()
    }
}

fn opts() -> OpenOptions {
    OpenOptions {
        write_behind: None,
        ..OpenOptions::default()
    }
}

fn block(seed: u64) -> Vec<u8> {
    (0..4096u64)
        .map(|i| (i.wrapping_mul(2654435761) ^ seed) as u8)
        .collect()
}

/// Blocks written per 4 KiB append + commit, and free-space list nodes
/// among them, over `n` commits, on a filesystem whose free space is
/// fragmented into about `holes` extents.
fn blocks_per_commit(holes: u64, n: u64) -> (f64, f64) {
    let dev = Arc::new(Counting {
        inner: MemoryDevice::new(4096, 65536).unwrap(),
        written: AtomicU64::new(0),
        list_nodes: AtomicU64::new(0),
    });
    let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
    drop(fs);
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    // Fragment the free space: a file of 2 x `holes` blocks with every
    // other block punched out (each hole is a free extent of its own).
    let big = fs.create("/big").unwrap();
    for i in 0..holes * 2 {
        big.write_at(i * 4096, &block(i)).unwrap();
    }
    fs.commit().unwrap();
    for i in (0..holes * 2).step_by(2) {
        big.punch_blocks(i, 1).unwrap();
    }
    drop(big);
    fs.commit().unwrap();
    let f = fs.create("/log").unwrap();
    fs.commit().unwrap();
    // Let the removed blocks leave the pending state (N commits).
    for i in 0..40 {
        f.append(&block(1000 + i)).unwrap();
        fs.commit().unwrap();
    }
    let before = dev.written.load(Ordering::SeqCst);
    let lists_before = dev.list_nodes.load(Ordering::SeqCst);
    for i in 0..n {
        f.append(&block(i)).unwrap();
        fs.commit().unwrap();
    }
    let per = (dev.written.load(Ordering::SeqCst) - before) as f64 / 4096.0 / n as f64;
    let lists = (dev.list_nodes.load(Ordering::SeqCst) - lists_before) as f64 / n as f64;
    drop(f);
    fs.close().unwrap();
    drop(fs);
    // Everything is still there and consistent after reopening.
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    let data = fs.snapshot().read_to_vec("/log").unwrap();
    assert_eq!(data.len() as u64, (40 + n) * 4096);
    assert_eq!(&data[40 * 4096..41 * 4096], &block(0)[..]);
    drop(fs);
    let r = check(dev, &CheckOptions::default()).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    (per, lists)
}

/// Before the delta every small commit wrote a whole new free-space list:
/// 5 blocks per 4 KiB append on a fresh filesystem (one list node), one
/// more list node per 168 free extents on a fragmented one (9 with 1500
/// holes). With the delta: the data block, the extent leaf, the file-table
/// leaf and the root slot, plus a new list only when the delta outgrows
/// the slot, whatever the fragmentation.
#[test]
fn small_commits_do_not_rewrite_the_free_list() {
    let (fresh, fresh_lists) = blocks_per_commit(0, 200);
    let (frag, frag_lists) = blocks_per_commit(1500, 200);
    eprintln!(
        "per 4 KiB append + commit: fresh {fresh:.2} blocks ({fresh_lists:.2} list nodes), \
         fragmented {frag:.2} blocks ({frag_lists:.2} list nodes)"
    );
    assert!(fresh <= 4.1, "fresh: {fresh:.2} blocks per commit");
    assert!(
        fresh_lists < 0.1,
        "fresh: {fresh_lists:.2} list nodes per commit"
    );
    assert!(
        frag_lists < 0.3,
        "fragmented: {frag_lists:.2} list nodes per commit"
    );
}

/// Generations whose slots carry a delta are readable and check clean
/// after a reopen, through the whole ring (older ones too), and a delta
/// that grows past the slot turns into a new list without losing anything.
#[test]
fn every_retained_generation_reads_back() {
    let dev = Arc::new(MemoryDevice::new(4096, 8192).unwrap());
    drop(Fs::format(dev.clone(), &FormatOptions::default()).unwrap());
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    let mut expect: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut content = Vec::new();
    for i in 0..300u64 {
        // Scattered frees: rewrite a random earlier block of one file and
        // append to another, so the delta keeps growing.
        let name = format!("/d{}", i % 7);
        let f = fs.open_file_with(&name, true, false).unwrap();
        let len = f.len().unwrap();
        if len >= 4096 * 3 {
            f.write_at((i * 7919 % (len / 4096)) * 4096, &block(i))
                .unwrap();
        }
        f.append(&block(i + 1)).unwrap();
        drop(f);
        let g = fs.commit().unwrap();
        if name == "/d0" {
            content = fs.snapshot().read_to_vec("/d0").unwrap();
        }
        expect.push((g, content.clone()));
    }
    drop(fs);
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    let gens: Vec<u64> = fs.generations().iter().map(|g| g.generation).collect();
    assert!(gens.len() > 4, "{gens:?}");
    for g in gens {
        let Some((_, want)) = expect.iter().find(|e| e.0 == g) else {
            continue;
        };
        let got = fs.snapshot_at(g).unwrap().read_to_vec("/d0").unwrap();
        assert_eq!(&got, want, "generation {g}");
    }
    drop(fs);
    let r = check(dev, &CheckOptions::default()).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
}

/// A root slot whose delta is hostile (checksums recomputed so the damage
/// reaches the parser): each case is refused with an error that names the
/// delta, never a panic, and the open falls back or reports it.
#[test]
fn hostile_deltas_are_refused() {
    let dev = Arc::new(MemoryDevice::new(4096, 4096).unwrap());
    drop(Fs::format(dev.clone(), &FormatOptions::default()).unwrap());
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    let f = fs.create("/a").unwrap();
    for i in 0..4 {
        f.append(&block(i)).unwrap();
        fs.commit().unwrap();
    }
    drop(f);
    drop(fs);
    // The newest slot (closing sealed the last commit with a slot of its
    // own, carrying the same delta).
    let g = Fs::open(
        dev.clone(),
        &OpenOptions {
            read_only: true,
            ..opts()
        },
    )
    .unwrap()
    .generation();
    let (sb, _) = Fs::read_superblock(dev.as_ref()).unwrap();
    let addr = sb.ring_start + g % sb.ring_slots as u64;
    let mut raw = vec![0u8; 4096];
    dev.read(addr, &mut raw).unwrap();
    let slot = RootSlot::decode(
        &raw,
        (g % sb.ring_slots as u64) as u32,
        sb.ring_slots,
        &sb.uuid,
    )
    .unwrap();
    let d = slot.delta.entries().len();
    assert!(d > 0, "the newest small commit carries a delta");
    let l = slot.log_len as usize;
    let d0 = 256 + 12 * l;
    let io = NodeIo {
        dev: dev.clone(),
        cache: Arc::new(NodeCache::new(64)),
        data_cache: Arc::new(NodeCache::new(64)),
        decoded: Arc::new(notafs_core::raw::DecodedCache::new(8)),
        layout: notafs_core::raw::Layout::from_superblock(&sb),
    };
    let data_end = io.layout.data_end;
    // (entry field offset, value, what the error must say)
    let cases: Vec<(&str, Box<dyn Fn(&mut [u8])>, &str)> = vec![
        (
            "past the end",
            Box::new(move |b: &mut [u8]| b[d0..d0 + 8].copy_from_slice(&data_end.to_le_bytes())),
            "outside the data area",
        ),
        (
            "zero length",
            Box::new(move |b: &mut [u8]| b[d0 + 8..d0 + 16].copy_from_slice(&0u64.to_le_bytes())),
            "outside the data area",
        ),
        (
            "huge length",
            Box::new(move |b: &mut [u8]| {
                b[d0 + 8..d0 + 16].copy_from_slice(&u64::MAX.to_le_bytes())
            }),
            "outside the data area",
        ),
        (
            "future tag",
            Box::new(move |b: &mut [u8]| {
                b[d0 + 16..d0 + 24].copy_from_slice(&(g + 5).to_le_bytes())
            }),
            "future generation",
        ),
        (
            "overlapping ranges",
            Box::new(move |b: &mut [u8]| {
                // Duplicate the first entry into a second position.
                let (a, rest) = b.split_at_mut(d0 + 24);
                rest[..24].copy_from_slice(&a[d0..d0 + 24]);
            }),
            "out of order or overlapping",
        ),
    ];
    for (what, damage, says) in cases {
        if what == "overlapping ranges" && d < 2 {
            continue;
        }
        let mut b = raw.clone();
        damage(&mut b);
        // Recompute the tail digest and the slot checksum.
        let end = 256 + 12 * l + 24 * d + 40 * slot.patches.entries().len();
        let tail = blake(&b[256..end]);
        b[120..152].copy_from_slice(&tail);
        let sum = blake(&b[..224]);
        b[224..256].copy_from_slice(&sum);
        let s = RootSlot::decode(
            &b,
            (g % sb.ring_slots as u64) as u32,
            sb.ring_slots,
            &sb.uuid,
        )
        .unwrap();
        let e = read_slot_list(&io, &s).err().expect(what).to_string();
        assert!(e.contains(says), "{what}: {e}");
        // The same slot on the device: open does not panic, and a write
        // is never accepted over a free space it could not read.
        dev.write(addr, &b).unwrap();
        if let Ok(fs) = Fs::open(dev.clone(), &opts()) {
            assert!(fs.create("/x").and_then(|_| fs.commit()).is_err(), "{what}");
        }
        dev.write(addr, &raw).unwrap();
    }
    // A delta length past what the slot can hold.
    let mut b = raw.clone();
    b[116..120].copy_from_slice(&1000u32.to_le_bytes());
    let sum = blake(&b[..224]);
    b[224..256].copy_from_slice(&sum);
    let e = RootSlot::decode(
        &b,
        (g % sb.ring_slots as u64) as u32,
        sb.ring_slots,
        &sb.uuid,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("fit the slot"), "{e}");
}
