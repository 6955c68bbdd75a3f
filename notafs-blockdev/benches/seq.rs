//! Sequential 1 MiB throughput of the file and raw backends against the raw
//! limit measured on the same file/device in the same run (`dd`, and `fio`
//! when installed); then batches (`write_batch`/`read_batch`): 4 KiB random
//! writes and reads in batches of 64 and 1 MiB sequential transfers in
//! batches of 16, against fio with io_uring at the same queue depth, and the
//! same 4 KiB requests one at a time.
//!
//!     cargo bench -p notafs-blockdev --bench seq
//!
//! NOTAFS_BENCH_RAND_OPS (default 32768) sets the 4 KiB requests per random
//! run; NOTAFS_NO_URING=1 measures the fallback engine (preadv/pwritev on
//! threads).
//!
//! Environment: NOTAFS_BENCH_MB (default 1024), NOTAFS_BENCH_DIR (default
//! /var/tmp; must not be tmpfs, O_DIRECT is needed), NOTAFS_BENCH_REPS
//! (default 3; the best run of each contender is reported, runs interleaved).
//!
//! Reads are measured with O_DIRECT on both sides: the page cache cannot be
//! dropped portably between runs, and a cached read measures memcpy.
//! Buffered writes are compared with buffered `dd ... conv=fsync` (both end
//! with one fdatasync/fsync). dd writes zeros, so the backend writes zeros
//! too (a host that detects zero writes then favours both equally); fio
//! writes non-zero data and serves as a cross-check.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use notafs_blockdev::file::{AlignedBuf, FileDevice, FileOptions};
use notafs_blockdev::raw::{RawDevice, RawOptions};
use notafs_blockdev::{BlockDevice, WriteReq};

const MIB: usize = 1 << 20;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// MB/s (10^6 bytes per second).
fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Run dd and return its own measured seconds ("..., 0.38 s, 2.8 GB/s").
fn dd(args: &[&str]) -> Result<f64, String> {
    let text = run(Command::new("dd").args(args))?;
    let line = text
        .lines()
        .find(|l| l.contains("copied"))
        .ok_or_else(|| format!("dd output not understood: {text}"))?;
    let secs = line
        .split(", ")
        .find_map(|f| f.strip_suffix(" s").and_then(|n| n.parse::<f64>().ok()))
        .ok_or_else(|| format!("dd output not understood: {line}"))?;
    Ok(secs)
}

fn have(prog: &str) -> bool {
    Command::new(prog)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// fio sequential 1 MiB, psync engine (one request in flight, like dd and
/// the backends). Returns bytes/s.
fn fio(target: &Path, rw: &str, mb: u64) -> Result<f64, String> {
    let text = run(Command::new("fio").args([
        "--name=seq",
        &format!("--filename={}", target.display()),
        &format!("--rw={rw}"),
        "--bs=1M",
        &format!("--size={mb}M"),
        "--direct=1",
        "--ioengine=psync",
        "--end_fsync=1",
        "--output-format=json",
    ]))?;
    // The section header, not the `"rw" : "write"` option value.
    let section = if rw == "write" {
        "\"write\" : {"
    } else {
        "\"read\" : {"
    };
    let s = text
        .find(section)
        .map(|i| &text[i..])
        .ok_or("fio json: no section")?;
    let i = s.find("\"bw_bytes\"").ok_or("fio json: no bw_bytes")?;
    let num: String = s[i + 10..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    num.parse::<f64>().map_err(|e| format!("fio json: {e}"))
}

/// fio with io_uring at queue depth `depth`: `rw` (randwrite, randread,
/// write, read) in `bs` requests, `io_mb` MiB in all over the first `mb` MiB.
/// Returns bytes/s.
fn fio_qd(
    target: &Path,
    rw: &str,
    bs: &str,
    depth: u32,
    mb: u64,
    io_mb: u64,
) -> Result<f64, String> {
    let text = run(Command::new("fio").args([
        "--name=qd",
        &format!("--filename={}", target.display()),
        &format!("--rw={rw}"),
        &format!("--bs={bs}"),
        &format!("--size={mb}M"),
        &format!("--io_size={io_mb}M"),
        &format!("--iodepth={depth}"),
        "--direct=1",
        "--ioengine=io_uring",
        "--end_fsync=1",
        "--randrepeat=0",
        "--norandommap",
        "--output-format=json",
    ]))?;
    let section = if rw.contains("write") {
        "\"write\" : {"
    } else {
        "\"read\" : {"
    };
    let s = text
        .find(section)
        .map(|i| &text[i..])
        .ok_or("fio json: no section")?;
    let i = s.find("\"bw_bytes\"").ok_or("fio json: no bw_bytes")?;
    let num: String = s[i + 10..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    num.parse::<f64>().map_err(|e| format!("fio json: {e}"))
}

/// `ops` distinct-enough random 4 KiB-aligned block numbers (in device
/// blocks) within the first `mb` MiB.
fn random_blocks(dev: &dyn BlockDevice, mb: u64, ops: usize, seed: u64) -> Vec<u64> {
    let per4k = (4096 / dev.geometry().block_size) as u64;
    let slots = mb * (MIB as u64 / 4096);
    let mut x = seed | 1;
    (0..ops)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % slots) * per4k
        })
        .collect()
}

/// 4 KiB writes at `blocks`, `depth` per write_batch (1 = plain write), then
/// one flush. Seconds.
fn backend_rand_write(dev: &dyn BlockDevice, buf: &[u8], blocks: &[u64], depth: usize) -> f64 {
    let t = Instant::now();
    for chunk in blocks.chunks(depth) {
        if depth == 1 {
            dev.write(chunk[0], &buf[..4096]).expect("bench write");
        } else {
            let reqs: Vec<WriteReq<'_>> = chunk
                .iter()
                .enumerate()
                .map(|(k, &b)| WriteReq {
                    block: b,
                    data: &buf[k * 4096..(k + 1) * 4096],
                })
                .collect();
            dev.write_batch(&reqs).expect("bench write_batch");
        }
    }
    dev.flush().expect("bench flush");
    t.elapsed().as_secs_f64()
}

/// 4 KiB reads at `blocks`, `depth` per read_batch (1 = plain read). Seconds.
fn backend_rand_read(dev: &dyn BlockDevice, buf: &mut [u8], blocks: &[u64], depth: usize) -> f64 {
    let t = Instant::now();
    for chunk in blocks.chunks(depth) {
        if depth == 1 {
            dev.read(chunk[0], &mut buf[..4096]).expect("bench read");
        } else {
            let mut reqs: Vec<(u64, &mut [u8])> = chunk
                .iter()
                .zip(buf.chunks_mut(4096))
                .map(|(&b, s)| (b, s))
                .collect();
            dev.read_batch(&mut reqs).expect("bench read_batch");
        }
    }
    t.elapsed().as_secs_f64()
}

/// `mb` MiB sequentially in 1 MiB requests, `depth` per batch; writes end
/// with a flush. Seconds.
fn backend_seq_batch(
    dev: &dyn BlockDevice,
    buf: &mut [u8],
    mb: u64,
    depth: usize,
    write: bool,
) -> f64 {
    let per = (MIB / dev.geometry().block_size as usize) as u64;
    let t = Instant::now();
    let mut i = 0u64;
    while i < mb {
        let n = (depth as u64).min(mb - i) as usize;
        if write {
            let reqs: Vec<WriteReq<'_>> = (0..n)
                .map(|k| WriteReq {
                    block: (i + k as u64) * per,
                    data: &buf[k * MIB..(k + 1) * MIB],
                })
                .collect();
            dev.write_batch(&reqs).expect("bench write_batch");
        } else {
            let mut reqs: Vec<(u64, &mut [u8])> = buf
                .chunks_mut(MIB)
                .take(n)
                .enumerate()
                .map(|(k, s)| ((i + k as u64) * per, s))
                .collect();
            dev.read_batch(&mut reqs).expect("bench read_batch");
        }
        i += n as u64;
    }
    if write {
        dev.flush().expect("bench flush");
    }
    t.elapsed().as_secs_f64()
}

/// The batch rows for one device (an O_DIRECT file or a raw device), each
/// against fio at the same depth on the same target. Best of `reps`.
fn batch_rows(
    label: &str,
    target: &Path,
    open: &dyn Fn() -> Box<dyn BlockDevice>,
    mb: u64,
    reps: u64,
    use_fio: bool,
) -> Vec<Row> {
    let ops = env_u64("NOTAFS_BENCH_RAND_OPS", 32768) as usize;
    let rand_mb = (ops * 4096) as u64 / MIB as u64;
    let seq_mb = mb.min(512);
    let mut big = AlignedBuf::zeroed(16 * MIB, 4096).expect("buffer");
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    let mut rows = vec![
        Row::new(&format!("{label} 4K randwrite QD64 batch")),
        Row::new(&format!("{label} 4K randwrite QD1")),
        Row::new(&format!("{label} 4K randread QD64 batch")),
        Row::new(&format!("{label} 4K randread QD1")),
        Row::new(&format!("{label} 1M seq write QD16 batch")),
        Row::new(&format!("{label} 1M seq read QD16 batch")),
    ];
    let rand_bytes = (ops * 4096) as u64;
    let seq_bytes = seq_mb * MIB as u64;
    for rep in 0..reps {
        let dev = open();
        let blocks = random_blocks(&*dev, mb, ops, 0x9E37 + rep);
        drop(dev);
        let fio_row = |row: &mut Row, rw: &str, bs: &str, depth: u32, io_mb: u64| {
            if use_fio {
                match fio_qd(target, rw, bs, depth, mb, io_mb) {
                    Ok(bw) => row.raw_best("fio", bw / 1e6),
                    Err(e) => println!("fio: {e}"),
                }
            }
        };
        contest(
            &mut rows[0],
            rep,
            rand_bytes,
            &mut |row| fio_row(row, "randwrite", "4k", 64, rand_mb),
            &mut || backend_rand_write(&*open(), &big, &blocks, 64),
        );
        contest(
            &mut rows[1],
            rep,
            rand_bytes / 4,
            &mut |row| fio_row(row, "randwrite", "4k", 1, rand_mb / 4),
            &mut || backend_rand_write(&*open(), &big, &blocks[..ops / 4], 1),
        );
        contest(
            &mut rows[2],
            rep,
            rand_bytes,
            &mut |row| fio_row(row, "randread", "4k", 64, rand_mb),
            &mut || backend_rand_read(&*open(), &mut big, &blocks, 64),
        );
        contest(
            &mut rows[3],
            rep,
            rand_bytes / 4,
            &mut |row| fio_row(row, "randread", "4k", 1, rand_mb / 4),
            &mut || backend_rand_read(&*open(), &mut big, &blocks[..ops / 4], 1),
        );
        contest(
            &mut rows[4],
            rep,
            seq_bytes,
            &mut |row| fio_row(row, "write", "1M", 16, seq_mb),
            &mut || backend_seq_batch(&*open(), &mut big, seq_mb, 16, true),
        );
        contest(
            &mut rows[5],
            rep,
            seq_bytes,
            &mut |row| fio_row(row, "read", "1M", 16, seq_mb),
            &mut || backend_seq_batch(&*open(), &mut big, seq_mb, 16, false),
        );
    }
    rows
}

/// Write `mb` MiB sequentially in 1 MiB requests, then flush. Seconds.
fn backend_write(dev: &dyn BlockDevice, buf: &[u8], mb: u64) -> f64 {
    let per = (MIB / dev.geometry().block_size as usize) as u64;
    let t = Instant::now();
    for i in 0..mb {
        dev.write(i * per, buf).expect("bench write");
    }
    dev.flush().expect("bench flush");
    t.elapsed().as_secs_f64()
}

fn backend_read(dev: &dyn BlockDevice, buf: &mut [u8], mb: u64) -> f64 {
    let per = (MIB / dev.geometry().block_size as usize) as u64;
    let t = Instant::now();
    for i in 0..mb {
        dev.read(i * per, buf).expect("bench read");
    }
    t.elapsed().as_secs_f64()
}

struct Row {
    what: String,
    backend: f64,
    raw: Vec<(String, f64)>,
}

impl Row {
    fn new(what: &str) -> Row {
        Row {
            what: what.into(),
            backend: 0.0,
            raw: Vec::new(),
        }
    }
    fn raw_best(&mut self, tool: &str, v: f64) {
        match self.raw.iter_mut().find(|(t, _)| t == tool) {
            Some((_, x)) => *x = x.max(v),
            None => self.raw.push((tool.into(), v)),
        }
    }
}

/// Loop device over `img`, detached on drop.
struct Loop(PathBuf);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// Run the raw tools and the backend for one row, in an order that
/// alternates with `rep`: whoever runs first after a mode switch (direct →
/// buffered) can pay for page-cache and writeback state left behind, so
/// each contender gets to run first and second.
fn contest(
    row: &mut Row,
    rep: u64,
    bytes: u64,
    raw: &mut dyn FnMut(&mut Row),
    backend: &mut dyn FnMut() -> f64,
) {
    let mut run_backend = |row: &mut Row| {
        let s = backend();
        row.backend = row.backend.max(mbps(bytes, s));
    };
    if rep % 2 == 0 {
        raw(row);
        run_backend(row);
    } else {
        run_backend(row);
        raw(row);
    }
}

fn main() {
    let mb = env_u64("NOTAFS_BENCH_MB", 1024);
    let reps = env_u64("NOTAFS_BENCH_REPS", 4).max(1);
    let dir = PathBuf::from(std::env::var("NOTAFS_BENCH_DIR").unwrap_or("/var/tmp".into()));
    let bytes = mb * MIB as u64;
    let img = dir.join(format!("notafs-bench-{}.img", std::process::id()));
    let img_s = img.display().to_string();
    let count = format!("count={mb}");
    let use_fio = have("fio");
    println!(
        "notafs-blockdev seq bench: {mb} MiB in 1 MiB requests, best of {reps} (alternating order), file {img_s}"
    );
    if !use_fio {
        println!("(fio not installed: dd only)");
    }

    // Allocate the file once (unmeasured) so every contender overwrites
    // allocated blocks; dd then runs with conv=notrunc to keep them.
    dd(&[
        "if=/dev/zero",
        &format!("of={img_s}"),
        "bs=1M",
        &count,
        "oflag=direct",
        "conv=fsync",
    ])
    .expect("preallocate bench file with dd");

    let buf = std::cell::RefCell::new(AlignedBuf::zeroed(MIB, 4096).expect("buffer"));
    let mut rows = vec![
        Row::new("file O_DIRECT write + fdatasync"),
        Row::new("file buffered write + fdatasync"),
        Row::new("file O_DIRECT read"),
    ];
    let direct_opts = FileOptions {
        direct: true,
        ..Default::default()
    };
    let dd_out = format!("of={img_s}");
    let dd_in = format!("if={img_s}");
    let dd_or_die = |args: &[&str]| dd(args).expect("dd");
    for rep in 0..reps {
        contest(
            &mut rows[0],
            rep,
            bytes,
            &mut |row| {
                let s = dd_or_die(&[
                    "if=/dev/zero",
                    &dd_out,
                    "bs=1M",
                    &count,
                    "oflag=direct",
                    "conv=fsync,notrunc",
                ]);
                row.raw_best("dd", mbps(bytes, s));
                if use_fio {
                    if let Ok(bw) = fio(&img, "write", mb) {
                        row.raw_best("fio", bw / 1e6);
                    }
                }
            },
            &mut || {
                let dev = FileDevice::open(&img, &direct_opts).expect("open O_DIRECT");
                backend_write(&dev, &buf.borrow(), mb)
            },
        );
        contest(
            &mut rows[1],
            rep,
            bytes,
            &mut |row| {
                let s = dd_or_die(&[
                    "if=/dev/zero",
                    &dd_out,
                    "bs=1M",
                    &count,
                    "conv=fsync,notrunc",
                ]);
                row.raw_best("dd", mbps(bytes, s));
            },
            &mut || {
                let dev = FileDevice::open(&img, &FileOptions::default()).expect("open");
                backend_write(&dev, &buf.borrow(), mb)
            },
        );
        contest(
            &mut rows[2],
            rep,
            bytes,
            &mut |row| {
                let s = dd_or_die(&[&dd_in, "of=/dev/null", "bs=1M", "iflag=direct"]);
                row.raw_best("dd", mbps(bytes, s));
                if use_fio {
                    if let Ok(bw) = fio(&img, "read", mb) {
                        row.raw_best("fio", bw / 1e6);
                    }
                }
            },
            &mut || {
                let dev = FileDevice::open(&img, &direct_opts).expect("open O_DIRECT");
                backend_read(&dev, &mut buf.borrow_mut(), mb)
            },
        );
    }

    let file_open = || -> Box<dyn BlockDevice> {
        Box::new(FileDevice::open(&img, &direct_opts).expect("open O_DIRECT"))
    };
    rows.extend(batch_rows(
        "file O_DIRECT",
        &img,
        &file_open,
        mb,
        reps,
        use_fio,
    ));

    // Raw device on a loop device over the same file.
    let attached = run(Command::new("losetup").args([
        "-f",
        "--show",
        "--sector-size",
        "4096",
        "--direct-io=on",
        &img_s,
    ]));
    match attached {
        Err(e) => println!("raw backend SKIPPED: {e}"),
        Ok(out) => {
            let lo = Loop(PathBuf::from(out.trim()));
            let lo_s = lo.0.display().to_string();
            println!(
                "raw backend on {lo_s} (--sector-size 4096 --direct-io=on over the same file)"
            );
            let (lo_out, lo_in) = (format!("of={lo_s}"), format!("if={lo_s}"));
            let mut w = Row::new("raw (loop) O_DIRECT write + fdatasync");
            let mut r = Row::new("raw (loop) O_DIRECT read");
            for rep in 0..reps {
                contest(
                    &mut w,
                    rep,
                    bytes,
                    &mut |row| {
                        let s = dd_or_die(&[
                            "if=/dev/zero",
                            &lo_out,
                            "bs=1M",
                            &count,
                            "oflag=direct",
                            "conv=fsync",
                        ]);
                        row.raw_best("dd", mbps(bytes, s));
                        if use_fio {
                            if let Ok(bw) = fio(&lo.0, "write", mb) {
                                row.raw_best("fio", bw / 1e6);
                            }
                        }
                    },
                    &mut || {
                        let dev = RawDevice::open(&lo.0, &RawOptions::default()).expect("open raw");
                        backend_write(&dev, &buf.borrow(), mb)
                    },
                );
                contest(
                    &mut r,
                    rep,
                    bytes,
                    &mut |row| {
                        let s =
                            dd_or_die(&[&lo_in, "of=/dev/null", "bs=1M", &count, "iflag=direct"]);
                        row.raw_best("dd", mbps(bytes, s));
                        if use_fio {
                            if let Ok(bw) = fio(&lo.0, "read", mb) {
                                row.raw_best("fio", bw / 1e6);
                            }
                        }
                    },
                    &mut || {
                        let dev = RawDevice::open(&lo.0, &RawOptions::default()).expect("open raw");
                        backend_read(&dev, &mut buf.borrow_mut(), mb)
                    },
                );
            }
            rows.push(w);
            rows.push(r);
            let raw_open = || -> Box<dyn BlockDevice> {
                Box::new(RawDevice::open(&lo.0, &RawOptions::default()).expect("open raw"))
            };
            rows.extend(batch_rows(
                "raw (loop)",
                &lo.0,
                &raw_open,
                mb,
                reps,
                use_fio,
            ));
        }
    }
    let _ = std::fs::remove_file(&img);

    println!();
    println!(
        "{:<42} {:>10} {:>10} {:>10} {:>14}",
        "operation", "backend", "dd", "fio", "ratio (vs best)"
    );
    for row in &rows {
        let get = |t: &str| row.raw.iter().find(|(n, _)| n == t).map(|(_, v)| *v);
        let best = row.raw.iter().map(|(_, v)| *v).fold(0.0, f64::max);
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<42} {:>10.0} {:>10} {:>10} {:>14.3}",
            row.what,
            row.backend,
            fmt(get("dd")),
            fmt(get("fio")),
            row.backend / best
        );
    }
    println!(
        "(MB/s = 10^6 bytes/s, IOPS = MB/s x 244 for 4K rows; ratio = backend / best raw tool; \
         QD rows: fio --ioengine=io_uring --iodepth=QD --direct=1; batches on the {} engine)",
        if std::env::var("NOTAFS_NO_URING").is_ok_and(|v| !v.is_empty() && v != "0") {
            "threads (preadv/pwritev)"
        } else {
            "io_uring"
        }
    );
}
