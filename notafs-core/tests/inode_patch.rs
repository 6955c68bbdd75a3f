//! Inode patches (issue 10, FORMAT.md "Inode patches"): a commit that only
//! wrote file data leaves the file table as it is and carries the changed
//! inodes in its root slot. Every reader of the generation must see the
//! patched inodes; namespace changes and overflowing patches write them
//! into the table; hostile patches are refused.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::{BlockDevice, Geometry, WriteReq};
use notafs_core::check::{check, CheckOptions};
use notafs_core::raw::blake;
use notafs_core::{FormatOptions, Fs, OpenOptions, RootSlot};

/// Compare without printing megabytes.
fn same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes vs {} expected, first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

struct Counting {
    inner: MemoryDevice,
    written: AtomicU64,
}

impl BlockDevice for Counting {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn read(&self, b: u64, buf: &mut [u8]) -> notafs_blockdev::Result<()> {
        self.inner.read(b, buf)
    }
    fn write(&self, b: u64, d: &[u8]) -> notafs_blockdev::Result<()> {
        self.written.fetch_add(d.len() as u64, Ordering::SeqCst);
        self.inner.write(b, d)
    }
    fn write_batch(&self, w: &[WriteReq<'_>]) -> notafs_blockdev::Result<()> {
        for r in w {
            self.written
                .fetch_add(r.data.len() as u64, Ordering::SeqCst);
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

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(0x9E37)) as u8)
        .collect()
}

/// 4 KiB append + commit: the data block, the file's extent leaf and the
/// root slot; the file-table leaf is no longer rewritten (4 blocks before).
#[test]
fn small_append_commit_writes_three_blocks() {
    let dev = Arc::new(Counting {
        inner: MemoryDevice::new(4096, 16384).unwrap(),
        written: AtomicU64::new(0),
    });
    drop(Fs::format(dev.clone(), &FormatOptions::default()).unwrap());
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    for i in 0..20 {
        fs.create(&format!("/other{i}")).unwrap();
    }
    let f = fs.create("/log").unwrap();
    fs.commit().unwrap();
    let n = 300u64;
    let before = dev.written.load(Ordering::SeqCst);
    for i in 0..n {
        f.append(&bytes(i, 4096)).unwrap();
        fs.commit().unwrap();
    }
    let per = (dev.written.load(Ordering::SeqCst) - before) as f64 / 4096.0 / n as f64;
    eprintln!("blocks written per 4 KiB append + commit: {per:.3}");
    assert!(per <= 3.05, "{per:.3} blocks per commit");
    drop(f);
    fs.close().unwrap();
    drop(fs);
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    let got = fs.snapshot().read_to_vec("/log").unwrap();
    assert_eq!(got.len() as u64, n * 4096);
    for i in 0..n {
        assert_eq!(
            &got[(i * 4096) as usize..((i + 1) * 4096) as usize],
            &bytes(i, 4096)[..]
        );
    }
    drop(fs);
    let r = check(dev, &CheckOptions::default()).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
}

/// Data commits (patched) mixed with every kind of namespace change
/// (which writes the patches into the table), more files written than a
/// slot can patch, aborts; after every step the live view, a reopened
/// image, every retained generation and the checker agree with a model.
#[test]
fn patched_generations_match_a_model() {
    for seed in [0x1234_5678u64, 0xDEAD_BEEF, 42, 7777] {
        model_run(seed);
    }
}

fn model_run(seed: u64) {
    let dev = Arc::new(MemoryDevice::new(4096, 16384).unwrap());
    drop(Fs::format(dev.clone(), &FormatOptions::default()).unwrap());
    let mut fs = Fs::open(dev.clone(), &opts()).unwrap();
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // Explicit modification times set since the file was last written.
    let mut mtimes: BTreeMap<String, u64> = BTreeMap::new();
    let mut history: Vec<(u64, BTreeMap<String, Vec<u8>>)> = Vec::new();
    let mut s = seed;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for step in 0..400u64 {
        let r = rnd() % 100;
        let names: Vec<String> = model.keys().cloned().collect();
        if r < 8 || names.is_empty() {
            let n = format!("/f{}", rnd() % 60);
            if !model.contains_key(&n) {
                fs.create(&n).unwrap();
                model.insert(n, Vec::new());
            }
        } else if r < 12 {
            let n = &names[(rnd() % names.len() as u64) as usize];
            fs.remove(n).unwrap();
            model.remove(n);
            mtimes.remove(n);
        } else if r < 15 {
            let a = names[(rnd() % names.len() as u64) as usize].clone();
            let b = format!("/f{}", rnd() % 60);
            if !model.contains_key(&b) {
                fs.rename(&a, &b).unwrap();
                let v = model.remove(&a).unwrap();
                if let Some(t) = mtimes.remove(&a) {
                    mtimes.insert(b.clone(), t);
                }
                model.insert(b, v);
            }
        } else if r < 17 {
            let n = &names[(rnd() % names.len() as u64) as usize];
            fs.set_attrs(n, Some(0o600), None, None).unwrap();
        } else if r < 19 {
            // An explicit mtime (touch -d) of a file whose inode may be
            // patched: what is set must win over the patch.
            let n = &names[(rnd() % names.len() as u64) as usize];
            let t = 1_000_000_000 * (1 + rnd() % 1_000_000);
            fs.set_attrs(n, None, None, Some(t)).unwrap();
            mtimes.insert(n.clone(), t);
        } else if r < 21 {
            // Write to more files than one slot can patch.
            mtimes.clear();
            for n in &names {
                let f = fs.open_file(n).unwrap();
                let d = bytes(rnd(), 100);
                f.append(&d).unwrap();
                model.get_mut(n).unwrap().extend_from_slice(&d);
            }
        } else if r < 23 {
            // Truncate (a data-only change too).
            let n = &names[(rnd() % names.len() as u64) as usize];
            mtimes.remove(n);
            let v = model.get_mut(n).unwrap();
            let len = (rnd() % (v.len() as u64 + 1)) as usize;
            fs.open_file(n).unwrap().set_len(len as u64).unwrap();
            v.truncate(len);
        } else if r < 25 {
            // An aborted write.
            let n = &names[(rnd() % names.len() as u64) as usize];
            fs.open_file(n).unwrap().append(b"never").unwrap();
            fs.abort().unwrap();
            continue;
        } else {
            let n = &names[(rnd() % names.len() as u64) as usize];
            let f = fs.open_file(n).unwrap();
            mtimes.remove(n);
            let v = model.get_mut(n).unwrap();
            let len = 1 + (rnd() % 9000) as usize;
            let d = bytes(rnd(), len);
            let off = if v.is_empty() || rnd() % 3 > 0 {
                v.len()
            } else {
                (rnd() % v.len() as u64) as usize
            };
            f.write_at(off as u64, &d).unwrap();
            if off + len > v.len() {
                v.resize(off + len, 0);
            }
            v[off..off + len].copy_from_slice(&d);
        }
        let g = fs.commit().unwrap();
        history.push((g, model.clone()));
        // The live view.
        let snap = fs.snapshot();
        for (n, v) in &model {
            same(
                &snap.read_to_vec(n).unwrap(),
                v,
                &format!("step {step}: {n} live"),
            );
            assert_eq!(
                snap.stat(n).unwrap().size,
                v.len() as u64,
                "step {step}: {n} size"
            );
        }
        for (n, t) in &mtimes {
            assert_eq!(snap.stat(n).unwrap().mtime_ns, *t, "step {step}: {n} mtime");
        }
        drop(snap);
        if step % 25 == 24 {
            drop(fs);
            fs = Fs::open(dev.clone(), &opts()).unwrap();
            let snap = fs.snapshot();
            let listed: Vec<String> = snap
                .read_dir("/")
                .unwrap()
                .into_iter()
                .map(|e| format!("/{}", e.name))
                .collect();
            assert_eq!(
                listed,
                model.keys().cloned().collect::<Vec<_>>(),
                "step {step}"
            );
            for (n, v) in &model {
                same(
                    &snap.read_to_vec(n).unwrap(),
                    v,
                    &format!("step {step}: {n} reopened"),
                );
            }
            drop(snap);
            for gi in fs.generations() {
                let Some((_, m)) = history.iter().find(|h| h.0 == gi.generation) else {
                    continue;
                };
                let snap = fs.snapshot_at(gi.generation).unwrap();
                for (n, v) in m {
                    assert_eq!(
                        &snap.read_to_vec(n).unwrap(),
                        v,
                        "generation {}",
                        gi.generation
                    );
                }
            }
            let r = check(dev.clone(), &CheckOptions::default()).unwrap();
            assert!(r.is_clean(), "step {step}: {:?}", r.problems);
        }
    }
}

/// Hostile patches (checksums recomputed so the damage reaches the
/// parser): the slot's file table is taken as not verifying, so the open
/// does not follow them, refuses writes until fsck has looked, and the
/// checker says what is wrong. Never a panic.
#[test]
fn hostile_patches_are_refused() {
    let dev = Arc::new(MemoryDevice::new(4096, 4096).unwrap());
    drop(Fs::format(dev.clone(), &FormatOptions::default()).unwrap());
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    fs.create("/a").unwrap();
    fs.create("/gone").unwrap();
    fs.create("/b").unwrap();
    fs.remove("/gone").unwrap();
    fs.commit().unwrap();
    let gone = 3; // inode numbers: /a 2, /gone 3, /b 4
    for i in 0..3 {
        fs.open_file("/a").unwrap().append(&bytes(i, 5000)).unwrap();
        fs.open_file("/b").unwrap().append(&bytes(i, 300)).unwrap();
        fs.commit().unwrap();
    }
    drop(fs);
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
    let idx = (g % sb.ring_slots as u64) as u32;
    let addr = sb.ring_start + idx as u64;
    let mut raw = vec![0u8; 4096];
    dev.read(addr, &mut raw).unwrap();
    let slot = RootSlot::decode(&raw, idx, sb.ring_slots, &sb.uuid).unwrap();
    assert_eq!(slot.patches.entries().len(), 2, "both files are patched");
    // The whole image, restored after each case (a case may commit).
    let mut image = vec![0u8; 4096 * 4096];
    dev.read(0, &mut image).unwrap();
    let p0 = 256 + 12 * slot.log_len as usize + 24 * slot.delta.entries().len();
    let end = p0 + 40 * 2;
    let put = |b: &mut [u8], o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_le_bytes());
    let cases: Vec<(&str, Box<dyn Fn(&mut [u8])>)> = vec![
        ("inode 1", Box::new(move |b: &mut [u8]| put(b, p0, 1))),
        (
            "inode past next",
            Box::new(move |b: &mut [u8]| put(b, p0 + 40, u64::MAX)),
        ),
        (
            "unsorted",
            Box::new(move |b: &mut [u8]| {
                let (x, y) = b.split_at_mut(p0 + 40);
                x[p0..p0 + 40].swap_with_slice(&mut y[..40]);
            }),
        ),
        (
            "root outside",
            Box::new(move |b: &mut [u8]| put(b, p0 + 8, 1 << 40)),
        ),
        (
            "root without height",
            Box::new(move |b: &mut [u8]| b[p0 + 20] = 0),
        ),
        (
            "huge height",
            Box::new(move |b: &mut [u8]| b[p0 + 20] = 200),
        ),
        (
            "huge size",
            Box::new(move |b: &mut [u8]| put(b, p0 + 24, u64::MAX)),
        ),
        (
            "inode of no file",
            Box::new(move |b: &mut [u8]| put(b, p0 + 40, gone)),
        ),
        ("stale root", Box::new(move |b: &mut [u8]| b[p0 + 16] ^= 1)),
    ];
    for (what, damage) in cases {
        let mut b = raw.clone();
        damage(&mut b);
        let tail = blake(&b[256..end]);
        b[120..152].copy_from_slice(&tail);
        let sum = blake(&b[..224]);
        b[224..256].copy_from_slice(&sum);
        dev.write(addr, &b).unwrap();
        let r = check(dev.clone(), &CheckOptions::default()).unwrap();
        assert!(!r.is_clean(), "{what}: the check found nothing");
        eprintln!("{what}: {:?}", r.problems.first().map(|p| &p.message));
        if let Ok(fs) = Fs::open(dev.clone(), &opts()) {
            let _ = fs.snapshot().read_to_vec("/a");
            // A patch of an inode the table does not hold changes nothing
            // anyone reads (the check reports it); every other case must
            // not accept a write over it.
            let w = fs
                .open_file("/a")
                .and_then(|f| f.append(b"x"))
                .and_then(|_| fs.commit());
            if what != "inode of no file" {
                assert!(w.is_err(), "{what}: a write was committed over a bad patch");
            }
        }
        dev.write(0, &image).unwrap();
    }
    let r = check(dev, &CheckOptions::default()).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
}

/// Writing the patches into the file table (more files written than a
/// slot can patch; a namespace change after data-only commits, in a table
/// of several levels) frees the table nodes it copies in that same commit:
/// nothing leaks, checked right after the commit and after a close.
#[test]
fn writing_patches_into_the_table_leaks_nothing() {
    let dev = Arc::new(MemoryDevice::new(4096, 16384).unwrap());
    drop(Fs::format(dev.clone(), &FormatOptions::default()).unwrap());
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    // Enough entries for a file table of two levels.
    for i in 0..400 {
        fs.create(&format!("/file-with-a-longish-name-{i:04}"))
            .unwrap();
    }
    fs.commit().unwrap();
    let clean = |when: &str| {
        let r = check(dev.clone(), &CheckOptions::default()).unwrap();
        assert!(r.is_clean(), "{when}: {:?}", r.problems);
    };
    // One file per data-only commit: the 33rd overflows the slot.
    for i in 0..40 {
        let f = fs
            .open_file(&format!("/file-with-a-longish-name-{:04}", i * 10))
            .unwrap();
        f.append(&bytes(i, 3000)).unwrap();
        fs.commit().unwrap();
        clean(&format!("after data commit {i}"));
    }
    // Data-only commits on files in different leaves, then a namespace
    // change alone (no file written in that transaction).
    for i in 0..5 {
        let f = fs
            .open_file(&format!("/file-with-a-longish-name-{:04}", 399 - i * 70))
            .unwrap();
        f.append(&bytes(100 + i, 500)).unwrap();
        fs.commit().unwrap();
    }
    fs.create_dir("/d").unwrap();
    fs.commit().unwrap();
    clean("after the namespace commit");
    fs.close().unwrap();
    drop(fs);
    clean("after close");
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    let got = fs
        .snapshot()
        .read_to_vec("/file-with-a-longish-name-0399")
        .unwrap();
    same(&got, &bytes(100, 500), "file 399");
}
