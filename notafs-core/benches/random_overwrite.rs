//! Random 4 KiB overwrites with a commit every 256 writes (a database or VM
//! image pattern). A 256 MiB file is written and made durable (untimed);
//! then NOTAFS_BENCH_WRITES 4 KiB writes at random 4 KiB-aligned offsets
//! (splitmix64 from NOTAFS_BENCH_SEED: the same sequence for every
//! contender), with a durable commit after every 256th. Contenders, in the
//! same run on the same device (the bench directory):
//!
//! * raw: pwrite on a preallocated, written file + fdatasync every 256;
//! * notafs: `File::write_at` + `Fs::commit` on a 1 GiB image file;
//! * notafs on loop: the same on a loop device over a preallocated 1 GiB
//!   file, through the raw backend (O_DIRECT on the block device), set up
//!   as the peers' loop devices are;
//! * ext4, xfs, btrfs, FAT32 on a loop device over a preallocated 1 GiB file
//!   (pwrite + fdatasync every 256);
//! * littlefs (littlefs-python) on a 1 GiB image file (lfs_file_seek +
//!   lfs_file_write, lfs_file_sync every 256).
//!
//! Every contender gets NOTAFS_BENCH_BUDGET seconds per round (10): a
//! slower one stops after the commit that crosses it and is reported with
//! the writes it did (littlefs rewrites a file from the written block to
//! its end, seconds per write here; FAT through fusefat walks the cluster
//! chain).
//!
//! Per round every contender is set up fresh, then all run interleaved in
//! slices of NOTAFS_BENCH_SLICE writes (order rotating); best of
//! NOTAFS_BENCH_ROUNDS rounds per contender. Write amplification = bytes
//! written to the device / bytes written by the workload.
//!
//!     cargo bench -p notafs-core --bench random_overwrite
//!     NOTAFS_BENCH_DIRECT=1 cargo bench -p notafs-core --bench random_overwrite
//!
//! Env: NOTAFS_BENCH_WRITES (16384), NOTAFS_BENCH_ROUNDS (3),
//! NOTAFS_BENCH_SLICE (256), NOTAFS_BENCH_SEED (1), NOTAFS_BENCH_DIR
//! (/var/tmp), NOTAFS_BENCH_BUDGET (10), NOTAFS_BENCH_PEERS (comma list
//! of raw, raw-loop, notafs, notafs-loop, ext4, xfs, btrfs, fat, littlefs; default
//! all). Peers
//! need root and their mkfs tools; a peer that cannot run is printed as
//! SKIPPED with the reason.
use std::time::Instant;

mod common;
use common::peers::{
    self, interleave, keep_best, loadavg, print_table, Best, Contender, Entry, Kind, Littlefs,
    LoopPeer, Notafs, Raw, Workload, KINDS,
};

const FILE: u64 = 256 << 20;
/// notafs image, loop device backing files and the littlefs image.
const DEV: u64 = 1 << 30;
const EVERY: usize = 256;
const LFS_DIRECT: &str = "littlefs in O_DIRECT mode: a random write rewrites the file from \
    that block to its end (~128 MiB here) in 512-byte O_DIRECT requests from Python, ~100 s \
    per write (2 writes in 200 s when tried); see the buffered run";
const LFS_ONCE: &str = "round 0 only";

fn env(k: &str, d: f64) -> f64 {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let rounds = env("NOTAFS_BENCH_ROUNDS", 3.0) as usize;
    let n = env("NOTAFS_BENCH_WRITES", 16384.0) as usize;
    let slice = (env("NOTAFS_BENCH_SLICE", 256.0) as usize).max(1);
    let seed = env("NOTAFS_BENCH_SEED", 1.0) as u64;
    let budget = env("NOTAFS_BENCH_BUDGET", 10.0);
    let direct = std::env::var("NOTAFS_BENCH_DIRECT").is_ok_and(|v| v == "1");
    let dir = std::env::var("NOTAFS_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let all = "raw,raw-loop,notafs,notafs-loop,ext4,xfs,btrfs,fat,littlefs";
    let which = std::env::var("NOTAFS_BENCH_PEERS").unwrap_or_else(|_| all.into());
    let names: Vec<&str> = all
        .split(',')
        .filter(|c| which.split(',').any(|w| w == *c))
        .collect();
    peers::sweep_stale(&dir);
    peers::catch_interrupts();
    let pid = std::process::id();
    let w = Workload::Random {
        file: FILE,
        every: EVERY,
        seed,
    };
    let load0 = loadavg();
    let t0 = Instant::now();
    let mut best = Best::new(names.len());
    let raw = names.iter().position(|c| *c == "raw");
    for round in 0..rounds {
        let mut entries: Vec<Entry> = names
            .iter()
            .map(|name| {
                let img = format!("{dir}/notafs-random-overwrite-{pid}-{name}.img");
                let c: Result<Box<dyn Contender>, String> = match *name {
                    "raw" => {
                        Raw::new(&img, FILE, w, direct).map(|c| Box::new(c) as Box<dyn Contender>)
                    }
                    "notafs" => Notafs::new(&img, DEV, w, direct, true)
                        .map(|c| Box::new(c) as Box<dyn Contender>),
                    "raw-loop" => Raw::on_loop(&dir, DEV, w, direct)
                        .map(|c| Box::new(c) as Box<dyn Contender>),
                    "notafs-loop" => Notafs::on_loop(&dir, DEV, w, direct)
                        .map(|c| Box::new(c) as Box<dyn Contender>),
                    "littlefs" if direct => Err(LFS_DIRECT.into()),
                    "littlefs" if round > 0 => Err(LFS_ONCE.into()),
                    "littlefs" => Littlefs::new(&img, DEV, w, direct)
                        .map(|c| Box::new(c) as Box<dyn Contender>),
                    name => {
                        let kind: Kind = KINDS.into_iter().find(|k| k.name() == name).unwrap();
                        LoopPeer::new(kind, &dir, DEV, w, direct)
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
                    "round {round}: {l}: {:.2}/s WA {:.2} flushes {:.2} ({} writes)",
                    o.rate, o.wa, o.flushes, o.done
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
        "random overwrites: {n} x 4 KiB at random offsets of a 256 MiB file, commit every \
         {EVERY}, seed {seed}, interleaved in slices of {slice}, best of {rounds}, dir {dir}, \
         {mode}; {:.0} s, load average {load0} -> {}",
        t0.elapsed().as_secs_f64(),
        loadavg()
    );
    print_table("writes/s", n, budget, &best, raw);
}
