//! Small durable commits: 4 KiB append + commit, the pattern of a pack
//! store's control file and of an fsync-heavy program, against the raw
//! limit measured in the same run on the same device (4 KiB pwrite +
//! fdatasync on a preallocated file), with the commit-log protocol (one
//! flush per commit, the default) and with the barrier protocol (two), and
//! against peer filesystems on the same device with the same durability:
//! ext4, xfs, btrfs and FAT32 on a loop device over a preallocated file in
//! the same directory (4 KiB append to one file + fdatasync), and littlefs
//! on an image file there (append + lfs_file_sync). `notafs-loop`: notafs
//! (commit log) on a loop device set up as the peers' are, through the raw
//! backend.
//!
//! Per round every contender is set up fresh, then all run their commits
//! interleaved in slices (NOTAFS_BENCH_SLICE commits, order rotating), so
//! they share the device's ups and downs; best of NOTAFS_BENCH_ROUNDS
//! rounds per contender. Also the write amplification (bytes written to the
//! device per byte appended: notafs through a counting device, peers from
//! /sys/block/loopN/stat after a syncfs, littlefs from its prog calls) and
//! the device flushes per commit.
//!
//!     cargo bench -p notafs-core --bench small_commit
//!     NOTAFS_BENCH_DIRECT=1 cargo bench -p notafs-core --bench small_commit
//!
//! Env: NOTAFS_BENCH_COMMITS (2000), NOTAFS_BENCH_ROUNDS (3),
//! NOTAFS_BENCH_SLICE (20), NOTAFS_BENCH_DIR (/var/tmp),
//! NOTAFS_BENCH_BUDGET (seconds per contender per round, 10: a slower one
//! stops there and is reported with the commits it did),
//! NOTAFS_BENCH_PEERS (comma list of raw, raw-loop, log, barrier, notafs-loop, ext4,
//! xfs, btrfs, fat, littlefs; default all). Peers need root and their mkfs tools; a
//! peer that cannot run is printed as SKIPPED with the reason.
use std::time::Instant;

mod common;
use common::peers::{
    self, interleave, keep_best, loadavg, print_table, Best, Contender, Entry, Kind, Littlefs,
    LoopPeer, Notafs, Raw, Workload, KINDS,
};

const IMAGE: u64 = 256 << 20;
/// Loop device backing files (xfs needs at least 300 MiB).
const PEER_DEV: u64 = 1 << 30;

fn env(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let rounds = env("NOTAFS_BENCH_ROUNDS", 3);
    let n = env("NOTAFS_BENCH_COMMITS", 2000);
    let slice = env("NOTAFS_BENCH_SLICE", 20).max(1);
    let budget = env("NOTAFS_BENCH_BUDGET", 10) as f64;
    let direct = std::env::var("NOTAFS_BENCH_DIRECT").is_ok_and(|v| v == "1");
    let dir = std::env::var("NOTAFS_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let all = "raw,raw-loop,log,barrier,notafs-loop,ext4,xfs,btrfs,fat,littlefs";
    let which = std::env::var("NOTAFS_BENCH_PEERS").unwrap_or_else(|_| all.into());
    let names: Vec<&str> = all
        .split(',')
        .filter(|c| which.split(',').any(|w| w == *c))
        .collect();
    peers::sweep_stale(&dir);
    peers::catch_interrupts();
    let pid = std::process::id();
    let w = Workload::Append;
    let load0 = loadavg();
    let t0 = Instant::now();
    let mut best = Best::new(names.len());
    let raw = names.iter().position(|c| *c == "raw");
    for round in 0..rounds {
        let mut entries: Vec<Entry> = names
            .iter()
            .map(|name| {
                let img = format!("{dir}/notafs-small-commit-{pid}-{name}.img");
                let c: Result<Box<dyn Contender>, String> = match *name {
                    "raw" => {
                        Raw::new(&img, IMAGE, w, direct).map(|c| Box::new(c) as Box<dyn Contender>)
                    }
                    "log" => Notafs::new(&img, IMAGE, w, direct, true)
                        .map(|c| Box::new(c) as Box<dyn Contender>),
                    "barrier" => Notafs::new(&img, IMAGE, w, direct, false)
                        .map(|c| Box::new(c) as Box<dyn Contender>),
                    "raw-loop" => Raw::on_loop(&dir, PEER_DEV, w, direct)
                        .map(|c| Box::new(c) as Box<dyn Contender>),
                    "notafs-loop" => Notafs::on_loop(&dir, PEER_DEV, w, direct)
                        .map(|c| Box::new(c) as Box<dyn Contender>),
                    "littlefs" => Littlefs::new(&img, IMAGE, w, direct)
                        .map(|c| Box::new(c) as Box<dyn Contender>),
                    name => {
                        let kind: Kind = KINDS.into_iter().find(|k| k.name() == name).unwrap();
                        LoopPeer::new(kind, &dir, PEER_DEV, w, direct)
                            .map(|c| Box::new(c) as Box<dyn Contender>)
                    }
                };
                let label = match &c {
                    Ok(c) => c.label(),
                    Err(_) if *name == "littlefs" => "littlefs".into(),
                    Err(_) if *name == "notafs-loop" => "notafs on loop (raw backend)".into(),
                    Err(_) if *name == "raw-loop" => "raw (loop device)".into(),
                    Err(_) => format!("{name} on loop"),
                };
                (label, c)
            })
            .collect();
        let labels: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
        let out = interleave(&mut entries, n, slice, budget);
        drop(entries);
        for (l, o) in labels.iter().zip(&out) {
            match o {
                Ok(o) => eprintln!(
                    "round {round}: {l}: {:.0}/s WA {:.2} flushes {:.2}",
                    o.rate, o.wa, o.flushes
                ),
                Err(e) => eprintln!("round {round}: {l}: SKIPPED: {e}"),
            }
        }
        keep_best(&mut best, labels, out, raw);
    }
    let mode = if direct {
        "O_DIRECT (notafs, raw, littlefs and peer files O_DIRECT; loop --direct-io=on)"
    } else {
        "buffered (loop devices without direct I/O)"
    };
    println!(
        "small commits: {n} x (4 KiB append + commit), interleaved in slices of {slice}, \
         best of {rounds}, dir {dir}, {mode}; {:.0} s, load average {load0} -> {}",
        t0.elapsed().as_secs_f64(),
        loadavg()
    );
    print_table("commits/s", n, budget, &best, raw);
}
