//! Structure-aware mutation campaign (issue 8): take a populated image,
//! change one field of one on-disk structure to a hostile value, recompute
//! every checksum on the way up (node CRC in the root slot, the slot's and
//! the superblock's BLAKE2b) so the damage reaches the parsers, then run
//! open, read every file, check, repair, check, repair. Each step runs in a
//! thread with a deadline. Asserted for every mutation:
//! * no panic and no hang;
//! * check never writes;
//! * no wrong bytes without an error: a file that reads back gives its
//!   original bytes (or zeros past its original end, when its size grew);
//! * repair is idempotent: a second repair changes nothing;
//! * after repair the check is clean, or repair said why it could not.
//! The counts per structure are printed (see docs/CRASH-TESTING.md).
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::{BlockDevice, Geometry, WriteReq};
use notafs_core::check::{check, CheckOptions};
use notafs_core::raw::{blake, crc};
use notafs_core::repair::repair;
use notafs_core::{FormatOptions, Fs, OpenOptions};

const BS: usize = 4096;
const BLOCKS: u64 = 1024;
const SLOTS: u64 = 8;

/// Counts writes (check must not write; a second repair must not either).
struct Counting {
    inner: MemoryDevice,
    writes: AtomicU64,
}

impl BlockDevice for Counting {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn read(&self, b: u64, buf: &mut [u8]) -> notafs_blockdev::Result<()> {
        self.inner.read(b, buf)
    }
    fn write(&self, b: u64, d: &[u8]) -> notafs_blockdev::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write(b, d)
    }
    fn write_batch(&self, w: &[WriteReq<'_>]) -> notafs_blockdev::Result<()> {
        self.writes.fetch_add(w.len() as u64, Ordering::SeqCst);
        self.inner.write_batch(w)
    }
    fn write_zeroes(&self, b: u64, c: u64) -> notafs_blockdev::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write_zeroes(b, c)
    }
    fn discard(&self, b: u64, c: u64) -> notafs_blockdev::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.discard(b, c)
    }
    fn flush(&self) -> notafs_blockdev::Result<()> {
        self.inner.flush()
    }
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A populated image (barrier commits, so every slot is log-free) and the
/// content of every file.
fn base() -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let dev = Arc::new(MemoryDevice::new(BS as u32, BLOCKS).unwrap());
    let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
    fs.set_commit_log(false);
    fs.create_dir("d").unwrap();
    let mut files = BTreeMap::new();
    for i in 0..6u32 {
        let name = if i % 2 == 0 {
            format!("d/f{i}")
        } else {
            format!("f{i}")
        };
        let data: Vec<u8> = (0..(BS * (i as usize + 1) + 77))
            .map(|k| (k as u32).wrapping_mul(2654435761).wrapping_add(i * 7) as u8)
            .collect();
        fs.create(&name).unwrap().write_at(0, &data).unwrap();
        fs.commit().unwrap();
        files.insert(name, data);
    }
    drop(fs);
    (dev.to_vec(), files)
}

fn block(img: &[u8], b: u64) -> &[u8] {
    &img[b as usize * BS..(b as usize + 1) * BS]
}

fn block_mut(img: &mut [u8], b: u64) -> &mut [u8] {
    &mut img[b as usize * BS..(b as usize + 1) * BS]
}

fn reseal_slot(img: &mut [u8], slot: u64) {
    let s = block_mut(img, slot);
    let h = blake(&s[..224]);
    s[224..256].copy_from_slice(&h);
}

fn reseal_superblock(img: &mut [u8], b: u64) {
    let s = block_mut(img, b);
    let h = blake(&s[..224]);
    s[224..256].copy_from_slice(&h);
}

fn newest_slot(img: &[u8]) -> u64 {
    (1..=SLOTS).max_by_key(|&b| le64(block(img, b), 8)).unwrap()
}

/// Hostile values for a field of `len` bytes holding `cur`.
fn hostile(cur: u64, len: usize) -> Vec<u64> {
    let max = if len >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * len)) - 1
    };
    let mut v = vec![
        0,
        1,
        max,
        max - 1,
        cur.wrapping_add(1) & max,
        cur.wrapping_sub(1) & max,
    ];
    v.extend(
        [2, 8, 9, BLOCKS - 1, BLOCKS, 1 << 40]
            .iter()
            .map(|x| x & max),
    );
    v.sort_unstable();
    v.dedup();
    v.retain(|x| *x != cur);
    v
}

fn put(b: &mut [u8], o: usize, len: usize, v: u64) {
    b[o..o + len].copy_from_slice(&v.to_le_bytes()[..len]);
}

fn get(b: &[u8], o: usize, len: usize) -> u64 {
    let mut x = [0u8; 8];
    x[..len].copy_from_slice(&b[o..o + len]);
    u64::from_le_bytes(x)
}

#[derive(Default, Debug)]
struct Counts {
    cases: u64,
    opened: u64,
    refused: u64,
    check_flagged: u64,
    repaired: u64,
    unrepairable: u64,
}

/// Run the pipeline on one mutated image; Err describes a violation.
fn run_case(img: Vec<u8>, files: &BTreeMap<String, Vec<u8>>, c: &mut Counts) -> Result<(), String> {
    if std::env::var("NOTAFS_MUT_TRACE").is_ok() {
        eprintln!("case {}", c.cases);
    }
    let (tx, rx) = mpsc::channel();
    let files = files.clone();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(move || pipeline(img, &files));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Err(_) => Err("hang: no result within 20 s".into()),
        Ok(Err(_)) => Err("panic".into()),
        Ok(Ok(r)) => {
            let (opened, flagged, repaired, unrepairable) = r?;
            c.cases += 1;
            c.opened += opened as u64;
            c.refused += !opened as u64;
            c.check_flagged += flagged as u64;
            c.repaired += repaired as u64;
            c.unrepairable += unrepairable as u64;
            Ok(())
        }
    }
}

fn pipeline(
    img: Vec<u8>,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<(bool, bool, bool, bool), String> {
    let dev = Arc::new(Counting {
        inner: MemoryDevice::from_vec(BS as u32, img),
        writes: AtomicU64::new(0),
    });
    let ro = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    let opened = match Fs::open(dev.clone(), &ro) {
        Err(_) => false,
        Ok(fs) => {
            let snap = fs.snapshot();
            for (name, want) in files {
                // Read at most the original length plus a little: a damaged
                // size must not make the test allocate it.
                let got = snap.open(name).and_then(|f| {
                    let mut v = vec![0u8; (f.len() as usize).min(want.len() + 4096)];
                    let n = f.read_at(0, &mut v)?;
                    v.truncate(n);
                    Ok(v)
                });
                if let Ok(got) = got {
                    let common = got.len().min(want.len());
                    if got[..common] != want[..common] || got[common..].iter().any(|&b| b != 0) {
                        return Err(format!("{name}: wrong bytes returned without an error"));
                    }
                }
            }
            true
        }
    };
    let before = dev.writes.load(Ordering::SeqCst);
    let r = check(
        dev.clone(),
        &CheckOptions {
            verify_data: true,
            ..Default::default()
        },
    );
    if dev.writes.load(Ordering::SeqCst) != before {
        return Err("check wrote to the device".into());
    }
    let flagged = match &r {
        Ok(rep) => !rep.is_clean(),
        Err(_) => true,
    };
    let opts = CheckOptions {
        verify_data: true,
        ..Default::default()
    };
    let mut repaired = false;
    let mut unrepairable = false;
    match repair(dev.clone(), &opts) {
        Ok(_) => {
            let after =
                check(dev.clone(), &opts).map_err(|e| format!("check after repair: {e}"))?;
            if !after.is_clean() {
                return Err(format!("repair left problems: {:?}", after.problems));
            }
            repaired = flagged;
            let w = dev.writes.load(Ordering::SeqCst);
            let again = repair(dev.clone(), &opts).map_err(|e| format!("second repair: {e}"))?;
            if !again.actions.is_empty() || dev.writes.load(Ordering::SeqCst) != w {
                return Err(format!("repair is not idempotent: {:?}", again.actions));
            }
        }
        Err(_) => unrepairable = true,
    }
    Ok((opened, flagged, repaired, unrepairable))
}

fn trace(what: &str) {
    if std::env::var("NOTAFS_MUT_TRACE").is_ok() {
        eprintln!("{what}");
    }
}

#[test]
fn mutation_campaign() {
    let (img, files) = base();
    let ns = newest_slot(&img);
    let mut per: BTreeMap<&'static str, Counts> = BTreeMap::new();
    let mut violations: Vec<String> = Vec::new();

    // Superblock (primary copy): every field of the byte table.
    let sb_fields: [(usize, usize); 13] = [
        (8, 4),
        (12, 4),
        (16, 8),
        (24, 8),
        (32, 8),
        (56, 4),
        (60, 4),
        (64, 8),
        (72, 8),
        (80, 8),
        (88, 4),
        (92, 1),
        (96, 8),
    ];
    for (o, len) in sb_fields {
        let cur = get(block(&img, 0), o, len);
        for v in hostile(cur, len) {
            let mut m = img.clone();
            put(block_mut(&mut m, 0), o, len, v);
            reseal_superblock(&mut m, 0);
            let c = per.entry("superblock").or_default();
            trace(&format!("superblock +{o} = {v:#x}"));
            if let Err(e) = run_case(m, &files, c) {
                violations.push(format!("superblock +{o} = {v:#x}: {e}"));
            }
        }
    }
    // Newest root slot: every field.
    let slot_fields: [(usize, usize); 15] = [
        (8, 8),
        (32, 8),
        (40, 8),
        (48, 4),
        (52, 1),
        (56, 8),
        (64, 4),
        (68, 4),
        (72, 8),
        (80, 8),
        (88, 8),
        (96, 8),
        (104, 8),
        (112, 4),
        (116, 4),
    ];
    for (o, len) in slot_fields {
        let cur = get(block(&img, ns), o, len);
        for v in hostile(cur, len) {
            let mut m = img.clone();
            put(block_mut(&mut m, ns), o, len, v);
            reseal_slot(&mut m, ns);
            let c = per.entry("root slot").or_default();
            trace(&format!("slot +{o} = {v:#x}"));
            if let Err(e) = run_case(m, &files, c) {
                violations.push(format!("slot +{o} = {v:#x}: {e}"));
            }
        }
    }
    // Nodes the newest slot points to directly: the file-table root (one
    // leaf here) and the head of the free-space list. Every 4-byte word of
    // the header and the first entries, CRC recomputed into the slot.
    for (what, ptr_off, crc_off) in [
        ("file-table node", 40usize, 48usize),
        ("free-list node", 56, 64),
    ] {
        let nb = le64(block(&img, ns), ptr_off);
        if nb == 0 {
            continue;
        }
        for o in (0..320).step_by(4) {
            let cur = get(block(&img, nb), o, 4);
            for v in hostile(cur, 4).into_iter().take(6) {
                let mut m = img.clone();
                put(block_mut(&mut m, nb), o, 4, v);
                let c32 = crc(block(&m, nb));
                block_mut(&mut m, ns)[crc_off..crc_off + 4].copy_from_slice(&c32.to_le_bytes());
                reseal_slot(&mut m, ns);
                let c = per.entry(what).or_default();
                trace(&format!("{what} +{o} = {v:#x}"));
                if let Err(e) = run_case(m, &files, c) {
                    violations.push(format!("{what} +{o} = {v:#x}: {e}"));
                }
            }
        }
    }
    println!("| structure | mutations | opened | refused | flagged by check | repaired | repair refused |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (k, c) in &per {
        println!(
            "| {k} | {} | {} | {} | {} | {} | {} |",
            c.cases, c.opened, c.refused, c.check_flagged, c.repaired, c.unrepairable
        );
    }
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    assert!(per.values().map(|c| c.cases).sum::<u64>() > 500);
}
