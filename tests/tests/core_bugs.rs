//! Core bugs found by notafs-crashtest, as minimal reproducers. Each is
//! Regression tests for core bugs found by the crash harness (all fixed).
use std::sync::Arc;

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::BlockDevice;
use notafs_core::check::CheckOptions;
use notafs_core::repair::repair;
use notafs_core::{FormatOptions, Fs, OpenOptions};

/// Found by `notafs-crashtest --kinds repair` (oracle step 4).
///
/// `check::repair` rolling back to an older generation (`rebuild_from`)
/// frees every block of the generations newer than the base, but leaves
/// their root slots valid. `Fs::generations()` keeps listing them as
/// retained and `OpenOptions { generation: Some(..) }` opens them, while
/// the next commits reuse their blocks: reading such a "retained"
/// generation then fails with a checksum mismatch (or, with a node
/// rewritten in the same place, could show another generation's tree).
/// Expected: a rolled-back generation is no longer listed or openable
/// (e.g. repair wipes the dropped slots after its own slot is durable, or
/// the new slot records the rollback so open skips generations between).
#[test]

fn repair_rollback_leaves_dropped_generations_retained() {
    let dev = Arc::new(MemoryDevice::new(4096, 256).unwrap());
    let d: Arc<dyn BlockDevice> = dev.clone();
    let fs = Fs::format(
        d.clone(),
        &FormatOptions {
            root_slots: 4,
            ..FormatOptions::default()
        },
    )
    .unwrap();
    let f = fs.create("a").unwrap();
    f.append(&[1u8; 5000]).unwrap();
    assert_eq!(fs.commit().unwrap(), 2);
    let f = fs.create("b").unwrap();
    f.append(&[2u8; 20000]).unwrap();
    assert_eq!(fs.commit().unwrap(), 3); // generation 3 will be rolled back
    drop((f, fs));
    let rep = repair(
        d.clone(),
        &CheckOptions {
            generation: Some(2),
            ..CheckOptions::default()
        },
    )
    .unwrap();
    assert_eq!(rep.new_generation, Some(4));
    // Whole-block writes of the next transaction go straight to free
    // blocks, before any commit: a crash right here leaves them on disk.
    // Some of them land on blocks generation 3 held.
    let repaired = dev.to_vec();
    let mut bad = Vec::new();
    for blocks in 1..64usize {
        let dev = Arc::new(MemoryDevice::from_vec(4096, repaired.clone()));
        let fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
        let f = fs.create("x").unwrap();
        f.write_at(0, &vec![0x40; blocks * 4096]).unwrap();
        // What a crash now leaves: the device as it is, opened again.
        let d: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::from_vec(4096, dev.to_vec()));
        let fs = Fs::open(d.clone(), &OpenOptions::default()).unwrap();
        for g in fs.generations().iter().map(|g| g.generation) {
            let old = Fs::open(
                d.clone(),
                &OpenOptions {
                    read_only: true,
                    generation: Some(g),
                    ..OpenOptions::default()
                },
            )
            .unwrap();
            let snap = old.snapshot();
            for e in snap.read_dir("").unwrap() {
                if let Err(err) = snap.read_to_vec(&e.name) {
                    bad.push(format!(
                        "{blocks} blocks written: generation {g} is listed as retained but {} reads: {err}",
                        e.name
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Found by `notafs-crashtest --kinds repair` (oracle steps 2 and 3), same
/// root cause as above, worse effect: a crash *during* a rollback repair
/// corrupts the newest generation, which is still the one that opens.
///
/// `rebuild_from(base)` treats every block not reachable from `base` (or
/// held for older generations) as free, including the blocks of the
/// generations newer than `base`, and writes its new free-list nodes there
/// *before* its root slot is durable. If power fails after those writes
/// and before the slot, the old newest generation is still what opens, and
/// its data or tree blocks have been overwritten: checksum mismatches.
/// The module docs promise "a crash during a repair leaves the previous
/// roots intact". Expected: the blocks of the rolled-back generations stay
/// untouched until the new root is durable (hold them as pending, like any
/// commit's freed blocks).
#[test]

fn crash_during_repair_rollback_corrupts_newest_generation() {
    use notafs_blockdev::crash::{CrashDevice, EnumOptions};
    let dev = Arc::new(CrashDevice::new(4096, 256).unwrap());
    let d: Arc<dyn BlockDevice> = dev.clone();
    let fs = Fs::format(
        d.clone(),
        &FormatOptions {
            root_slots: 4,
            ..FormatOptions::default()
        },
    )
    .unwrap();
    // Barrier commits: generations 2 and 3 exactly, no sealing slot.
    fs.set_commit_log(false);
    let f = fs.create("a").unwrap();
    f.append(&[1u8; 8315]).unwrap();
    assert_eq!(fs.commit().unwrap(), 2);
    f.append(&[3u8; 4396]).unwrap();
    assert_eq!(fs.commit().unwrap(), 3);
    drop((f, fs));
    // Start logging here: only the repair's own requests are crashed.
    let dev = Arc::new(dev.snapshot().to_device());
    let d: Arc<dyn BlockDevice> = dev.clone();
    repair(
        d.clone(),
        &CheckOptions {
            generation: Some(2),
            ..CheckOptions::default()
        },
    )
    .unwrap();
    let mut bad = Vec::new();
    for st in dev.states(&EnumOptions::default()) {
        let img: Arc<dyn BlockDevice> = Arc::new(st.image());
        let fs = Fs::open(img, &OpenOptions::default()).unwrap();
        let g = fs.generation();
        let snap = fs.snapshot();
        let want: Vec<u8> = if g == 3 {
            [vec![1u8; 8315], vec![3u8; 4396]].concat()
        } else {
            vec![1u8; 8315]
        };
        match snap.read_to_vec("a") {
            Ok(v) if v == want => {}
            Ok(_) => bad.push(format!("{}: generation {g}: wrong bytes", st.desc)),
            Err(e) => bad.push(format!("{}: generation {g}: {e}", st.desc)),
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Found by `notafs-crashtest --seed 1` (workload #270, near-full, oracle
/// step 5): on a near-full image recovered from a crash state, `create` and
/// `write_at` of 3000 bytes are accepted (the commit reserve check passes)
/// but the following `commit` fails with NoSpace, so the filesystem cannot
/// commit at all. The reserve (`commit_reserve`) is meant to guarantee that
/// an accepted change can always be committed. Reproducer: the harness
/// workload itself (`notafs-crashtest --seed 1 --workload 270`).
#[test]

fn near_full_commit_nospace_after_reserve_accepted() {
    let out = tests::runner::run(&tests::runner::RunOptions {
        seed: 1,
        states: u64::MAX,
        seconds: None,
        threads: 1,
        caps: tests::runner::Caps::default(),
        kinds: Vec::new(),
        only: Some(270),
        max_violations: 1,
        progress: false,
    });
    if let Some(v) = out.violations.first() {
        panic!("{}: {}", v.state, v.message);
    }
}
