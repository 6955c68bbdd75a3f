//! Random mutation: thousands of damaged variants of a good image (bytes
//! flipped, blocks replaced by garbage or by other blocks; often with the
//! checksum chain re-fixed so the damage reaches the decoders). For each:
//! `check` and a mount that reads every file must end, without a panic, in a
//! time bound; for a subset the real `fsck.notafs -n` must too, exit with a
//! code other than 101, and leave the image byte-identical.
//!
//! `NOTAFS_MUTATIONS=N` changes the number of images (default 2000).
mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use notafs_core::check::{check, CheckOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Blocks worth damaging: superblocks, the ring, every tree node.
fn interesting(img: &Img) -> Vec<u64> {
    let mut v: Vec<u64> = (0..=SLOTS as u64).collect();
    v.push(img.blocks() - 1);
    for b in SLOTS as u64 + 1..img.blocks() - 1 {
        if &img.block(b)[0..4] == NODE_MAGIC {
            v.push(b);
        }
    }
    v
}

fn mutate(img: &mut Img, rng: &mut StdRng, targets: &[u64]) -> String {
    let mut what = Vec::new();
    for _ in 0..rng.gen_range(1..=3) {
        let b = if rng.gen_bool(0.9) {
            targets[rng.gen_range(0..targets.len())]
        } else {
            rng.gen_range(0..img.blocks())
        };
        let refix = rng.gen_bool(0.5);
        let kind = rng.gen_range(0..10);
        let f = |blk: &mut [u8], rng: &mut StdRng, other: &[u8]| match kind {
            0..=5 => {
                for _ in 0..rng.gen_range(1..=4) {
                    let o = if rng.gen_bool(0.7) {
                        rng.gen_range(0..256)
                    } else {
                        rng.gen_range(0..blk.len())
                    };
                    if rng.gen_bool(0.5) {
                        blk[o] ^= 1 << rng.gen_range(0..8);
                    } else {
                        blk[o] = rng.gen();
                    }
                }
            }
            6 => rng.fill(blk),
            7 => blk.copy_from_slice(other),
            8 => {
                // A plausible big number in a field.
                let o = rng.gen_range(0..248) & !7;
                let v: u64 = match rng.gen_range(0..4) {
                    0 => u64::MAX,
                    1 => rng.gen_range(0..2048),
                    2 => 1 << rng.gen_range(0..64),
                    _ => rng.gen(),
                };
                blk[o..o + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {
                let o = rng.gen_range(0..250);
                let v: u16 = rng.gen();
                blk[o..o + 2].copy_from_slice(&v.to_le_bytes());
            }
        };
        let other_b = targets[rng.gen_range(0..targets.len())];
        let other = img.block(other_b).to_vec();
        let is_node = &img.block(b)[0..4] == NODE_MAGIC;
        if refix && is_node && b > SLOTS as u64 && b < img.blocks() - 1 {
            let mut r2 = StdRng::seed_from_u64(rng.gen());
            img.node_edit(b, |blk| f(blk, &mut r2, &other));
        } else if refix && (1..=SLOTS as u64).contains(&b) {
            let mut r2 = StdRng::seed_from_u64(rng.gen());
            img.slot_edit(b as u32 - 1, |blk| f(blk, &mut r2, &other));
        } else if refix && (b == 0 || b == img.blocks() - 1) {
            f(img.block_mut(b), rng, &other);
            img.sb_rehash(b);
        } else {
            f(img.block_mut(b), rng, &other);
        }
        what.push(format!("block {b} kind {kind} refix {refix}"));
    }
    what.join(", ")
}

/// Run `f` on a thread; None when it does not end within `limit`.
fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<std::thread::Result<T>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn random_mutations() {
    let n: usize = std::env::var("NOTAFS_MUTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("NOTAFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED);
    // Half the images start from a newest slot carrying inode patches.
    let goods = [good_image(), good_image_patched()];
    let targets_of = [
        interesting(&Img::new(goods[0].clone())),
        interesting(&Img::new(goods[1].clone())),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut failures = Vec::new();
    let mut codes = std::collections::BTreeMap::<i32, usize>::new();
    let mut mounts = [0usize; 3];
    let limit = Duration::from_secs(10);
    for k in 0..n {
        let good = &goods[k % 2];
        let targets = &targets_of[k % 2];
        let mut img = Img::new(good.clone());
        let what = mutate(&mut img, &mut rng, targets);
        let bytes = std::sync::Arc::new(img.b);
        let b1 = bytes.clone();
        match bounded(limit, move || {
            check(mem(&b1), &CheckOptions::default()).map(|r| r.is_clean())
        }) {
            None => failures.push(format!("#{k} ({what}): check() hung")),
            Some(Err(_)) => failures.push(format!("#{k} ({what}): check() panicked")),
            Some(Ok(_)) => {}
        }
        let b2 = bytes.clone();
        match bounded(limit, move || mount_and_read(&b2)) {
            None => failures.push(format!("#{k} ({what}): mount/read hung")),
            Some(Err(_)) => failures.push(format!("#{k} ({what}): mount/read panicked")),
            Some(Ok(Ok(_))) => mounts[0] += 1,
            Some(Ok(Err(e))) if e.contains("opened, but") => mounts[1] += 1,
            Some(Ok(Err(_))) => mounts[2] += 1,
        }
        if k % 10 == 0 {
            let p = write_image(dir.path(), "m.img", &bytes);
            let before = hash(&bytes);
            let r = std::panic::catch_unwind(|| run_fsck(&["-n", p.to_str().unwrap()], limit));
            match r {
                Err(_) => failures.push(format!("#{k} ({what}): fsck -n panicked or hung")),
                Ok(r) => *codes.entry(r.code).or_default() += 1,
            }
            if hash(&std::fs::read(&p).unwrap()) != before {
                failures.push(format!("#{k} ({what}): fsck -n modified the image"));
            }
        }
        if failures.len() > 20 {
            break;
        }
    }
    println!(
        "{n} images (seed {seed:#x}): mount+read ok {}, opened but a read failed {}, mount refused {}; \
         fsck -n exit codes {codes:?}",
        mounts[0], mounts[1], mounts[2]
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
