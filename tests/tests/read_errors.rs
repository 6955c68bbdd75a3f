//! An I/O error is not corruption (issue 8): on a populated image with
//! several generations, every read that a writable `Fs::open` issues and
//! every read that `check::repair` (fsck -y) issues is made to fail with
//! EIO, once (the fault-injecting `FaultDevice`, `fail_read_at`) and on
//! every later read of the same blocks. Each time: open fails with a device
//! error or opens the newest generation; the commit that follows never
//! overwrites or rolls back the newest generation; a repair never loses
//! the newest content. Prints the failing cases grouped, then fails.
use std::sync::Arc;

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::BlockDevice;
use notafs_core::check::CheckOptions;
use notafs_core::{FormatOptions, Fs};
use tests::eio::{check_read_error, EioDevice, Mode, Phase};
use tests::exec::{open_opts, CACHE};
use tests::model::{pattern, Tree};
use tests::oracle::listing;

const BS: u32 = 4096;

/// Eight generations over a directory and five files, one of them with a
/// two-level extent tree; 8 root slots, so every slot holds one.
fn image() -> (Vec<u8>, u64, Tree) {
    let dev = Arc::new(MemoryDevice::new(BS, 2048).unwrap());
    let fs = Fs::format(
        dev.clone(),
        &FormatOptions {
            uuid: Some(*b"read-errors-test"),
            root_slots: 8,
            time: Some(1_700_000_000),
            ..FormatOptions::default()
        },
    )
    .unwrap();
    fs.create_dir("d").unwrap();
    for g in 0..7u32 {
        let name = ["a", "d/b", "c", "d/e", "f"][g as usize % 5];
        let f = fs.open_file_with(name, true, false).unwrap();
        let at = f.len().unwrap();
        f.write_at(at, &pattern(g, at, 3000 + 1000 * g as usize))
            .unwrap();
        if g == 3 {
            // Fragmented: one block every other block, 200 extents.
            let fr = fs.create("frag").unwrap();
            for i in 0..200u64 {
                fr.write_at(i * 2 * BS as u64, &pattern(99, i, BS as usize))
                    .unwrap();
            }
        }
        fs.commit().unwrap();
    }
    let g = fs.generation();
    let t = listing(&fs.snapshot()).unwrap();
    drop(fs);
    (dev.to_vec(), g, t)
}

fn reads_of(base: &[u8], phase: Phase) -> Vec<(u64, u64)> {
    let mem: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::from_vec(BS, base.to_vec()));
    let rec = Arc::new(EioDevice::new(mem, None));
    match phase {
        Phase::Open => {
            Fs::open(rec.clone(), &open_opts()).unwrap();
        }
        Phase::Repair => {
            let rep = notafs_core::repair::repair(
                rec.clone(),
                &CheckOptions {
                    cache_bytes: Some(CACHE),
                    ..CheckOptions::default()
                },
            )
            .unwrap();
            assert!(rep.actions.is_empty(), "clean image repaired: {rep:?}");
            assert_eq!(rec.writes(), 0, "repair of a clean image wrote");
        }
    }
    rec.reads()
}

fn run(phase: Phase) {
    let (base, g0, want) = image();
    let reads = reads_of(&base, phase);
    let mut fails: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut cases = 0;
    for (i, &(b, l)) in reads.iter().enumerate() {
        for mode in [Mode::Once(i as u64 + 1), Mode::Always(b, l)] {
            cases += 1;
            if let Err(m) = check_read_error(&base, BS, g0, &want, phase, mode) {
                let key = m
                    .split(|c: char| c.is_ascii_digit())
                    .collect::<Vec<_>>()
                    .join("N");
                fails
                    .entry(key)
                    .or_default()
                    .push(format!("{mode:?} (read #{} of blocks {b}+{l}): {m}", i + 1));
            }
        }
    }
    let n: usize = fails.values().map(|v| v.len()).sum();
    println!(
        "{phase:?}: {} reads, {cases} cases, {n} violations (newest generation {g0})",
        reads.len()
    );
    for (k, v) in &fails {
        println!("  {} x {k}\n    e.g. {}", v.len(), v[0]);
    }
    assert!(n == 0, "{n} of {cases} read-error cases lose the newest generation during {phase:?}; see the output");
}

#[test]
fn read_error_at_writable_open_never_loses_the_newest_generation() {
    run(Phase::Open);
}

#[test]
fn read_error_during_repair_never_loses_the_newest_generation() {
    run(Phase::Repair);
}
