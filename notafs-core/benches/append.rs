//! Core benchmark (not a test): append a large file in 1 MiB writes with a
//! commit every 64 MiB, then read it back sequentially, and compare with raw
//! sequential I/O measured by `dd` on the same target in the same round.
//! Also reports write amplification (device bytes written / file bytes) and
//! peak RSS.
//!
//! Targets (`NOTAFS_BENCH_DEVICE`):
//! * `file` (default): an image file in NOTAFS_BENCH_DIR, opened by the
//!   image-file backend; `NOTAFS_BENCH_DIRECT=1` opens it with O_DIRECT and
//!   gives dd `oflag=direct` / `iflag=direct`.
//! * `loop`: a loop device (`losetup --direct-io=on --sector-size 4096`) over
//!   a file in NOTAFS_BENCH_DIR written in full once (so neither contender
//!   pays for the host filesystem converting unwritten extents), opened by
//!   the raw block-device backend (always O_DIRECT); dd writes and reads the
//!   same loop device with `oflag=direct conv=fdatasync` / `iflag=direct`.
//!   Needs root and losetup; otherwise the bench says SKIPPED and exits.
//!
//! notafs appends from and reads into a 1 MiB `Vec` (with O_DIRECT the
//! backend copies through an aligned bounce buffer);
//! `NOTAFS_BENCH_BUF=aligned` uses a 4096-aligned buffer instead (no copy,
//! as dd).
//!
//! Run: `cargo bench -p notafs-core --bench append`
//! Env: NOTAFS_BENCH_MB (default 1024), NOTAFS_BENCH_DIR (default /var/tmp),
//! NOTAFS_BENCH_ROUNDS (3), NOTAFS_BENCH_COMMIT_MB (64),
//! NOTAFS_BENCH_WRITE_BEHIND (bytes, 8 MiB; 0 = off; only the buffered
//! image file has write-behind at all, see `BlockDevice::host_cached_writes`).
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

mod common;

use common::{drop_caches, peak_rss_mb, preallocate};
use notafs_blockdev::{BlockDevice, Geometry, WriteReq};
use notafs_core::{FormatOptions, Fs, OpenOptions};

/// Counts the bytes written through it (write amplification) and passes
/// everything else on, including what the backend says about its cache
/// (`host_cached_writes`, which decides whether write-behind runs).
struct Counted {
    inner: Box<dyn BlockDevice>,
    written: std::sync::atomic::AtomicU64,
}

impl Counted {
    fn add(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl BlockDevice for Counted {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn read(&self, b: u64, buf: &mut [u8]) -> notafs_blockdev::Result<()> {
        self.inner.read(b, buf)
    }
    fn read_batch(&self, r: &mut [(u64, &mut [u8])]) -> notafs_blockdev::Result<()> {
        self.inner.read_batch(r)
    }
    fn write(&self, b: u64, d: &[u8]) -> notafs_blockdev::Result<()> {
        self.add(d.len());
        self.inner.write(b, d)
    }
    fn write_batch(&self, w: &[WriteReq<'_>]) -> notafs_blockdev::Result<()> {
        w.iter().for_each(|r| self.add(r.data.len()));
        self.inner.write_batch(w)
    }
    fn write_fua(&self, b: u64, d: &[u8]) -> notafs_blockdev::Result<()> {
        self.add(d.len());
        self.inner.write_fua(b, d)
    }
    fn has_fua(&self) -> bool {
        self.inner.has_fua()
    }
    fn host_cached_writes(&self) -> bool {
        self.inner.host_cached_writes()
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
    fn barrier(&self) -> notafs_blockdev::Result<()> {
        self.inner.barrier()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Where a round runs.
enum Target {
    /// An image file per contender, buffered or O_DIRECT.
    File { dir: String, direct: bool },
    /// One loop device shared by the contenders (raw dd first, then notafs
    /// formats over what dd wrote).
    Loop(LoopDev),
}

/// A loop device over a backing file; detached and the file removed on drop,
/// also when the bench panics half way.
struct LoopDev {
    dev: String,
    backing: String,
}

impl LoopDev {
    /// A loop device with O_DIRECT to the backing file and 4 KiB sectors over
    /// a new `bytes`-byte file in `dir`, written in full first (a partition
    /// or LV has its blocks; a preallocated but unwritten file would make the
    /// first write of each block also an extent conversion on the host).
    fn setup(dir: &str, bytes: u64) -> Result<LoopDev, String> {
        if let Some(why) = common::peers::loop_unavailable() {
            return Err(why);
        }
        // The name lets `sweep_stale` remove it if this process is killed.
        let backing = format!("{dir}/notafs-peer-append-{}.img", std::process::id());
        preallocate(&backing, bytes);
        let mut guard = LoopDev {
            dev: String::new(),
            backing,
        };
        let of = format!("of={}", guard.backing);
        let count = format!("count={}", bytes >> 20);
        let st = Command::new("dd")
            .args(["if=/dev/zero", &of, "bs=1M", &count, "oflag=direct"])
            .args(["conv=fdatasync,notrunc", "status=none"])
            .status()
            .map_err(|e| format!("dd: {e}"))?;
        if !st.success() {
            return Err(format!("dd to {} failed", guard.backing));
        }
        let out = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on", "--sector-size", "4096"])
            .arg(&guard.backing)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        guard.dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let name = guard.dev.trim_start_matches("/dev/");
        let dio =
            std::fs::read_to_string(format!("/sys/block/{name}/loop/dio")).unwrap_or_default();
        if dio.trim() != "1" {
            // The host filesystem refused direct I/O to the backing file: the
            // loop device would go through the host page cache.
            return Err(format!(
                "{} has no direct I/O to {}",
                guard.dev, guard.backing
            ));
        }
        Ok(guard)
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if !self.dev.is_empty() {
            let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        }
        let _ = std::fs::remove_file(&self.backing);
    }
}

fn dd(args: &[&str]) -> f64 {
    let t = Instant::now();
    let st = Command::new("dd")
        .args(args)
        .arg("status=none")
        .status()
        .expect("dd");
    assert!(st.success(), "dd {args:?} failed");
    t.elapsed().as_secs_f64()
}

/// A 1 MiB I/O buffer: a `Vec` (what most callers have: with O_DIRECT the
/// backend then copies through an aligned bounce buffer), or with
/// `NOTAFS_BENCH_BUF=aligned` a 4096-aligned buffer, which O_DIRECT takes
/// as it is, as dd's own buffers are.
enum Buf {
    Vec(Vec<u8>),
    Aligned(notafs_blockdev::file::AlignedBuf),
}

impl Buf {
    fn new(aligned: bool) -> Buf {
        if aligned {
            Buf::Aligned(notafs_blockdev::file::AlignedBuf::zeroed(1 << 20, 4096).expect("alloc"))
        } else {
            Buf::Vec(vec![0u8; 1 << 20])
        }
    }
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Buf::Vec(v) => v,
            Buf::Aligned(a) => a,
        }
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Buf::Vec(v) => v,
            Buf::Aligned(a) => a,
        }
    }
}

fn aligned_buffers() -> bool {
    std::env::var("NOTAFS_BENCH_BUF").is_ok_and(|v| v == "aligned")
}

struct Round {
    raw_w: f64,
    raw_r: f64,
    nf_w: f64,
    nf_r: f64,
    /// CPU seconds (user + system, all threads of this process) notafs spent
    /// appending and reading: on a shared machine the CPU that sits between
    /// two device requests is what waits for a core, while dd needs almost
    /// none.
    cpu_w: f64,
    cpu_r: f64,
    written: u64,
    cold: bool,
}

/// CPU seconds used so far by this process (all threads; not the dd
/// children, which are waited for separately).
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: ru points to writable memory of the size getrusage fills.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: getrusage succeeded and filled the (zeroed) struct.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rounds = env_u64("NOTAFS_BENCH_ROUNDS", 3).max(1) as usize;
    let direct = std::env::var("NOTAFS_BENCH_DIRECT").is_ok_and(|v| v == "1");
    let mb = env_u64("NOTAFS_BENCH_MB", 1024);
    let dir = std::env::var("NOTAFS_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let device = std::env::var("NOTAFS_BENCH_DEVICE").unwrap_or_else(|_| "file".into());
    let target = match device.as_str() {
        "file" => Target::File {
            dir: dir.clone(),
            direct,
        },
        "loop" => {
            common::peers::sweep_stale(&dir);
            // notafs gets twice the file size (as on an image), plus room
            // for metadata.
            match LoopDev::setup(&dir, (mb * 2 + 64) << 20) {
                Ok(l) => Target::Loop(l),
                Err(why) => {
                    println!("append benchmark on a loop device SKIPPED: {why}");
                    return;
                }
            }
        }
        other => {
            eprintln!("NOTAFS_BENCH_DEVICE={other:?}: expected file or loop");
            std::process::exit(2);
        }
    };
    let what = match &target {
        Target::File { direct, .. } => format!("image file in {dir}, O_DIRECT: {direct}"),
        Target::Loop(l) => format!(
            "loop device {} (direct-io, 4 KiB sectors) over {}, raw backend (O_DIRECT)",
            l.dev, l.backing
        ),
    };
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let bufs = if aligned_buffers() {
        "4096-aligned buffers"
    } else {
        "Vec buffers"
    };
    println!("notafs-core append/read benchmark, {mb} MiB, {what}, notafs I/O from {bufs}");
    println!("load before: {}", load());
    let mbs = |s: f64| mb as f64 / s;
    // The disk here is virtual with a host cache and neighbours: take the
    // best of several rounds for every contender (each round runs all of
    // them), which estimates what each can do, not the noise. Odd rounds
    // run notafs first, so neither side always follows the other's writes.
    let mut all = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let r = round(mb, &target, i % 2 == 1);
        println!(
            "round {}: raw write {:7.1}  notafs append {:7.1}  raw read {:7.1}  notafs read {:7.1} MiB/s  notafs CPU {:.2}/{:.2} ms per MiB  (load {})",
            i + 1,
            mbs(r.raw_w),
            mbs(r.nf_w),
            mbs(r.raw_r),
            mbs(r.nf_r),
            r.cpu_w * 1e3 / mb as f64,
            r.cpu_r * 1e3 / mb as f64,
            load()
        );
        all.push(r);
    }
    let best = |f: &dyn Fn(&Round) -> f64| all.iter().map(f).fold(f64::INFINITY, f64::min);
    let (raw_w, raw_r, nf_w, nf_r) = (
        best(&|r| r.raw_w),
        best(&|r| r.raw_r),
        best(&|r| r.nf_w),
        best(&|r| r.nf_r),
    );
    // Median over rounds of notafs/raw within the round: the host cache
    // makes single figures swing 2x between rounds, and the best of each
    // side can come from different rounds; the paired ratio is steadier.
    let median_ratio = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = all.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let med_w = median_ratio(&|r| r.raw_w / r.nf_w);
    let med_r = median_ratio(&|r| r.raw_r / r.nf_r);
    let written = all[0].written;
    let cold = all.iter().all(|r| r.cold);
    println!("best of {rounds} rounds, page cache dropped before reads: {cold}");
    println!(
        "raw dd write (1 MiB, fdatasync):   {:8.1} MiB/s",
        mbs(raw_w)
    );
    println!(
        "notafs append (1 MiB, commit/64M): {:8.1} MiB/s  ratio {:.2}  (median of per-round ratios {:.2})",
        mbs(nf_w),
        raw_w / nf_w,
        med_w
    );
    println!(
        "raw dd read (1 MiB):               {:8.1} MiB/s",
        mbs(raw_r)
    );
    println!(
        "notafs sequential read (1 MiB):    {:8.1} MiB/s  ratio {:.2}  (median of per-round ratios {:.2})",
        mbs(nf_r),
        raw_r / nf_r,
        med_r
    );
    println!(
        "write amplification: {:.4} (device bytes {} / file bytes {})",
        written as f64 / (mb * 1048576) as f64,
        written,
        mb * 1048576
    );
    println!(
        "peak RSS: {:.1} MiB (cache {} MiB)",
        peak_rss_mb(),
        notafs_core::DEFAULT_CACHE_BYTES >> 20
    );
    println!("load after: {}", load());
}

/// Raw limit: `mb` MiB in 1 MiB writes ending with fdatasync, then a cold
/// sequential read in 1 MiB requests; (write seconds, read seconds, cold).
fn raw_round(mb: u64, target: &Target) -> (f64, f64, bool) {
    let count = format!("count={mb}");
    let (path, direct, scratch) = match target {
        Target::File { dir, direct } => {
            let raw = format!("{dir}/notafs-bench-raw.img");
            let _ = std::fs::remove_file(&raw);
            // Preallocated, as a partition or LV would be: the comparison
            // is then about notafs, not about the host filesystem
            // allocating blocks under a sparse image.
            preallocate(&raw, mb * 1048576);
            (raw, *direct, true)
        }
        Target::Loop(l) => (l.dev.clone(), true, false),
    };
    let of = format!("of={path}");
    let inf = format!("if={path}");
    let mut wargs = vec![
        "if=/dev/zero",
        of.as_str(),
        "bs=1M",
        count.as_str(),
        "conv=fdatasync,notrunc",
    ];
    let mut rargs = vec![inf.as_str(), "of=/dev/null", "bs=1M", count.as_str()];
    if direct {
        wargs.push("oflag=direct");
        rargs.push("iflag=direct");
    }
    let raw_w = dd(&wargs);
    let cold = drop_caches();
    let raw_r = dd(&rargs);
    if scratch {
        let _ = std::fs::remove_file(&path);
    }
    (raw_w, raw_r, cold)
}

fn round(mb: u64, target: &Target, notafs_first: bool) -> Round {
    // The order alternates between rounds; the figures do not depend on it.
    let (notafs, raw) = if notafs_first {
        let n = notafs_round(mb, target);
        (n, raw_round(mb, target))
    } else {
        let r = raw_round(mb, target);
        (notafs_round(mb, target), r)
    };
    let (nf_w, nf_r, cpu_w, cpu_r, written) = notafs;
    let (raw_w, raw_r, cold) = raw;
    Round {
        raw_w,
        raw_r,
        nf_w,
        nf_r,
        cpu_w,
        cpu_r,
        written,
        cold,
    }
}

/// notafs: format, append `mb` MiB, drop caches, read it back; (append
/// seconds, read seconds, their CPU seconds, device bytes written by the
/// appends and commits).
fn notafs_round(mb: u64, target: &Target) -> (f64, f64, f64, f64, u64) {
    let commit_every = env_u64("NOTAFS_BENCH_COMMIT_MB", 64).max(1);
    let (spec, opts, scratch) = match target {
        Target::File { dir, direct } => {
            // An image file of twice the size.
            let img = format!("{dir}/notafs-bench.img");
            let _ = std::fs::remove_file(&img);
            preallocate(&img, mb * 2 * 1048576 + 64 * 1048576);
            let o = notafs_blockdev::OpenOptions {
                direct: *direct,
                ..Default::default()
            };
            (img, o, true)
        }
        Target::Loop(l) => {
            let o = notafs_blockdev::OpenOptions {
                block_size: Some(4096),
                ..Default::default()
            };
            (l.dev.clone(), o, false)
        }
    };
    let dev = notafs_blockdev::open(&spec, &opts).expect("open the notafs target");
    println!("  notafs on {}", dev.describe());
    let dev = Arc::new(Counted {
        inner: dev,
        written: Default::default(),
    });
    Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
    // Write-behind (background flushes every 8 MiB) as the CLI uses it;
    // NOTAFS_BENCH_WRITE_BEHIND=0 turns it off. It only runs where writes
    // may wait in a host page cache (the buffered image file here), not on
    // the O_DIRECT image or the direct-I/O loop device.
    let wb = env_u64("NOTAFS_BENCH_WRITE_BEHIND", 8 << 20);
    let fs = Fs::open(
        dev.clone(),
        &OpenOptions {
            write_behind: (wb > 0).then_some(wb),
            ..Default::default()
        },
    )
    .unwrap();
    let before = dev.written.load(Ordering::Relaxed);
    let aligned = aligned_buffers();
    let mut chunk = Buf::new(aligned);
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = ((i as u32).wrapping_mul(2654435761) >> 13) as u8;
    }
    let c = cpu_seconds();
    let t = Instant::now();
    let file = fs.create("store.0.suffix").unwrap();
    for i in 0..mb {
        file.append(&chunk).unwrap();
        if (i + 1) % commit_every == 0 {
            fs.commit().unwrap();
        }
    }
    fs.commit().unwrap();
    let nf_w = t.elapsed().as_secs_f64();
    let cpu_w = cpu_seconds() - c;
    let written = dev.written.load(Ordering::Relaxed) - before;
    drop(file);
    drop(fs);

    drop_caches();
    let fs = Fs::open(
        dev.clone(),
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let snap = fs.snapshot();
    let f = snap.open("store.0.suffix").unwrap();
    let mut buf = Buf::new(aligned);
    let c = cpu_seconds();
    let t = Instant::now();
    let mut off = 0;
    while off < f.len() {
        let n = f.read_at(off, &mut buf).unwrap();
        off += n as u64;
    }
    let nf_r = t.elapsed().as_secs_f64();
    let cpu_r = cpu_seconds() - c;
    assert_eq!(off, mb * 1048576, "read back the whole file");
    drop(f);
    drop(snap);
    drop(fs);
    drop(dev);
    if scratch {
        let _ = std::fs::remove_file(&spec);
    }
    (nf_w, nf_r, cpu_w, cpu_r, written)
}
