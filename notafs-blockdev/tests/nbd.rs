//! The NBD backend against real servers (qemu-nbd, nbdkit) and against a
//! scripted fake server for out-of-order replies, errors and hostile input.
//! Tests needing a server binary print "SKIPPED: <reason>" when it is absent.
mod common;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use notafs_blockdev::file::{FileDevice, FileOptions};
use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::nbd::{flags, NbdDevice, NbdOptions};
use notafs_blockdev::{open, BlockDevice, BlockError, OpenOptions, WriteReq};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

// ---------------------------------------------------------------------------
// Real servers

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A server process on a Unix socket; killed (and reaped) on drop.
struct Server {
    child: Option<Child>,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn spawn(bin: &str, args: impl FnOnce(&Path) -> Vec<String>) -> Option<Server> {
        if !have(bin) {
            println!("SKIPPED: {bin} is not installed");
            eprintln!("SKIPPED: {bin} is not installed");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("nbd.sock");
        let child = Command::new(bin)
            .args(args(&sock))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let mut s = Server {
            child: Some(child),
            sock,
            _dir: dir,
        };
        let t0 = Instant::now();
        while !s.sock.exists() || !listening(&s.sock) {
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{bin} exited at start: {st}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{bin} did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(s)
    }

    /// `qemu-nbd` serving the raw image `img`.
    fn qemu(img: &Path) -> Option<Server> {
        let img = img.display().to_string();
        Server::spawn("qemu-nbd", |sock| {
            vec![
                "-k".into(),
                sock.display().to_string(),
                "-f".into(),
                "raw".into(),
                "--persistent".into(),
                "--shared=8".into(),
                "--discard=unmap".into(),
                "--cache=none".into(),
                img,
            ]
        })
    }

    /// `nbdkit -f -U SOCK [extra...]`, e.g. `memory 1M`.
    fn nbdkit(extra: &[&str]) -> Option<Server> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Server::spawn("nbdkit", |sock| {
            let mut v = vec![
                "-f".into(),
                "--exit-with-parent".into(),
                "-U".into(),
                sock.display().to_string(),
            ];
            v.extend(extra);
            v
        })
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }

    fn connect(&self) -> NbdDevice {
        open_retry(&self.uri(), &NbdOptions::default()).expect("connect")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Unix socket is listening yet: the socket file appears when the
/// server binds, a moment before it listens (connections are refused in
/// between). Read from /proc/net/unix (flag `__SO_ACCEPTCON`); true when
/// that cannot be read.
fn listening(sock: &Path) -> bool {
    let Ok(t) = std::fs::read_to_string("/proc/net/unix") else {
        return true;
    };
    let want = sock.display().to_string();
    t.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[7] == want && f[3] == "00010000"
    })
}

/// Open `uri`, retrying for up to 5 s while the server refuses connections:
/// a server's socket file appears when it binds, a moment before it
/// listens.
fn open_retry(uri: &str, opts: &NbdOptions) -> notafs_blockdev::Result<NbdDevice> {
    let t0 = Instant::now();
    loop {
        match NbdDevice::open_uri(uri, opts) {
            Err(BlockError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused
                    && t0.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            r => return r,
        }
    }
}

/// An image of `blocks` 4 KiB blocks filled with a pattern.
fn patterned_image(dir: &Path, blocks: u64) -> PathBuf {
    let img = make_image(dir, "img", blocks * 4096);
    let f = FileDevice::open(&img, &FileOptions::default()).unwrap();
    for b in 0..blocks {
        f.write(b, &pattern(77, b, 4096)).unwrap();
    }
    f.flush().unwrap();
    img
}

// ---------------------------------------------------------------------------
// The model test (same idea as tests/backends.rs)

#[derive(Clone, Debug)]
enum Op {
    Write { block: u16, count: u8, seed: u8 },
    Read { block: u16, count: u8 },
    WriteZeroes { block: u16, count: u8 },
    Discard { block: u16, count: u8 },
    Batch { writes: Vec<(u16, u8, u8)> },
    ReadBatch { reads: Vec<(u16, u8)> },
    Misaligned { block: u16, extra: u8 },
    Flush,
    Barrier,
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        match u8::arbitrary(g) % 20 {
            0..=5 => Op::Write {
                block: u16::arbitrary(g),
                count: u8::arbitrary(g),
                seed: u8::arbitrary(g),
            },
            6..=9 => Op::Read {
                block: u16::arbitrary(g),
                count: u8::arbitrary(g),
            },
            10..=11 => Op::WriteZeroes {
                block: u16::arbitrary(g),
                count: u8::arbitrary(g),
            },
            12..=13 => Op::Discard {
                block: u16::arbitrary(g),
                count: u8::arbitrary(g),
            },
            14..=15 => Op::Batch {
                writes: (0..1 + usize::arbitrary(g) % 12)
                    .map(|_| (u16::arbitrary(g), u8::arbitrary(g), u8::arbitrary(g)))
                    .collect(),
            },
            16 => Op::ReadBatch {
                reads: (0..1 + usize::arbitrary(g) % 12)
                    .map(|_| (u16::arbitrary(g), u8::arbitrary(g)))
                    .collect(),
            },
            17 => Op::Misaligned {
                block: u16::arbitrary(g),
                extra: u8::arbitrary(g),
            },
            18 => Op::Barrier,
            _ => Op::Flush,
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        match self.clone() {
            Op::Batch { writes } => Box::new(writes.shrink().map(|writes| Op::Batch { writes })),
            _ => quickcheck::empty_shrinker(),
        }
    }
}

/// 1 in 16 ranges goes past the end on purpose.
fn range(n: u64, block: u16, count: u8) -> (u64, u64) {
    let count = 1 + (count as u64 % 8);
    let block = if block % 16 == 15 {
        n - 1 + (block as u64 % 3)
    } else {
        block as u64 % n
    };
    (block, count)
}

fn same(
    what: &str,
    a: &notafs_blockdev::Result<()>,
    b: &notafs_blockdev::Result<()>,
) -> Result<(), String> {
    match (a, b) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(x), Err(y)) if std::mem::discriminant(x) == std::mem::discriminant(y) => Ok(()),
        _ => Err(format!("{what}: memory {a:?} vs nbd {b:?}")),
    }
}

fn check_against_memory(dev: &dyn BlockDevice, ops: &[Op]) -> Result<(), String> {
    let geo = dev.geometry();
    let bs = geo.block_size as usize;
    let n = geo.block_count;
    let mut init = vec![0u8; n as usize * bs];
    dev.read(0, &mut init)
        .map_err(|e| format!("initial read: {e}"))?;
    let mem = MemoryDevice::from_vec(geo.block_size, init);
    let mut known = vec![true; n as usize];
    let compare = |block: u64, a: &[u8], b: &[u8], known: &[bool]| -> Result<(), String> {
        for (i, (x, y)) in a.chunks(bs).zip(b.chunks(bs)).enumerate() {
            let blk = block + i as u64;
            if known[blk as usize] && x != y {
                return Err(format!("block {blk} differs from the memory device"));
            }
        }
        Ok(())
    };
    let data_for = |seed: u8, b: u64, c: u64| -> Vec<u8> {
        (0..c)
            .flat_map(|k| pattern(seed as u64, b + k, bs))
            .collect()
    };
    for (i, op) in ops.iter().enumerate() {
        let what = format!("op {i} {op:?}");
        match op {
            Op::Write { block, count, seed } => {
                let (b, c) = range(n, *block, *count);
                let d = data_for(*seed, b, c);
                let r1 = mem.write(b, &d);
                same(&what, &r1, &dev.write(b, &d))?;
                if r1.is_ok() {
                    known[b as usize..(b + c) as usize].fill(true);
                }
            }
            Op::Read { block, count } => {
                let (b, c) = range(n, *block, *count);
                let mut x = vec![0u8; c as usize * bs];
                let mut y = vec![0u8; c as usize * bs];
                let r1 = mem.read(b, &mut x);
                same(&what, &r1, &dev.read(b, &mut y))?;
                if r1.is_ok() {
                    compare(b, &x, &y, &known).map_err(|e| format!("{what}: {e}"))?;
                }
            }
            Op::WriteZeroes { block, count } => {
                let (b, c) = range(n, *block, *count);
                let r1 = mem.write_zeroes(b, c);
                same(&what, &r1, &dev.write_zeroes(b, c))?;
                if r1.is_ok() {
                    known[b as usize..(b + c) as usize].fill(true);
                }
            }
            Op::Discard { block, count } => {
                let (b, c) = range(n, *block, *count);
                let r1 = mem.discard(b, c);
                same(&what, &r1, &dev.discard(b, c))?;
                if r1.is_ok() {
                    known[b as usize..(b + c) as usize].fill(false);
                }
            }
            Op::Batch { writes } => {
                let bufs: Vec<(u64, Vec<u8>)> = writes
                    .iter()
                    .map(|&(block, count, seed)| {
                        let (b, c) = range(n, block, count);
                        (b, data_for(seed, b, c))
                    })
                    .collect();
                let overlap = bufs.iter().enumerate().any(|(i, (b1, d1))| {
                    bufs.iter().skip(i + 1).any(|(b2, d2)| {
                        let (e1, e2) = (b1 + (d1.len() / bs) as u64, b2 + (d2.len() / bs) as u64);
                        *b1 < e2 && *b2 < e1
                    })
                });
                if overlap {
                    continue;
                }
                let reqs: Vec<WriteReq<'_>> = bufs
                    .iter()
                    .map(|(b, d)| WriteReq { block: *b, data: d })
                    .collect();
                let r1 = mem.write_batch(&reqs);
                same(&what, &r1, &dev.write_batch(&reqs))?;
                for (b, d) in &bufs {
                    let c = (d.len() / bs) as u64;
                    if b + c > n {
                        break;
                    }
                    known[*b as usize..(b + c) as usize].fill(true);
                }
            }
            Op::ReadBatch { reads } => {
                let rs: Vec<(u64, u64)> = reads.iter().map(|&(b, c)| range(n, b, c)).collect();
                let mut xs: Vec<Vec<u8>> =
                    rs.iter().map(|r| vec![0u8; r.1 as usize * bs]).collect();
                let mut ys = xs.clone();
                let mut xa: Vec<(u64, &mut [u8])> = rs
                    .iter()
                    .zip(xs.iter_mut())
                    .map(|(r, x)| (r.0, &mut x[..]))
                    .collect();
                let mut ya: Vec<(u64, &mut [u8])> = rs
                    .iter()
                    .zip(ys.iter_mut())
                    .map(|(r, y)| (r.0, &mut y[..]))
                    .collect();
                let r1 = mem.read_batch(&mut xa);
                same(&what, &r1, &dev.read_batch(&mut ya))?;
                // Compare the reads before the first refused one.
                for (k, (b, c)) in rs.iter().enumerate() {
                    if b + c > n {
                        break;
                    }
                    compare(*b, &xs[k], &ys[k], &known).map_err(|e| format!("{what}: {e}"))?;
                }
            }
            Op::Misaligned { block, extra } => {
                let (b, _) = range(n, *block, 1);
                let len = bs + 1 + (*extra as usize % (bs - 1));
                if dev.write(b, &vec![0xEE; len]).is_ok() {
                    return Err(format!("{what}: misaligned write accepted"));
                }
                if dev.read(b, &mut vec![0; len]).is_ok() {
                    return Err(format!("{what}: misaligned read accepted"));
                }
            }
            Op::Flush => dev.flush().map_err(|e| format!("{what}: {e}"))?,
            Op::Barrier => dev.barrier().map_err(|e| format!("{what}: {e}"))?,
        }
    }
    let mut x = vec![0u8; n as usize * bs];
    let mut y = vec![0u8; n as usize * bs];
    mem.read(0, &mut x).map_err(|e| e.to_string())?;
    dev.read(0, &mut y).map_err(|e| e.to_string())?;
    compare(0, &x, &y, &known).map_err(|e| format!("final read: {e}"))
}

thread_local! {
    static DUT: RefCell<Option<Arc<dyn BlockDevice>>> = const { RefCell::new(None) };
}

fn prop(ops: Vec<Op>) -> TestResult {
    let dev = DUT.with(|d| d.borrow().clone()).expect("device under test");
    match check_against_memory(&*dev, &ops) {
        Ok(()) => TestResult::passed(),
        Err(e) => TestResult::error(format!("{}: {e}", dev.describe())),
    }
}

fn quickcheck_device(dev: Arc<dyn BlockDevice>, tests: u64) {
    DUT.with(|d| *d.borrow_mut() = Some(dev));
    QuickCheck::new()
        .tests(tests)
        .rng(Gen::new(40))
        .quickcheck(prop as fn(Vec<Op>) -> TestResult);
    DUT.with(|d| *d.borrow_mut() = None);
}

#[test]
fn model_qemu_nbd() {
    let dir = disk_tempdir();
    let img = patterned_image(dir.path(), 70);
    let Some(srv) = Server::qemu(&img) else {
        return;
    };
    let dev = srv.connect();
    let geo = dev.geometry();
    assert_eq!((geo.block_size, geo.block_count), (4096, 70));
    let f = dev.export_info().flags;
    for fl in [
        flags::SEND_FLUSH,
        flags::SEND_TRIM,
        flags::SEND_WRITE_ZEROES,
    ] {
        assert_ne!(f & fl, 0, "qemu-nbd flags {f:#x} lack {fl:#x}");
    }
    assert!(geo.caps.discard && geo.caps.write_zeroes && !geo.caps.native_barrier);
    assert_eq!(geo.atomic_unit, 0);
    quickcheck_device(Arc::new(dev), 120);
}

#[test]
fn model_nbdkit_memory() {
    let Some(srv) = Server::nbdkit(&["memory", "286720"]) else {
        return;
    };
    let dev = srv.connect();
    assert_eq!(dev.geometry().block_count, 70);
    assert_ne!(dev.export_info().flags & flags::CAN_MULTI_CONN, 0);
    quickcheck_device(Arc::new(dev), 120);
}

/// No WRITE_ZEROES advertised → emulated with writes; caps say so.
#[test]
fn model_nbdkit_without_write_zeroes() {
    let Some(srv) = Server::nbdkit(&["--filter=nozero", "memory", "286720"]) else {
        return;
    };
    let dev = srv.connect();
    assert_eq!(dev.export_info().flags & flags::SEND_WRITE_ZEROES, 0);
    assert!(!dev.geometry().caps.write_zeroes);
    dev.write(3, &[0xAB; 4096 * 4]).unwrap();
    dev.write_zeroes(3, 4).unwrap();
    let mut b = vec![1u8; 4096 * 4];
    dev.read(3, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    quickcheck_device(Arc::new(dev), 60);
}

/// A 64 KiB maximum request size: large transfers must be split (the
/// server refuses anything larger with EINVAL).
#[test]
fn large_requests_are_split_at_the_server_maximum() {
    let Some(srv) = Server::nbdkit(&[
        "--filter=blocksize-policy",
        "memory",
        "16M",
        "blocksize-maximum=65536",
        "blocksize-preferred=8192",
        "blocksize-error-policy=error",
    ]) else {
        return;
    };
    let dev = srv.connect();
    assert_eq!(dev.export_info().block_size.map(|b| b.2), Some(65536));
    assert_eq!(dev.max_request(), 65536);
    assert_eq!(dev.geometry().block_size, 8192);
    let data: Vec<u8> = (0..512).flat_map(|b| pattern(5, b, 8192)).collect(); // 4 MiB
    dev.write(100, &data).unwrap();
    dev.write_zeroes(1000, 300).unwrap();
    dev.discard(1500, 200).unwrap();
    let mut back = vec![0u8; data.len()];
    dev.read(100, &mut back).unwrap();
    assert!(back == data, "4 MiB read back differs");
    let mut z = vec![1u8; 300 * 8192];
    dev.read(1000, &mut z).unwrap();
    assert!(z.iter().all(|&x| x == 0));
    // blocksize-error-policy=error makes nbdkit refuse (EINVAL) any request
    // over 64 KiB, so the transfers above only pass when split.
    assert!(data.len() > 65536);
}

// ---------------------------------------------------------------------------
// Specific behaviour on qemu-nbd

#[test]
fn flush_trim_write_zeroes_reach_the_image() {
    let dir = disk_tempdir();
    let img = patterned_image(dir.path(), 256);
    let Some(srv) = Server::qemu(&img) else {
        return;
    };
    let dev = srv.connect();
    dev.write(10, &pattern(1, 10, 4096)).unwrap();
    dev.write_zeroes(20, 30).unwrap();
    dev.discard(100, 50).unwrap();
    dev.flush().unwrap();
    dev.barrier().unwrap();
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(bytes[10 * 4096..11 * 4096], pattern(1, 10, 4096)[..]);
    assert!(bytes[20 * 4096..50 * 4096].iter().all(|&b| b == 0));
    assert_eq!(bytes[50 * 4096..51 * 4096], pattern(77, 50, 4096)[..]);
    assert_eq!(bytes[19 * 4096..20 * 4096], pattern(77, 19, 4096)[..]);
    // --discard=unmap on a raw file punches holes: the range reads zero.
    assert!(bytes[100 * 4096..150 * 4096].iter().all(|&b| b == 0));
}

#[test]
fn batches_with_many_requests_in_flight() {
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 64 << 20);
    let Some(srv) = Server::qemu(&img) else {
        return;
    };
    let dev = Arc::new(srv.connect());
    // 1000 scattered single-block writes + 20 of 1 MiB, one batch.
    let mut bufs: Vec<(u64, Vec<u8>)> = (0..1000u64)
        .map(|i| ((i * 7919) % 8000, pattern(3, (i * 7919) % 8000, 4096)))
        .collect();
    bufs.sort_by_key(|b| b.0);
    bufs.dedup_by_key(|b| b.0);
    for k in 0..20u64 {
        let b = 8192 + k * 256;
        bufs.push((b, (0..256).flat_map(|j| pattern(4, b + j, 4096)).collect()));
    }
    let reqs: Vec<WriteReq<'_>> = bufs
        .iter()
        .map(|(b, d)| WriteReq { block: *b, data: d })
        .collect();
    dev.write_batch(&reqs).unwrap();
    let mut outs: Vec<Vec<u8>> = bufs.iter().map(|(_, d)| vec![0u8; d.len()]).collect();
    let mut rb: Vec<(u64, &mut [u8])> = bufs
        .iter()
        .zip(outs.iter_mut())
        .map(|((b, _), o)| (*b, &mut o[..]))
        .collect();
    dev.read_batch(&mut rb).unwrap();
    for ((b, d), o) in bufs.iter().zip(&outs) {
        assert!(d == o, "block {b} read back differs");
    }
    // Several threads at once on one device.
    let hs: Vec<_> = (0..4u64)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let b = 12000 + t * 1000 + i;
                    dev.write(b, &pattern(t, b, 4096)).unwrap();
                    let mut r = vec![0u8; 4096];
                    dev.read(b, &mut r).unwrap();
                    assert_eq!(r, pattern(t, b, 4096));
                    if i % 50 == 0 {
                        dev.flush().unwrap();
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn bad_requests_fail_without_touching_anything() {
    let dir = disk_tempdir();
    let img = patterned_image(dir.path(), 64);
    let Some(srv) = Server::qemu(&img) else {
        return;
    };
    let dev = srv.connect();
    let mut b = vec![0u8; 4096];
    assert!(matches!(
        dev.read(0, &mut b[..100]),
        Err(BlockError::Misaligned { .. })
    ));
    assert!(matches!(
        dev.write(0, &b[..4095]),
        Err(BlockError::Misaligned { .. })
    ));
    assert!(matches!(dev.write(0, &[]), Err(BlockError::Empty)));
    assert!(matches!(
        dev.read(64, &mut b),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.write(63, &[0u8; 8192]),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.write(u64::MAX, &b),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.write_zeroes(60, 5),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.discard(u64::MAX, 2),
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(dev.write_zeroes(0, 0), Err(BlockError::Empty)));
    let huge = vec![0u8; (1 << 30) + 4096]; // calloc: not touched
    assert!(matches!(
        dev.write(0, &huge),
        Err(BlockError::TooLarge { .. })
    ));
    drop(huge);
    // A batch stops at the bad write; the one before it is done.
    let good = pattern(9, 1, 4096);
    let r = dev.write_batch(&[
        WriteReq {
            block: 1,
            data: &good,
        },
        WriteReq {
            block: 64,
            data: &good,
        },
        WriteReq {
            block: 2,
            data: &good,
        },
    ]);
    assert!(matches!(r, Err(BlockError::OutOfRange { .. })), "{r:?}");
    dev.read(1, &mut b).unwrap();
    assert_eq!(b, good);
    dev.read(2, &mut b).unwrap();
    assert_eq!(
        b,
        pattern(77, 2, 4096),
        "write after the bad one was issued"
    );
    for blk in [0, 3, 63] {
        dev.read(blk, &mut b).unwrap();
        assert_eq!(b, pattern(77, blk, 4096), "block {blk} changed");
    }
    assert!(!dev.is_dead());
    // Read-only handle.
    let ro = NbdDevice::open_uri(
        &srv.uri(),
        &NbdOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(ro.write(0, &b), Err(BlockError::Invalid(_))));
    assert!(ro.write_zeroes(0, 1).is_err());
    assert!(ro.discard(0, 1).is_err());
    ro.read(0, &mut b).unwrap();
    ro.flush().unwrap();
}

#[test]
fn open_routes_nbd_uris() {
    let dir = disk_tempdir();
    let img = patterned_image(dir.path(), 32);
    let Some(srv) = Server::qemu(&img) else {
        return;
    };
    let uri = srv.uri();
    let d = open(&uri, &OpenOptions::default()).unwrap();
    assert_eq!(d.geometry().block_count, 32);
    assert!(d.describe().starts_with("nbd+unix:///"), "{}", d.describe());
    let mut b = vec![0u8; 4096];
    d.read(5, &mut b).unwrap();
    assert_eq!(b, pattern(77, 5, 4096));
    drop(d);
    let d = open(
        &uri,
        &OpenOptions {
            block_size: Some(512),
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        (d.geometry().block_size, d.geometry().block_count),
        (512, 256)
    );
    assert!(d.write(0, &[0u8; 512]).is_err());
    // Nothing listening / junk URIs.
    let e = open(
        &format!("nbd+unix:///?socket={}/nope.sock", dir.path().display()),
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert!(e.is_io(), "{e}");
    for bad in ["nbd+unix:///x", "nbd://", "nbd://h:0/"] {
        assert!(
            matches!(
                open(bad, &OpenOptions::default()),
                Err(BlockError::Invalid(_))
            ),
            "{bad}"
        );
    }
    // An export that does not exist is refused by the server (nbdkit names
    // exports; qemu-nbd's is "").
    let e = open(
        &format!("nbd+unix:///nosuch?socket={}", srv.sock.display()),
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(e, BlockError::Invalid(_)), "{e}");
}

/// A dead server gives errors promptly, on this and every later call.
#[test]
fn server_death_is_an_error_not_a_hang() {
    let dir = disk_tempdir();
    let img = patterned_image(dir.path(), 64);
    let Some(mut srv) = Server::qemu(&img) else {
        return;
    };
    let dev = srv.connect();
    let mut b = vec![0u8; 4096];
    dev.read(0, &mut b).unwrap();
    srv.kill();
    let t0 = Instant::now();
    let e = dev.read(1, &mut b).expect_err("read after the server died");
    assert!(e.is_io(), "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(dev.is_dead());
    assert!(dev.write(0, &b).unwrap_err().is_io());
    assert!(dev.flush().unwrap_err().is_io());
    // Even after a restart on the same socket: no silent reconnect.
    let srv2 = Server::qemu(&img);
    if srv2.is_some() {
        assert!(dev.read(0, &mut b).is_err());
    }
}

/// nbdkit's error filter: server errors carry their errno and leave the
/// connection usable.
#[test]
fn server_errors_map_to_errno() {
    let Some(srv) = Server::nbdkit(&[
        "--filter=error",
        "memory",
        "1M",
        "error-pwrite=ENOSPC",
        "error-pwrite-rate=100%",
        "error-trim=EIO",
        "error-trim-rate=100%",
    ]) else {
        return;
    };
    let dev = srv.connect();
    let e = dev.write(0, &[1u8; 4096]).unwrap_err();
    match &e {
        BlockError::Io { source, .. } => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{e}")
        }
        _ => panic!("{e}"),
    }
    let e = dev.discard(0, 1).unwrap_err();
    match &e {
        BlockError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::EIO), "{e}"),
        _ => panic!("{e}"),
    }
    let mut b = vec![1u8; 8192];
    dev.read(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    dev.flush().unwrap();
    assert!(!dev.is_dead());
}

/// notafs formatted, filled, committed and checked over NBD, then reopened
/// through a fresh connection.
#[test]
fn notafs_on_qemu_nbd() {
    use notafs_core::check::{check, CheckOptions};
    use notafs_core::{FormatOptions, Fs};
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 64 << 20);
    let Some(srv) = Server::qemu(&img) else {
        return;
    };
    let data: Vec<u8> = (0..768).flat_map(|b| pattern(6, b, 4096)).collect(); // 3 MiB
    {
        let dev: Arc<dyn BlockDevice> = Arc::new(srv.connect());
        let fs = Fs::format(dev, &FormatOptions::default()).unwrap();
        let f = fs.create("big.bin").unwrap();
        f.write_at(0, &data).unwrap();
        fs.create("small.txt")
            .unwrap()
            .write_at(0, b"over nbd")
            .unwrap();
        fs.commit().unwrap();
        f.write_at(100, b"second generation").unwrap();
        fs.commit().unwrap();
    }
    let dev: Arc<dyn BlockDevice> = Arc::new(srv.connect());
    let report = check(
        dev.clone(),
        &CheckOptions {
            verify_data: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let fs = Fs::open(dev, &notafs_core::OpenOptions::default()).unwrap();
    let f = fs.open_file("big.bin").unwrap();
    assert_eq!(f.len().unwrap(), data.len() as u64);
    let mut back = vec![0u8; data.len()];
    assert_eq!(f.read_at(0, &mut back).unwrap(), data.len());
    let mut want = data.clone();
    want[100..117].copy_from_slice(b"second generation");
    assert!(back == want, "file content differs after reopen");
    let mut s = [0u8; 8];
    fs.open_file("small.txt")
        .unwrap()
        .read_at(0, &mut s)
        .unwrap();
    assert_eq!(&s, b"over nbd");
}

// ---------------------------------------------------------------------------
// A scripted fake server

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY: u64 = 0x0003_e889_0455_65a9;
const SIMPLE: u32 = 0x6744_6698;

fn rd<const N: usize>(s: &mut UnixStream) -> [u8; N] {
    let mut b = [0u8; N];
    s.read_exact(&mut b).unwrap();
    b
}

fn opt_reply(s: &mut UnixStream, opt: u32, typ: u32, data: &[u8]) {
    let mut m = Vec::new();
    m.extend_from_slice(&OPT_REPLY.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&typ.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// Server side of the handshake: fixed newstyle, answer NBD_OPT_GO with
/// `size` and `tflags`; structured replies refused. Returns the export
/// name asked for.
fn serve_handshake(s: &mut UnixStream, size: u64, tflags: u16) -> String {
    serve_handshake_sr(s, size, tflags, false)
}

/// Read the client's NBD_OPT_STRUCTURED_REPLY and refuse it.
fn refuse_structured(s: &mut UnixStream) {
    let h = rd::<16>(s);
    assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), 8);
    assert_eq!(u32::from_be_bytes(h[12..16].try_into().unwrap()), 0);
    opt_reply(s, 8, (1 << 31) + 1, &[]);
}

/// As `serve_handshake`, accepting structured replies if `structured`.
fn serve_handshake_sr(s: &mut UnixStream, size: u64, tflags: u16, structured: bool) -> String {
    s.write_all(&NBDMAGIC.to_be_bytes()).unwrap();
    s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
    s.write_all(&3u16.to_be_bytes()).unwrap();
    let cflags = u32::from_be_bytes(rd::<4>(s));
    assert_eq!(cflags, 3);
    let h = rd::<16>(s);
    assert_eq!(
        u32::from_be_bytes(h[8..12].try_into().unwrap()),
        8,
        "expected NBD_OPT_STRUCTURED_REPLY"
    );
    if structured {
        opt_reply(s, 8, 1, &[]);
    } else {
        opt_reply(s, 8, (1 << 31) + 1, &[]);
    }
    assert_eq!(u64::from_be_bytes(rd::<8>(s)), IHAVEOPT);
    let opt = u32::from_be_bytes(rd::<4>(s));
    assert_eq!(opt, 7, "expected NBD_OPT_GO");
    let len = u32::from_be_bytes(rd::<4>(s)) as usize;
    let mut d = vec![0u8; len];
    s.read_exact(&mut d).unwrap();
    let nl = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
    let name = String::from_utf8(d[4..4 + nl].to_vec()).unwrap();
    let mut info = vec![0u8, 0];
    info.extend_from_slice(&size.to_be_bytes());
    info.extend_from_slice(&tflags.to_be_bytes());
    opt_reply(s, 7, 3, &info);
    opt_reply(s, 7, 1, &[]);
    name
}

struct Req {
    cmd: u16,
    flags: u16,
    cookie: u64,
    off: u64,
    len: u32,
    data: Vec<u8>,
}

/// Read one request, or None on EOF / timeout.
fn read_req(s: &mut UnixStream) -> Option<Req> {
    let mut h = [0u8; 28];
    if s.read_exact(&mut h).is_err() {
        return None;
    }
    assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), 0x2560_9513);
    let flags = u16::from_be_bytes(h[4..6].try_into().unwrap());
    let cmd = u16::from_be_bytes(h[6..8].try_into().unwrap());
    let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
    let off = u64::from_be_bytes(h[16..24].try_into().unwrap());
    let len = u32::from_be_bytes(h[24..28].try_into().unwrap());
    let mut data = Vec::new();
    if cmd == 1 {
        data = vec![0u8; len as usize];
        let t = s.read_timeout().unwrap();
        s.set_read_timeout(None).unwrap();
        s.read_exact(&mut data).unwrap();
        s.set_read_timeout(t).unwrap();
    }
    Some(Req {
        cmd,
        flags,
        cookie,
        off,
        len,
        data,
    })
}

fn simple_reply(s: &mut UnixStream, err: u32, cookie: u64, data: &[u8]) {
    let mut m = Vec::new();
    m.extend_from_slice(&SIMPLE.to_be_bytes());
    m.extend_from_slice(&err.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// A fake server accepting one connection and running `f` on it.
struct Fake {
    sock: PathBuf,
    _dir: tempfile::TempDir,
    handle: Option<JoinHandle<()>>,
}

impl Fake {
    fn start(f: impl FnOnce(UnixStream) + Send + 'static) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fake.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let handle = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            f(s)
        });
        Fake {
            sock,
            _dir: dir,
            handle: Some(handle),
        }
    }
    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }
    fn join(mut self) {
        self.handle.take().unwrap().join().unwrap();
    }
}

fn opts_fast() -> NbdOptions {
    NbdOptions {
        connect_timeout: Duration::from_secs(2),
        io_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    }
}

/// A memory-backed fake server that gathers requests until the client
/// pauses, then answers them in *reverse* order.
#[test]
fn replies_out_of_order_are_matched_by_cookie() {
    const SIZE: u64 = 1 << 20;
    let fake = Fake::start(|mut s| {
        serve_handshake(&mut s, SIZE, 1 | 4 | 32 | 64);
        let mut mem = vec![0u8; SIZE as usize];
        let mut reversed = 0;
        loop {
            let mut batch = Vec::new();
            s.set_read_timeout(None).unwrap();
            match read_req(&mut s) {
                Some(r) => batch.push(r),
                None => break,
            }
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            while let Some(r) = read_req(&mut s) {
                if r.cmd == 2 {
                    break;
                }
                batch.push(r);
            }
            if batch.len() > 1 {
                reversed += 1;
            }
            for r in batch.into_iter().rev() {
                let (o, l) = (r.off as usize, r.len as usize);
                match r.cmd {
                    0 => simple_reply(&mut s, 0, r.cookie, &mem[o..o + l]),
                    1 => {
                        mem[o..o + l].copy_from_slice(&r.data);
                        simple_reply(&mut s, 0, r.cookie, &[]);
                    }
                    2 => return,
                    6 | 4 => {
                        mem[o..o + l].fill(0);
                        simple_reply(&mut s, 0, r.cookie, &[]);
                    }
                    _ => simple_reply(&mut s, 0, r.cookie, &[]),
                }
            }
        }
        assert!(reversed > 0, "no batch arrived with several requests");
    });
    let dev = NbdDevice::open_uri(&fake.uri(), &opts_fast()).unwrap();
    let bufs: Vec<(u64, Vec<u8>)> = (0..40u64)
        .map(|i| (i * 6, pattern(8, i * 6, 4096)))
        .collect();
    let reqs: Vec<WriteReq<'_>> = bufs
        .iter()
        .map(|(b, d)| WriteReq { block: *b, data: d })
        .collect();
    dev.write_batch(&reqs).unwrap();
    let mut outs = vec![vec![0u8; 4096]; bufs.len()];
    let mut rb: Vec<(u64, &mut [u8])> = bufs
        .iter()
        .zip(outs.iter_mut())
        .map(|((b, _), o)| (*b, &mut o[..]))
        .collect();
    dev.read_batch(&mut rb).unwrap();
    for ((b, d), o) in bufs.iter().zip(&outs) {
        assert!(d == o, "block {b}: reply data went to the wrong request");
    }
    dev.flush().unwrap();
    drop(dev);
    fake.join();
}

#[test]
fn error_reply_keeps_the_connection() {
    let fake = Fake::start(|mut s| {
        serve_handshake(&mut s, 1 << 20, 1 | 4);
        while let Some(r) = read_req(&mut s) {
            match r.cmd {
                // EIO: a failed read's simple reply carries no payload
                // (as qemu-nbd and nbdkit send it).
                0 => simple_reply(&mut s, 5, r.cookie, &[]),
                1 => simple_reply(&mut s, 28, r.cookie, &[]), // ENOSPC
                2 => return,
                _ => simple_reply(&mut s, 0, r.cookie, &[]),
            }
        }
    });
    let dev = NbdDevice::open_uri(&fake.uri(), &opts_fast()).unwrap();
    let mut b = vec![0u8; 8192];
    let e = dev.read(0, &mut b).unwrap_err();
    assert!(
        matches!(&e, BlockError::Io { source, .. } if source.raw_os_error() == Some(libc::EIO)),
        "{e}"
    );
    let e = dev.write(0, &b).unwrap_err();
    assert!(
        matches!(&e, BlockError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
        "{e}"
    );
    dev.flush().unwrap();
    assert!(!dev.is_dead());
    // WRITE_ZEROES not advertised → emulated as writes → ENOSPC too.
    assert!(dev.write_zeroes(0, 1).is_err());
    // TRIM not advertised → a no-op.
    dev.discard(0, 1).unwrap();
    drop(dev);
    fake.join();
}

/// Hostile or broken servers: errors, no hang, no huge allocation.
#[test]
fn hostile_servers_are_refused() {
    fn expect_open_err(f: impl FnOnce(UnixStream) + Send + 'static) -> BlockError {
        let fake = Fake::start(f);
        let t0 = Instant::now();
        let r = NbdDevice::open_uri(&fake.uri(), &opts_fast());
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
        let e = r.err().expect("connect to a hostile server succeeded");
        fake.join();
        e
    }
    // Silent server: handshake timeout.
    let e = expect_open_err(|s| {
        std::thread::sleep(Duration::from_secs(4));
        drop(s)
    });
    assert!(e.to_string().contains("timed out"), "{e}");
    // Not NBD.
    let e = expect_open_err(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    assert!(matches!(e, BlockError::Invalid(_)), "{e}");
    // Oldstyle.
    let e = expect_open_err(|mut s| {
        let _ = s.write_all(&NBDMAGIC.to_be_bytes());
        let _ = s.write_all(&0x0000_4202_8186_1253_u64.to_be_bytes());
    });
    assert!(e.to_string().contains("oldstyle"), "{e}");
    // An option reply claiming 3 GiB.
    let e = expect_open_err(|mut s| {
        s.write_all(&NBDMAGIC.to_be_bytes()).unwrap();
        s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
        s.write_all(&1u16.to_be_bytes()).unwrap();
        let _ = rd::<4>(&mut s);
        refuse_structured(&mut s);
        let mut m = Vec::new();
        m.extend_from_slice(&OPT_REPLY.to_be_bytes());
        m.extend_from_slice(&7u32.to_be_bytes());
        m.extend_from_slice(&3u32.to_be_bytes());
        m.extend_from_slice(&(3u32 << 30).to_be_bytes());
        let _ = s.write_all(&m);
        std::thread::sleep(Duration::from_millis(200));
    });
    assert!(e.to_string().contains("option reply of"), "{e}");
    // Unknown export.
    let e = expect_open_err(|mut s| {
        s.write_all(&NBDMAGIC.to_be_bytes()).unwrap();
        s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
        s.write_all(&1u16.to_be_bytes()).unwrap();
        let _ = rd::<4>(&mut s);
        refuse_structured(&mut s);
        let _ = rd::<16>(&mut s);
        let mut d = vec![0u8; 8];
        s.read_exact(&mut d).unwrap();
        opt_reply(&mut s, 7, (1 << 31) + 6, b"no such export");
        let _ = s.read(&mut [0u8; 64]);
    });
    assert!(e.to_string().contains("no such export"), "{e}");
    // ACK without NBD_INFO_EXPORT.
    let e = expect_open_err(|mut s| {
        s.write_all(&NBDMAGIC.to_be_bytes()).unwrap();
        s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
        s.write_all(&1u16.to_be_bytes()).unwrap();
        let _ = rd::<4>(&mut s);
        refuse_structured(&mut s);
        let _ = rd::<16>(&mut s);
        let mut d = vec![0u8; 8];
        s.read_exact(&mut d).unwrap();
        opt_reply(&mut s, 7, 1, &[]);
    });
    assert!(e.to_string().contains("NBD_INFO_EXPORT"), "{e}");

    // In transmission: a reply for a cookie never sent, a structured reply,
    // and no reply at all. Each ends the connection; later calls fail too.
    type Bad = fn(&mut UnixStream, &Req);
    let cases: [(Bad, &str); 3] = [
        (
            |s, r| simple_reply(s, 0, r.cookie ^ 0xdead, &[]),
            "unknown handle",
        ),
        (
            |s, r| {
                let mut m = 0x668e_33efu32.to_be_bytes().to_vec();
                m.extend_from_slice(&[0, 1, 0, 1]);
                m.extend_from_slice(&r.cookie.to_be_bytes());
                m.extend_from_slice(&u32::MAX.to_be_bytes());
                s.write_all(&m).unwrap();
            },
            "structured",
        ),
        (
            |_, _| std::thread::sleep(Duration::from_secs(4)),
            "timed out",
        ),
    ];
    for (bad, msg) in cases {
        let fake = Fake::start(move |mut s| {
            serve_handshake(&mut s, 1 << 20, 1 | 4);
            if let Some(r) = read_req(&mut s) {
                bad(&mut s, &r);
            }
            let _ = read_req(&mut s);
        });
        let dev = NbdDevice::open_uri(&fake.uri(), &opts_fast()).unwrap();
        let t0 = Instant::now();
        let mut b = vec![0u8; 4096];
        let e = dev.read(0, &mut b).unwrap_err();
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "took {:?}",
            t0.elapsed()
        );
        assert!(e.is_io() && e.to_string().contains(msg), "{msg}: {e}");
        assert!(dev.is_dead());
        let e2 = dev.read(0, &mut b).unwrap_err();
        assert!(e2.to_string().contains("reopen"), "{e2}");
        drop(dev);
        fake.join();
    }
}

/// Servers without NBD_OPT_GO: fall back to NBD_OPT_EXPORT_NAME.
#[test]
fn export_name_fallback() {
    let fake = Fake::start(|mut s| {
        s.write_all(&NBDMAGIC.to_be_bytes()).unwrap();
        s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
        s.write_all(&1u16.to_be_bytes()).unwrap(); // fixed, zeroes sent
        assert_eq!(u32::from_be_bytes(rd::<4>(&mut s)), 1);
        refuse_structured(&mut s);
        let h = rd::<16>(&mut s);
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize;
        let mut d = vec![0u8; len];
        s.read_exact(&mut d).unwrap();
        opt_reply(&mut s, 7, (1 << 31) + 1, &[]);
        let h = rd::<16>(&mut s);
        assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), 1);
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize;
        let mut d = vec![0u8; len];
        s.read_exact(&mut d).unwrap();
        assert_eq!(d, b"");
        s.write_all(&(1u64 << 20).to_be_bytes()).unwrap();
        s.write_all(&(1u16 | 2).to_be_bytes()).unwrap(); // read-only
        s.write_all(&[0u8; 124]).unwrap();
        while let Some(r) = read_req(&mut s) {
            if r.cmd == 2 {
                return;
            }
            simple_reply(&mut s, 0, r.cookie, &vec![7u8; r.len as usize]);
        }
    });
    let dev = NbdDevice::open_uri(&fake.uri(), &opts_fast()).unwrap();
    assert!(!dev.export_info().used_go);
    assert_eq!(dev.geometry().block_count, 256);
    assert!(
        dev.write(0, &[0u8; 4096]).is_err(),
        "read-only export accepted a write"
    );
    let mut b = vec![0u8; 4096];
    dev.read(3, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 7));
    drop(dev);
    fake.join();
}

// ---------------------------------------------------------------------------
// Throughput (run with --ignored --nocapture, in release)

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn seq(dev: &dyn BlockDevice, total: u64) -> (f64, f64) {
    let chunk = 1 << 20;
    let bs = dev.geometry().block_size as u64;
    let data: Vec<u8> = (0..chunk as u64 / 4096)
        .flat_map(|b| pattern(2, b, 4096))
        .collect();
    let t = Instant::now();
    for i in 0..total / chunk as u64 {
        dev.write(i * chunk as u64 / bs, &data).unwrap();
    }
    dev.flush().unwrap();
    let w = mbps(total, t.elapsed());
    let mut buf = vec![0u8; chunk];
    let t = Instant::now();
    for i in 0..total / chunk as u64 {
        dev.read(i * chunk as u64 / bs, &mut buf).unwrap();
    }
    let r = mbps(total, t.elapsed());
    assert_eq!(buf, data);
    (w, r)
}

#[test]
#[ignore]
fn throughput_nbd_vs_file() {
    let total = 512u64 << 20;
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", total);
    let direct = FileDevice::open(
        &img,
        &FileOptions {
            direct: true,
            ..Default::default()
        },
    )
    .unwrap();
    let (fw, fr) = seq(&direct, total);
    drop(direct);
    let buffered = FileDevice::open(&img, &FileOptions::default()).unwrap();
    let (bw, br) = seq(&buffered, total);
    drop(buffered);
    let Some(srv) = Server::qemu(&img) else {
        return;
    };
    let dev = srv.connect();
    let (nw, nr) = seq(&dev, total);
    // Batched: the same 1 MiB writes, 16 per write_batch.
    let data: Vec<u8> = vec![0x5A; 1 << 20];
    let t = Instant::now();
    for g in 0..total / (16 << 20) {
        let reqs: Vec<WriteReq<'_>> = (0..16u64)
            .map(|k| WriteReq {
                block: (g * 16 + k) * 256,
                data: &data,
            })
            .collect();
        dev.write_batch(&reqs).unwrap();
    }
    dev.flush().unwrap();
    let nbw = mbps(total, t.elapsed());
    println!("sequential 1 MiB, {} MiB:", total >> 20);
    println!("  file O_DIRECT   write {fw:7.0} MB/s  read {fr:7.0} MB/s");
    println!("  file buffered   write {bw:7.0} MB/s  read {br:7.0} MB/s");
    println!("  nbd (qemu-nbd)  write {nw:7.0} MB/s  read {nr:7.0} MB/s  batched(16) write {nbw:7.0} MB/s");
}

/// A read error reply carries no payload (issue 8, item 7): the error is
/// reported at once, far below the I/O timeout, and the connection stays
/// usable for the requests after it.
#[test]
fn read_errors_are_reported_at_once_and_the_connection_survives() {
    // Every read fails.
    let Some(srv) = Server::nbdkit(&[
        "--filter=error",
        "memory",
        "1M",
        "error-pread=EIO",
        "error-pread-rate=100%",
    ]) else {
        return;
    };
    let dev = srv.connect();
    let t = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    for _ in 0..3 {
        let e = dev.read(0, &mut buf).unwrap_err();
        assert!(e.is_io(), "{e}");
    }
    // Writes still work on the same connection: the stream stayed in sync.
    dev.write(1, &vec![7u8; 4096]).unwrap();
    dev.flush().unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "read errors took {:?}",
        t.elapsed()
    );
    drop(dev);
    drop(srv);

    // Half the reads fail: every successful one returns the right bytes.
    let Some(srv) = Server::nbdkit(&[
        "--filter=error",
        "memory",
        "1M",
        "error-pread=EIO",
        "error-pread-rate=50%",
    ]) else {
        return;
    };
    let dev = srv.connect();
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    dev.write(3, &data).unwrap();
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..64 {
        let mut back = vec![0u8; 4096];
        match dev.read(3, &mut back) {
            Ok(()) => {
                assert!(back == data, "a read after an error returned wrong bytes");
                ok += 1;
            }
            Err(e) => {
                assert!(e.is_io(), "{e}");
                failed += 1;
            }
        }
    }
    assert!(ok > 0 && failed > 0, "{ok} ok, {failed} failed");
}

// ---------------------------------------------------------------------------
// FUA

const CMD_WRITE: u16 = 1;
const CMD_FLUSH: u16 = 3;
const FLAG_FUA: u16 = 1;

/// A memory-backed fake server that also keeps the image a power cut
/// leaves at worst: only what a FLUSH covered (every write replied to
/// before it) or a FUA write made durable; every other write is lost.
#[derive(Default)]
struct Durable {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes not yet flushed, in order: (offset, data).
    pending: Vec<(usize, Vec<u8>)>,
    /// Every request: (command, flags, offset).
    log: Vec<(u16, u16, u64)>,
    /// Requests received on each connection, in accept order.
    per_conn: Vec<usize>,
}

fn durable_fake(size: u64, tflags: u16) -> (Fake, Arc<std::sync::Mutex<Durable>>) {
    let st = Arc::new(std::sync::Mutex::new(Durable {
        live: vec![0; size as usize],
        durable: vec![0; size as usize],
        ..Default::default()
    }));
    let st2 = st.clone();
    let fake = Fake::start(move |s| serve_durable(s, size, tflags, &st2));
    (fake, st)
}

/// Serve one connection of a [`Durable`] fake. With several connections a
/// flush on any one makes every write so far durable (`CAN_MULTI_CONN`).
fn serve_durable(mut s: UnixStream, size: u64, tflags: u16, st2: &std::sync::Mutex<Durable>) {
    serve_handshake(&mut s, size, tflags);
    let me = {
        let mut g = st2.lock().unwrap();
        g.per_conn.push(0);
        g.per_conn.len() - 1
    };
    {
        while let Some(r) = read_req(&mut s) {
            let (o, l) = (r.off as usize, r.len as usize);
            let mut g = st2.lock().unwrap();
            g.per_conn[me] += 1;
            g.log.push((r.cmd, r.flags, r.off));
            match r.cmd {
                0 => {
                    let d = g.live[o..o + l].to_vec();
                    drop(g);
                    simple_reply(&mut s, 0, r.cookie, &d);
                    continue;
                }
                1 | 4 | 6 => {
                    let d = if r.cmd == 1 { r.data } else { vec![0; l] };
                    g.live[o..o + l].copy_from_slice(&d);
                    if r.flags & FLAG_FUA != 0 {
                        g.durable[o..o + l].copy_from_slice(&d);
                    }
                    g.pending.push((o, d));
                }
                2 => return,
                3 => {
                    let pend = std::mem::take(&mut g.pending);
                    for (o, d) in pend {
                        g.durable[o..o + d.len()].copy_from_slice(&d);
                    }
                }
                _ => {}
            }
            drop(g);
            simple_reply(&mut s, 0, r.cookie, &[]);
        }
    }
}

/// The worst-case power-cut image, opened as a filesystem: the newest
/// generation it holds and the content of `name` in it.
fn open_durable(st: &std::sync::Mutex<Durable>, name: &str) -> (u64, Vec<u8>) {
    use notafs_core::Fs;
    let img = st.lock().unwrap().durable.clone();
    let dev: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::from_vec(4096, img));
    let fs = Fs::open(
        dev,
        &notafs_core::OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .expect("the power-cut image opens");
    let f = fs.open_file(name).expect("file of the acknowledged commit");
    let mut back = vec![0u8; f.len().unwrap() as usize];
    f.read_at(0, &mut back).unwrap();
    (fs.generation(), back)
}

/// The worst-case power-cut image holds generation `g` with `f` = `want`.
fn assert_durable(st: &std::sync::Mutex<Durable>, g: u64, want: &[u8]) {
    let (got, back) = open_durable(st, "f");
    assert_eq!(got, g, "acknowledged generation lost by a power cut");
    assert!(
        back == want,
        "content of generation {g} differs after a power cut"
    );
}

/// `write_fua` is one `NBD_CMD_WRITE` with `NBD_CMD_FLAG_FUA` where the
/// server advertises `SEND_FUA`, write + flush where it does not.
#[test]
fn write_fua_uses_the_fua_flag_only_where_advertised() {
    for (tflags, native) in [(1 | 4 | 8, true), (1 | 4, false)] {
        let (fake, st) = durable_fake(1 << 20, tflags);
        let dev = NbdDevice::open_uri(&fake.uri(), &opts_fast()).unwrap();
        assert_eq!(dev.has_fua(), native);
        let data = pattern(3, 5, 8192);
        dev.write_fua(5, &data).unwrap();
        {
            let g = st.lock().unwrap();
            let cmds: Vec<(u16, u16)> = g.log.iter().map(|&(c, f, _)| (c, f)).collect();
            if native {
                assert_eq!(cmds, vec![(CMD_WRITE, FLAG_FUA)]);
            } else {
                assert_eq!(cmds, vec![(CMD_WRITE, 0), (CMD_FLUSH, 0)]);
            }
            assert!(
                g.durable[5 * 4096..7 * 4096] == data[..],
                "FUA write not durable"
            );
        }
        drop(dev);
        fake.join();
    }
}

/// Over a FUA-capable server, the barrier protocol's slot and the seal go
/// out as FUA writes with no trailing flush; the commit-log protocol keeps
/// its flush (the slot's FUA would not make the data durable). After each
/// acknowledged commit the worst-case power-cut image holds that commit.
#[test]
fn commits_use_fua_for_the_slot_and_stay_durable() {
    use notafs_core::{FormatOptions, Fs};
    let (fake, st) = durable_fake(64 << 20, 1 | 4 | 8 | 32 | 64);
    let mark = || st.lock().unwrap().log.len();
    let since = |m: usize| -> Vec<(u16, u16, u64)> { st.lock().unwrap().log[m..].to_vec() };
    let flushes = |ops: &[(u16, u16, u64)]| ops.iter().filter(|o| o.0 == CMD_FLUSH).count();
    let fua_writes = |ops: &[(u16, u16, u64)]| {
        ops.iter()
            .filter(|o| o.0 == CMD_WRITE && o.1 & FLAG_FUA != 0)
            .count()
    };
    let dev: Arc<dyn BlockDevice> =
        Arc::new(NbdDevice::open_uri(&fake.uri(), &opts_fast()).unwrap());
    assert!(dev.has_fua());
    Fs::format(dev.clone(), &FormatOptions::default())
        .unwrap()
        .close()
        .unwrap();
    // No write-behind: its background flushes would land in the counted
    // windows whenever the scheduler lets them.
    let fs = Fs::open(
        dev,
        &notafs_core::OpenOptions {
            write_behind: None,
            ..Default::default()
        },
    )
    .unwrap();

    // A large commit: the barrier protocol (barrier = flush on NBD, then
    // the slot with FUA, nothing after it). Large means more than a commit
    // log lists (16 MiB of blocks with log runs): 18 MiB of data.
    let big: Vec<u8> = (0..18 * 256).flat_map(|b| pattern(11, b, 4096)).collect();
    fs.create("f").unwrap().write_at(0, &big).unwrap();
    let m = mark();
    let g1 = fs.commit().unwrap();
    let ops = since(m);
    let last = *ops.last().unwrap();
    assert_eq!(
        (last.0, last.1),
        (CMD_WRITE, FLAG_FUA),
        "slot not FUA: {ops:?}"
    );
    assert_eq!(fua_writes(&ops), 1, "{ops:?}");
    assert_eq!(
        flushes(&ops),
        1,
        "barrier protocol: one flush (the barrier)"
    );
    assert_durable(&st, g1, &big);

    // A small commit: the commit-log protocol, one flush, no FUA.
    let f = fs.open_file("f").unwrap();
    f.write_at(4096 * 3, b"small change").unwrap();
    let m = mark();
    let g2 = fs.commit().unwrap();
    let ops = since(m);
    let mut want = big.clone();
    want[4096 * 3..4096 * 3 + 12].copy_from_slice(b"small change");
    // Durability first: a FUA slot in place of the flush fails here.
    assert_durable(&st, g2, &want);
    assert_eq!(ops.last().unwrap().0, CMD_FLUSH, "{ops:?}");
    assert_eq!(fua_writes(&ops), 0, "{ops:?}");
    assert_eq!(flushes(&ops), 1);

    // Close: the seal is one FUA write.
    let m = mark();
    fs.close().unwrap();
    let ops = since(m);
    assert_eq!(fua_writes(&ops), 1, "{ops:?}");
    assert_eq!(flushes(&ops), 0, "{ops:?}");
    let (g3, back) = open_durable(&st, "f");
    assert!(g3 > g2 && back == want, "seal not durable");
    drop(f);
    drop(fs);
    fake.join();
}

// ---------------------------------------------------------------------------
// Multiple connections

const CAN_MULTI_CONN: u16 = 1 << 8;

/// A [`Durable`] fake accepting up to `max` connections, one thread each.
struct MultiFake {
    sock: PathBuf,
    _dir: tempfile::TempDir,
    st: Arc<std::sync::Mutex<Durable>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl MultiFake {
    fn start(size: u64, tflags: u16, max: usize) -> MultiFake {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("multi.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let st = Arc::new(std::sync::Mutex::new(Durable {
            live: vec![0; size as usize],
            durable: vec![0; size as usize],
            ..Default::default()
        }));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (st2, acc2) = (st.clone(), accepted.clone());
        std::thread::spawn(move || {
            for _ in 0..max {
                let Ok((s, _)) = l.accept() else { return };
                acc2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let st3 = st2.clone();
                std::thread::spawn(move || serve_durable(s, size, tflags, &st3));
            }
            // Like qemu-nbd at its --shared limit: the socket stays open,
            // further clients wait in the backlog without a greeting.
            std::thread::sleep(Duration::from_secs(30));
            drop(l);
        });
        MultiFake {
            sock,
            _dir: dir,
            st,
            accepted,
        }
    }
    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }
}

/// With `CAN_MULTI_CONN` the device opens 4 connections (or what the
/// options / `?connections=` say), spreads requests over them, and one
/// flush makes the writes of all of them durable.
#[test]
fn multi_conn_spreads_requests_and_one_flush_covers_all() {
    let fake = MultiFake::start(4 << 20, 1 | 4 | 8 | 64 | CAN_MULTI_CONN, 16);
    let dev = NbdDevice::open_uri(&fake.uri(), &opts_fast()).unwrap();
    assert_eq!(dev.connections(), 4);
    let bufs: Vec<(u64, Vec<u8>)> = (0..64u64)
        .map(|i| (i * 3, pattern(21, i * 3, 4096)))
        .collect();
    let reqs: Vec<WriteReq<'_>> = bufs
        .iter()
        .map(|(b, d)| WriteReq { block: *b, data: d })
        .collect();
    dev.write_batch(&reqs).unwrap();
    {
        let g = fake.st.lock().unwrap();
        assert_eq!(g.per_conn.len(), 4);
        assert!(
            g.per_conn.iter().all(|&n| n >= 8),
            "requests not spread over the connections: {:?}",
            g.per_conn
        );
    }
    dev.flush().unwrap();
    {
        let g = fake.st.lock().unwrap();
        assert_eq!(g.log.iter().filter(|o| o.0 == CMD_FLUSH).count(), 1);
        for (b, d) in &bufs {
            let o = *b as usize * 4096;
            assert!(
                g.durable[o..o + 4096] == d[..],
                "block {b} not durable after flush"
            );
        }
    }
    for (b, d) in &bufs {
        let mut back = vec![0u8; 4096];
        dev.read(*b, &mut back).unwrap();
        assert!(back == *d, "block {b} reads back wrong");
    }
    drop(dev);
    // Options and URI can ask for fewer (or more).
    let dev = NbdDevice::open_uri(
        &fake.uri(),
        &NbdOptions {
            connections: Some(2),
            ..opts_fast()
        },
    )
    .unwrap();
    assert_eq!(dev.connections(), 2);
    drop(dev);
    let dev = NbdDevice::open_uri(&format!("{}&connections=1", fake.uri()), &opts_fast()).unwrap();
    assert_eq!(dev.connections(), 1);
    drop(dev);
    assert_eq!(fake.accepted.load(std::sync::atomic::Ordering::SeqCst), 7);
}

/// Without `CAN_MULTI_CONN` one connection only, whatever is asked: a
/// flush on one connection would not cover writes on another.
#[test]
fn no_multi_conn_without_the_flag() {
    let fake = MultiFake::start(1 << 20, 1 | 4 | 8, 16);
    let dev = NbdDevice::open_uri(
        &format!("{}&connections=8", fake.uri()),
        &NbdOptions {
            connections: Some(8),
            ..opts_fast()
        },
    )
    .unwrap();
    assert_eq!(dev.connections(), 1);
    let data = pattern(5, 1, 4096 * 4);
    dev.write(1, &data).unwrap();
    dev.flush().unwrap();
    drop(dev);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(fake.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// nbdkit's memory plugin and qemu-nbd with `--shared` > 1 advertise
/// `CAN_MULTI_CONN`: the device uses 4 connections and behaves like memory.
#[test]
fn multi_conn_on_real_servers() {
    if let Some(srv) = Server::nbdkit(&["memory", "64M"]) {
        let dev = srv.connect();
        assert!(dev.export_info().flags & flags::CAN_MULTI_CONN != 0);
        assert_eq!(dev.connections(), 4);
        quickcheck_device(Arc::new(dev), 30);
    }
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 16 << 20);
    if let Some(srv) = Server::qemu(&img) {
        let dev = srv.connect();
        assert_eq!(dev.connections(), 4);
        let data: Vec<u8> = (0..256).flat_map(|b| pattern(9, b, 4096)).collect();
        dev.write(10, &data).unwrap();
        dev.flush().unwrap();
        drop(dev);
        let dev = srv.connect();
        let mut back = vec![0u8; data.len()];
        dev.read(10, &mut back).unwrap();
        assert!(
            back == data,
            "data differs through a second 4-connection device"
        );
    }
}

// ---------------------------------------------------------------------------
// Structured replies

const STRUCTURED: u32 = 0x668e_33ef;
const DONE: u16 = 1;
const T_NONE: u16 = 0;
const T_DATA: u16 = 1;
const T_HOLE: u16 = 2;
const T_ERROR: u16 = (1 << 15) + 1;
const T_ERROR_OFFSET: u16 = (1 << 15) + 2;

fn chunk(s: &mut UnixStream, flags: u16, typ: u16, cookie: u64, payload: &[u8]) {
    let mut m = STRUCTURED.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&typ.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    let _ = s.write_all(&m);
}

fn data_chunk(s: &mut UnixStream, flags: u16, cookie: u64, off: u64, data: &[u8]) {
    let mut p = off.to_be_bytes().to_vec();
    p.extend_from_slice(data);
    chunk(s, flags, T_DATA, cookie, &p);
}

fn hole_chunk(s: &mut UnixStream, flags: u16, cookie: u64, off: u64, len: u32) {
    let mut p = off.to_be_bytes().to_vec();
    p.extend_from_slice(&len.to_be_bytes());
    chunk(s, flags, T_HOLE, cookie, &p);
}

fn error_chunk(s: &mut UnixStream, flags: u16, cookie: u64, err: u32, msg: &str, off: Option<u64>) {
    let mut p = err.to_be_bytes().to_vec();
    p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    let typ = match off {
        Some(o) => {
            p.extend_from_slice(&o.to_be_bytes());
            T_ERROR_OFFSET
        }
        None => T_ERROR,
    };
    chunk(s, flags, typ, cookie, &p);
}

/// A memory server speaking structured replies: each read is answered in
/// 4 KiB chunks, in reverse order, all-zero ones as holes, then NONE+DONE;
/// a read touching block 200 gets an ERROR_OFFSET chunk; writes get a
/// NONE+DONE chunk, flushes a simple reply.
#[test]
fn structured_replies_sparse_reads_and_precise_errors() {
    const SIZE: u64 = 1 << 20;
    let holes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let holes2 = holes.clone();
    let fake = Fake::start(move |mut s| {
        serve_handshake_sr(&mut s, SIZE, 1 | 4 | 8, true);
        let mut mem = vec![0u8; SIZE as usize];
        while let Some(r) = read_req(&mut s) {
            let (o, l) = (r.off as usize, r.len as usize);
            match r.cmd {
                0 if o <= 200 * 4096 && o + l > 200 * 4096 => {
                    error_chunk(&mut s, 0, r.cookie, 5, "bad sector", Some(200 * 4096 + 512));
                    chunk(&mut s, DONE, T_NONE, r.cookie, &[]);
                }
                0 => {
                    let mut at = o + l;
                    while at > o {
                        let start = at.saturating_sub(4096).max(o);
                        let d = &mem[start..at];
                        if d.iter().all(|&b| b == 0) {
                            holes2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            hole_chunk(&mut s, 0, r.cookie, start as u64, (at - start) as u32);
                        } else {
                            data_chunk(&mut s, 0, r.cookie, start as u64, d);
                        }
                        at = start;
                    }
                    chunk(&mut s, DONE, T_NONE, r.cookie, &[]);
                }
                1 => {
                    mem[o..o + l].copy_from_slice(&r.data);
                    chunk(&mut s, DONE, T_NONE, r.cookie, &[]);
                }
                2 => return,
                _ => simple_reply(&mut s, 0, r.cookie, &[]),
            }
        }
    });
    let dev = NbdDevice::open_uri(&fake.uri(), &opts_fast()).unwrap();
    assert!(dev.export_info().structured_replies);
    // Blocks 8..16 written, 16..24 left as holes, read back as one request.
    let data = pattern(31, 8, 8 * 4096);
    dev.write(8, &data).unwrap();
    let mut back = vec![0xffu8; 16 * 4096];
    dev.read(8, &mut back).unwrap();
    assert!(back[..8 * 4096] == data[..], "data chunks misplaced");
    assert!(
        back[8 * 4096..].iter().all(|&b| b == 0),
        "holes not zero-filled"
    );
    assert!(holes.load(std::sync::atomic::Ordering::SeqCst) >= 8);
    // A precise error: errno kind, offset and message; the connection stays.
    let mut b = vec![0u8; 4 * 4096];
    let e = dev.read(198, &mut b).unwrap_err();
    let m = e.to_string();
    assert!(e.is_io(), "{m}");
    assert!(
        m.contains("Input/output error")
            && m.contains("at byte 819712")
            && m.contains("bad sector"),
        "{m}"
    );
    assert!(!dev.is_dead());
    dev.read(8, &mut back).unwrap();
    assert!(back[..8 * 4096] == data[..]);
    dev.flush().unwrap();
    drop(dev);
    fake.join();
}

/// Structured replies that break the protocol end the connection with a
/// clear error, at once, without allocating what the server claims.
#[test]
fn structured_reply_violations_end_the_connection() {
    type Bad = fn(&mut UnixStream, &Req);
    // Every case answers an 8 KiB read at offset 4096.
    let cases: Vec<(Bad, &str)> = vec![
        (
            |s, r| data_chunk(s, DONE, r.cookie, 0, &[1u8; 8192]),
            "outside the request",
        ),
        (
            |s, r| data_chunk(s, DONE, r.cookie, 8192, &[1u8; 8192]),
            "outside the request",
        ),
        (
            |s, r| {
                data_chunk(s, 0, r.cookie, 4096, &[1u8; 8192]);
                hole_chunk(s, DONE, r.cookie, 8192, 512);
            },
            "overlaps",
        ),
        (
            |s, r| data_chunk(s, DONE, r.cookie, 4096, &[1u8; 4096]),
            "cover 4096 of the 8192",
        ),
        (
            |s, r| chunk(s, 0, T_NONE, r.cookie, &[]),
            "without the DONE flag",
        ),
        (
            |s, r| chunk(s, DONE, T_NONE, r.cookie, &[0; 4]),
            "NONE chunk of 4 bytes",
        ),
        (
            |s, r| chunk(s, DONE, T_HOLE, r.cookie, &[0; 13]),
            "hole chunk of 13 bytes",
        ),
        (
            |s, r| hole_chunk(s, DONE, r.cookie, 4096, 0),
            "outside the request",
        ),
        (
            |s, r| {
                let mut m = STRUCTURED.to_be_bytes().to_vec();
                m.extend_from_slice(&DONE.to_be_bytes());
                m.extend_from_slice(&T_DATA.to_be_bytes());
                m.extend_from_slice(&r.cookie.to_be_bytes());
                m.extend_from_slice(&u32::MAX.to_be_bytes());
                let _ = s.write_all(&m);
            },
            "data chunk of 4294967295 bytes",
        ),
        (
            |s, r| error_chunk(s, DONE, r.cookie, 0, "", None),
            "error 0",
        ),
        (
            |s, r| {
                let mut p = 5u32.to_be_bytes().to_vec();
                p.extend_from_slice(&9u16.to_be_bytes());
                p.extend_from_slice(b"short");
                chunk(s, DONE, T_ERROR, r.cookie, &p)
            },
            "with a 9-byte message",
        ),
        (
            |s, r| {
                let mut m = STRUCTURED.to_be_bytes().to_vec();
                m.extend_from_slice(&DONE.to_be_bytes());
                m.extend_from_slice(&T_ERROR.to_be_bytes());
                m.extend_from_slice(&r.cookie.to_be_bytes());
                m.extend_from_slice(&(1u32 << 30).to_be_bytes());
                let _ = s.write_all(&m);
            },
            "error chunk of 1073741824 bytes",
        ),
        (
            |s, r| error_chunk(s, DONE, r.cookie, 5, "x", Some(0)),
            "error offset 0 outside",
        ),
        (
            |s, r| chunk(s, DONE, 5, r.cookie, &[0; 12]),
            "unexpected chunk type 5",
        ),
        (
            |s, r| chunk(s, DONE, T_NONE, r.cookie ^ 1, &[]),
            "unknown handle",
        ),
        (
            |s, r| {
                for i in 0..40u64 {
                    hole_chunk(s, 0, r.cookie, 4096 + i, 1);
                }
            },
            "more than 32 chunks",
        ),
        (
            |s, r| {
                hole_chunk(s, 0, r.cookie, 4096, 4096);
                simple_reply(s, 0, r.cookie, &[0u8; 8192]);
            },
            "simple reply for handle",
        ),
    ];
    for (bad, msg) in cases {
        let fake = Fake::start(move |mut s| {
            serve_handshake_sr(&mut s, 1 << 20, 1 | 4, true);
            if let Some(r) = read_req(&mut s) {
                bad(&mut s, &r);
            }
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let _ = read_req(&mut s);
        });
        let dev = NbdDevice::open_uri(&fake.uri(), &opts_fast()).unwrap();
        let t0 = Instant::now();
        let mut b = vec![0xa5u8; 8192];
        let e = dev.read(1, &mut b).unwrap_err();
        assert!(b.iter().all(|&x| x == 0), "{msg}: stale bytes left");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{msg}: took {:?}",
            t0.elapsed()
        );
        assert!(
            e.is_io() && e.to_string().contains("protocol error") && e.to_string().contains(msg),
            "{msg}: {e}"
        );
        assert!(dev.is_dead(), "{msg}");
        drop(dev);
        fake.join();
    }
}

/// Read data lands straight in the caller's buffer, so a reply that fails
/// part way must not leave a mix of new bytes and the buffer's previous
/// contents: every failed read hands back a zeroed buffer, whether the
/// server covered only part of the read, sent an error after some data,
/// or hung up in the middle of the data. A server error keeps the
/// connection in sync (the next read is right); a protocol violation ends
/// it.
#[test]
fn failed_reads_never_leave_stale_bytes_in_the_buffer() {
    type Bad = fn(&mut UnixStream, &Req);
    // (structured replies?, answer to an 8 KiB read at offset 4096, error
    // text, connection survives)
    let cases: Vec<(bool, Bad, &str, bool)> = vec![
        (
            true,
            |s, r| {
                data_chunk(s, 0, r.cookie, 4096, &[1u8; 2048]);
                hole_chunk(s, 0, r.cookie, 4096 + 4096, 1024);
                chunk(s, DONE, T_NONE, r.cookie, &[]);
            },
            "cover 3072 of the 8192",
            false,
        ),
        (
            true,
            |s, r| {
                data_chunk(s, 0, r.cookie, 4096 + 4096, &[2u8; 4096]);
                error_chunk(s, DONE, r.cookie, 5, "media error", Some(4096));
            },
            "media error",
            true,
        ),
        (
            true,
            |s, r| {
                // A data chunk that claims 8 KiB, 3 KiB of it sent, then EOF.
                let mut m = STRUCTURED.to_be_bytes().to_vec();
                m.extend_from_slice(&DONE.to_be_bytes());
                m.extend_from_slice(&T_DATA.to_be_bytes());
                m.extend_from_slice(&r.cookie.to_be_bytes());
                m.extend_from_slice(&(8u32 + 8192).to_be_bytes());
                m.extend_from_slice(&4096u64.to_be_bytes());
                m.extend_from_slice(&[3u8; 3072]);
                let _ = s.write_all(&m);
                let _ = s.shutdown(std::net::Shutdown::Both);
            },
            "closed the connection",
            false,
        ),
        (
            false,
            |s, r| {
                simple_reply(s, 0, r.cookie, &[4u8; 5000]);
                let _ = s.shutdown(std::net::Shutdown::Both);
            },
            "closed the connection",
            false,
        ),
        (
            false,
            |s, r| simple_reply(s, 5, r.cookie, &[]),
            "Input/output error",
            true,
        ),
    ];
    for (i, (structured, bad, msg, survives)) in cases.into_iter().enumerate() {
        let fake = Fake::start(move |mut s| {
            serve_handshake_sr(&mut s, 1 << 20, 1 | 4, structured);
            if let Some(r) = read_req(&mut s) {
                bad(&mut s, &r);
            }
            // A further read gets its data (7s) in one simple reply.
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            if let Some(r) = read_req(&mut s) {
                if r.cmd == 0 {
                    simple_reply(&mut s, 0, r.cookie, &vec![7u8; r.len as usize]);
                    let _ = read_req(&mut s);
                }
            }
        });
        let dev = NbdDevice::open_uri(&fake.uri(), &opts_fast()).unwrap();
        assert_eq!(dev.export_info().structured_replies, structured, "case {i}");
        let mut b = vec![0xa5u8; 8192];
        let e = dev.read(1, &mut b).unwrap_err();
        assert!(e.is_io() && e.to_string().contains(msg), "case {i}: {e}");
        assert!(
            b.iter().all(|&x| x == 0),
            "case {i}: a failed read left {} non-zero bytes (first {:#x})",
            b.iter().filter(|&&x| x != 0).count(),
            b.iter().find(|&&x| x != 0).unwrap()
        );
        assert_eq!(dev.is_dead(), !survives, "case {i}: {e}");
        if survives {
            dev.read(1, &mut b).unwrap();
            assert!(
                b.iter().all(|&x| x == 7),
                "case {i}: wrong data after the error"
            );
        }
        drop(dev);
        fake.join();
    }
}

/// Real servers offer structured replies: nbdkit's sparse-random plugin
/// (mostly holes) read through the device equals nbdcopy's copy of it, and
/// qemu-nbd negotiates them too.
#[test]
fn structured_replies_on_real_servers() {
    if !have("nbdcopy") {
        println!("SKIPPED: nbdcopy is not installed");
    } else if let Some(srv) = Server::nbdkit(&["sparse-random", "64M", "seed=7"]) {
        let dev = srv.connect();
        assert!(dev.export_info().structured_replies);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("copy.img");
        let st = Command::new("nbdcopy")
            .arg(srv.uri())
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        let want = std::fs::read(&out).unwrap();
        assert_eq!(want.len(), 64 << 20);
        let mut got = vec![0xa5u8; 64 << 20];
        for (i, c) in got.chunks_mut(8 << 20).enumerate() {
            dev.read(i as u64 * 2048, c).unwrap();
        }
        assert!(got == want, "sparse-random content differs from nbdcopy's");
        assert!(
            want.iter().any(|&b| b != 0) && want.chunks(4096).any(|c| c.iter().all(|&b| b == 0))
        );
    }
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 4 << 20);
    if let Some(srv) = Server::qemu(&img) {
        let dev = srv.connect();
        assert!(dev.export_info().structured_replies);
        let d = pattern(4, 3, 4096);
        dev.write(3, &d).unwrap();
        let mut b = vec![0xffu8; 8 * 4096];
        dev.read(0, &mut b).unwrap();
        assert!(b[3 * 4096..4 * 4096] == d[..]);
        assert!(b[..3 * 4096].iter().chain(&b[4 * 4096..]).all(|&x| x == 0));
    }
}

// ---------------------------------------------------------------------------
// TLS

/// Run `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca-cert.pem`, `ca-key.pem`) in `dir`.
fn make_ca(dir: &Path, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// `NAME-cert.pem` / `NAME-key.pem` in `dir`, signed by the CA in `ca_dir`.
fn make_cert(dir: &Path, ca_dir: &Path, name: &str, usage: &str) {
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
        ),
    )
    .unwrap();
    let key = format!("{name}-key.pem");
    let csr = format!("{name}.csr");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ],
    );
    let ca_cert = ca_dir.join("ca-cert.pem").display().to_string();
    let ca_key = ca_dir.join("ca-key.pem").display().to_string();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &format!("{name}-cert.pem"),
            "-days",
            "2",
            "-extfile",
            &ext.display().to_string(),
        ],
    );
}

/// Certificate directories: `server` (CA, server cert and key, as nbdkit
/// and qemu-nbd want), `client` (the CA and a client certificate), `ca_only`
/// (the CA alone), `wrong` (another CA).
struct Pki {
    _dir: tempfile::TempDir,
    server: PathBuf,
    client: PathBuf,
    ca_only: PathBuf,
    wrong: PathBuf,
}

fn make_pki() -> Option<Pki> {
    if !have("openssl") && Command::new("openssl").arg("version").output().is_err() {
        println!("SKIPPED: openssl is not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sub = |n: &str| {
        let p = dir.path().join(n);
        std::fs::create_dir(&p).unwrap();
        p
    };
    let (server, client, ca_only, wrong) = (sub("server"), sub("client"), sub("ca"), sub("wrong"));
    make_ca(&server, "notafs test CA");
    make_cert(&server, &server, "server", "serverAuth");
    make_cert(&client, &server, "client", "clientAuth");
    for d in [&client, &ca_only] {
        std::fs::copy(server.join("ca-cert.pem"), d.join("ca-cert.pem")).unwrap();
    }
    make_ca(&wrong, "some other CA");
    Some(Pki {
        _dir: dir,
        server,
        client,
        ca_only,
        wrong,
    })
}

fn tls_uri(srv: &Server, certs: &Path, extra: &str) -> String {
    format!(
        "nbds+unix:///?socket={}&tls-certificates={}{extra}",
        srv.sock.display(),
        certs.display()
    )
}

/// notafs formatted, written, committed and read back over `nbds+unix://`
/// (nbdkit --tls=require); a wrong CA, a wrong host name and a plain
/// `nbd+unix://` are refused with clear errors.
#[test]
fn tls_with_nbdkit() {
    use notafs_core::{FormatOptions, Fs};
    let Some(pki) = make_pki() else { return };
    let certs = format!("--tls-certificates={}", pki.server.display());
    let Some(srv) = Server::nbdkit(&["--tls=require", &certs, "memory", "64M"]) else {
        return;
    };
    let data: Vec<u8> = (0..256).flat_map(|b| pattern(17, b, 4096)).collect();
    {
        let dev = open_retry(&tls_uri(&srv, &pki.ca_only, ""), &opts_fast()).unwrap();
        assert!(dev.connections() >= 1);
        let fs = Fs::format(Arc::new(dev), &FormatOptions::default()).unwrap();
        fs.create("secret.bin").unwrap().write_at(0, &data).unwrap();
        fs.commit().unwrap();
    }
    {
        let dev: Arc<dyn BlockDevice> =
            Arc::new(NbdDevice::open_uri(&tls_uri(&srv, &pki.ca_only, ""), &opts_fast()).unwrap());
        let fs = Fs::open(dev, &notafs_core::OpenOptions::default()).unwrap();
        let f = fs.open_file("secret.bin").unwrap();
        let mut back = vec![0u8; data.len()];
        assert_eq!(f.read_at(0, &mut back).unwrap(), data.len());
        assert!(back == data, "content differs over TLS");
    }
    // The CA of another authority: the server's certificate is refused.
    let e = NbdDevice::open_uri(&tls_uri(&srv, &pki.wrong, ""), &opts_fast()).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("TLS handshake failed") && m.contains("UnknownIssuer"),
        "{m}"
    );
    assert!(m.contains("tls-certificates"), "{m}");
    // The certificate is for localhost / 127.0.0.1, not for this name.
    let e = NbdDevice::open_uri(
        &tls_uri(&srv, &pki.ca_only, "&tls-hostname=db.example.com"),
        &opts_fast(),
    )
    .unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("TLS handshake failed") && m.contains("not valid for name"),
        "{m}"
    );
    // Plain NBD to a server that requires TLS.
    let e = NbdDevice::open_uri(&srv.uri(), &opts_fast()).unwrap_err();
    let m = e.to_string();
    assert!(m.contains("the server requires TLS: use nbds://"), "{m}");
    // A directory that does not exist, or with a key but no certificate.
    let e = NbdDevice::open_uri(
        &tls_uri(&srv, Path::new("/nonexistent/x"), ""),
        &opts_fast(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("is not a directory"), "{e}");
    std::fs::copy(
        pki.client.join("client-key.pem"),
        pki.ca_only.join("client-key.pem"),
    )
    .unwrap();
    let e = NbdDevice::open_uri(&tls_uri(&srv, &pki.ca_only, ""), &opts_fast()).unwrap_err();
    assert!(e.to_string().contains("without"), "{e}");
    std::fs::remove_file(pki.ca_only.join("client-key.pem")).unwrap();
}

/// A server that verifies client certificates (nbdkit --tls-verify-peer):
/// accepted with `client-cert.pem` / `client-key.pem` in the directory,
/// refused without.
#[test]
fn tls_client_certificates() {
    let Some(pki) = make_pki() else { return };
    let certs = format!("--tls-certificates={}", pki.server.display());
    let Some(srv) = Server::nbdkit(&[
        "--tls=require",
        "--tls-verify-peer",
        &certs,
        "memory",
        "16M",
    ]) else {
        return;
    };
    let dev = open_retry(&tls_uri(&srv, &pki.client, ""), &opts_fast()).unwrap();
    let d = pattern(2, 7, 4096);
    dev.write(7, &d).unwrap();
    let mut b = vec![0u8; 4096];
    dev.read(7, &mut b).unwrap();
    assert!(b == d);
    drop(dev);
    let r = NbdDevice::open_uri(&tls_uri(&srv, &pki.ca_only, ""), &opts_fast());
    assert!(r.is_err(), "a client without a certificate was accepted");
}

/// qemu-nbd with x509 credentials over TCP: `nbds://127.0.0.1:PORT/` with
/// the host name checked against the certificate's IP address.
#[test]
fn tls_with_qemu_nbd_over_tcp() {
    let Some(pki) = make_pki() else { return };
    if !have("qemu-nbd") {
        println!("SKIPPED: qemu-nbd is not installed");
        return;
    }
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 16 << 20);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new("qemu-nbd")
        .args([
            "--object",
            &format!(
                "tls-creds-x509,id=tls0,endpoint=server,dir={}",
                pki.server.display()
            ),
            "--tls-creds",
            "tls0",
            "-b",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-f",
            "raw",
            "--persistent",
            "--shared=8",
        ])
        .arg(&img)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // qemu-nbd's x509 server credentials verify the client's certificate
    // by default: the client directory has one.
    let uri = format!(
        "nbds://127.0.0.1:{port}/?tls-certificates={}",
        pki.client.display()
    );
    let t0 = Instant::now();
    let dev = loop {
        match NbdDevice::open_uri(&uri, &opts_fast()) {
            Ok(d) => break d,
            Err(e) if t0.elapsed() > Duration::from_secs(10) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("qemu-nbd over TLS: {e}");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let d: Vec<u8> = (0..64).flat_map(|b| pattern(23, b, 4096)).collect();
    dev.write(0, &d).unwrap();
    dev.flush().unwrap();
    let mut b = vec![0u8; d.len()];
    dev.read(0, &mut b).unwrap();
    drop(dev);
    let plain = NbdDevice::open_uri(&format!("nbd://127.0.0.1:{port}/"), &opts_fast());
    let _ = child.kill();
    let _ = child.wait();
    assert!(b == d, "content differs over TLS");
    let m = plain.err().expect("plain NBD to a TLS server").to_string();
    assert!(m.contains("the server requires TLS"), "{m}");
    let on_disk = std::fs::read(&img).unwrap();
    assert!(on_disk[..d.len()] == d[..], "not written to the image");
}

// ---------------------------------------------------------------------------
// Measurements (run with --ignored --nocapture, in release)

/// A device that hides the NBD FUA capability: `write_fua` becomes write +
/// flush, as on a server without `SEND_FUA`.
struct NoFua(NbdDevice);

impl BlockDevice for NoFua {
    fn geometry(&self) -> notafs_blockdev::Geometry {
        self.0.geometry()
    }
    fn read(&self, b: u64, buf: &mut [u8]) -> notafs_blockdev::Result<()> {
        self.0.read(b, buf)
    }
    fn write(&self, b: u64, d: &[u8]) -> notafs_blockdev::Result<()> {
        self.0.write(b, d)
    }
    fn write_zeroes(&self, b: u64, n: u64) -> notafs_blockdev::Result<()> {
        self.0.write_zeroes(b, n)
    }
    fn discard(&self, b: u64, n: u64) -> notafs_blockdev::Result<()> {
        self.0.discard(b, n)
    }
    fn flush(&self) -> notafs_blockdev::Result<()> {
        self.0.flush()
    }
    fn write_batch(&self, w: &[WriteReq<'_>]) -> notafs_blockdev::Result<()> {
        self.0.write_batch(w)
    }
    fn read_batch(&self, r: &mut [(u64, &mut [u8])]) -> notafs_blockdev::Result<()> {
        self.0.read_batch(r)
    }
}

/// A Unix-socket proxy in front of `server` that holds every chunk it
/// forwards, either way, for `delay`: a network with a round trip of twice
/// that. Its threads end with the process (measurements only).
fn latency_proxy(server: PathBuf, delay: Duration) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("proxy.sock");
    let l = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            let Ok(s) = UnixStream::connect(&server) else {
                return;
            };
            for (mut from, mut to) in [(c.try_clone().unwrap(), s.try_clone().unwrap()), (s, c)] {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        std::thread::sleep(delay);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (dir, sock)
}

/// Commits per second over qemu-nbd (a file on disk, --cache=none, so a
/// flush is an fdatasync), barrier protocol (as the tools use), with and
/// without FUA for the root slot; and sequential throughput with 1 and 4
/// connections (qemu-nbd on a file, nbdkit memory).
#[test]
#[ignore]
fn measure_fua_and_connections() {
    use notafs_core::{FormatOptions, Fs};
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 256 << 20);
    let Some(srv) = Server::qemu(&img) else {
        return;
    };
    let run = |fua: bool, commit_log: bool| -> f64 {
        let nbd = srv.connect();
        let dev: Arc<dyn BlockDevice> = if fua {
            Arc::new(nbd)
        } else {
            Arc::new(NoFua(nbd))
        };
        let fs = Fs::format(dev, &FormatOptions::default()).unwrap();
        fs.set_commit_log(commit_log);
        let f = fs.create("f").unwrap();
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < Duration::from_secs(4) {
            f.write_at(n * 4096 % (1 << 20), &pattern(n, 0, 4096))
                .unwrap();
            fs.commit().unwrap();
            n += 1;
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    // Interleaved, best of 3 each (the machine is shared and noisy).
    let (mut with, mut without) = (0f64, 0f64);
    for _ in 0..3 {
        without = without.max(run(false, false));
        with = with.max(run(true, false));
    }
    println!(
        "commits/s, 4 KiB each, qemu-nbd file --cache=none, barrier protocol: FUA slot {with:.0}, write+flush {without:.0} ({:.2}x)",
        with / without
    );
    let cl = run(true, true);
    println!("commits/s, commit-log protocol (no FUA in it), same server: {cl:.0}");
    // The same through a proxy adding 0.5 ms each way (1 ms round trip).
    let (_pd, psock) = latency_proxy(srv.sock.clone(), Duration::from_micros(500));
    let prun = |fua: bool| -> f64 {
        let nbd = NbdDevice::open_uri(
            &format!("nbd+unix:///?socket={}", psock.display()),
            &NbdOptions::default(),
        )
        .unwrap();
        let dev: Arc<dyn BlockDevice> = if fua {
            Arc::new(nbd)
        } else {
            Arc::new(NoFua(nbd))
        };
        let fs = Fs::format(dev, &FormatOptions::default()).unwrap();
        fs.set_commit_log(false);
        let f = fs.create("f").unwrap();
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < Duration::from_secs(4) {
            f.write_at(n * 4096 % (1 << 20), &pattern(n, 0, 4096))
                .unwrap();
            fs.commit().unwrap();
            n += 1;
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    let (mut with, mut without) = (0f64, 0f64);
    for _ in 0..2 {
        without = without.max(prun(false));
        with = with.max(prun(true));
    }
    println!(
        "commits/s, same, 1 ms round trip (proxy): FUA slot {with:.0}, write+flush {without:.0} ({:.2}x)",
        with / without
    );
    drop(srv);
    let total = 256u64 << 20;
    let img2 = make_image(dir.path(), "img2", total);
    let servers: Vec<(&str, Option<Server>)> = vec![
        ("qemu-nbd file", Server::qemu(&img2)),
        ("nbdkit memory", Server::nbdkit(&["memory", "1G"])),
    ];
    for (name, srv) in servers {
        let Some(srv) = srv else { continue };
        // Reads with and without structured replies (data written first).
        {
            let dev = srv.connect();
            seq(&dev, total);
            for st in [false, true] {
                let dev = NbdDevice::open_uri(
                    &srv.uri(),
                    &NbdOptions {
                        connections: Some(1),
                        structured_replies: st,
                        ..Default::default()
                    },
                )
                .unwrap();
                assert_eq!(dev.export_info().structured_replies, st);
                let mut buf = vec![0u8; 1 << 20];
                let t = Instant::now();
                for i in 0..total >> 20 {
                    dev.read(i * 256, &mut buf).unwrap();
                }
                println!(
                    "{name}, 1 connection, structured replies {}: 1 MiB reads {:5.0} MB/s",
                    if st { "on " } else { "off" },
                    mbps(total, t.elapsed())
                );
            }
        }
        for n in [1usize, 4] {
            let dev = NbdDevice::open_uri(
                &srv.uri(),
                &NbdOptions {
                    connections: Some(n),
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(dev.connections(), n);
            let (w, r) = seq(&dev, total);
            // 16 MiB batches: 64 requests of 256 KiB in flight.
            let data: Vec<u8> = vec![0x5A; 1 << 20];
            let t = Instant::now();
            for g in 0..total / (16 << 20) {
                let reqs: Vec<WriteReq<'_>> = (0..16u64)
                    .map(|k| WriteReq {
                        block: (g * 16 + k) * 256,
                        data: &data,
                    })
                    .collect();
                dev.write_batch(&reqs).unwrap();
            }
            dev.flush().unwrap();
            let bw = mbps(total, t.elapsed());
            let mut bufs = vec![vec![0u8; 1 << 20]; 16];
            let t = Instant::now();
            for g in 0..total / (16 << 20) {
                let mut reqs: Vec<(u64, &mut [u8])> = bufs
                    .iter_mut()
                    .enumerate()
                    .map(|(k, b)| ((g * 16 + k as u64) * 256, &mut b[..]))
                    .collect();
                dev.read_batch(&mut reqs).unwrap();
            }
            let br = mbps(total, t.elapsed());
            println!(
                "{name}, {n} connection(s), {} MiB: 1 MiB calls write {w:5.0} read {r:5.0} MB/s; 16 MiB batches write {bw:5.0} read {br:5.0} MB/s",
                total >> 20
            );
        }
    }
}

/// A server that advertises `CAN_MULTI_CONN` but takes only 2 clients and
/// leaves the others waiting (qemu-nbd --shared=2): the device opens with
/// the 2 it got, within a few seconds, not after the 10 s connect timeout.
#[test]
fn multi_conn_server_limit_does_not_stall_open() {
    let fake = MultiFake::start(1 << 20, 1 | 4 | CAN_MULTI_CONN, 2);
    let t0 = Instant::now();
    let dev = NbdDevice::open_uri(&fake.uri(), &NbdOptions::default()).unwrap();
    let took = t0.elapsed();
    assert_eq!(dev.connections(), 2);
    assert!(took < Duration::from_secs(4), "open took {took:?}");
    let d = pattern(8, 3, 4096 * 8);
    dev.write(3, &d).unwrap();
    let mut b = vec![0u8; d.len()];
    dev.read(3, &mut b).unwrap();
    assert!(b == d);
}

/// `?timeout=SECS` bounds the wait for a reply (the default is 120 s): a
/// server that stops answering fails the call after about that long, and
/// the device is then dead (reopen it).
#[test]
fn uri_timeout_bounds_the_wait_for_a_reply() {
    let fake = Fake::start(|mut s| {
        serve_handshake(&mut s, 1 << 20, 1 | 4);
        let _ = read_req(&mut s); // never answered
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = read_req(&mut s);
    });
    let dev =
        NbdDevice::open_uri(&format!("{}&timeout=1", fake.uri()), &NbdOptions::default()).unwrap();
    let t0 = Instant::now();
    let mut b = vec![0u8; 4096];
    let e = dev.read(0, &mut b).unwrap_err();
    let took = t0.elapsed();
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(dev.is_dead());
    drop(dev);
    fake.join();
}

/// An `nbds` client never falls back to plain NBD: a server that refuses
/// `NBD_OPT_STARTTLS` (or is not fixed-newstyle) is an error, and nothing
/// but the greeting and that option crossed the connection.
#[test]
fn tls_is_never_downgraded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca-cert.pem"), "").unwrap();
    // An empty ca-cert.pem is refused before connecting.
    let e = NbdDevice::open_uri(
        &format!(
            "nbds+unix:///?socket=/nonexistent&tls-certificates={}",
            dir.path().display()
        ),
        &opts_fast(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
    let Some(pki) = make_pki() else { return };
    let fake = Fake::start(|mut s| {
        s.write_all(&NBDMAGIC.to_be_bytes()).unwrap();
        s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
        s.write_all(&3u16.to_be_bytes()).unwrap();
        assert_eq!(u32::from_be_bytes(rd::<4>(&mut s)), 3);
        let h = rd::<16>(&mut s);
        assert_eq!(
            u32::from_be_bytes(h[8..12].try_into().unwrap()),
            5,
            "expected STARTTLS first"
        );
        opt_reply(&mut s, 5, (1 << 31) + 2, b"TLS is not configured");
        // Whatever comes next must not be NBD_OPT_GO.
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut next = [0u8; 16];
        if s.read_exact(&mut next).is_ok() {
            let opt = u32::from_be_bytes(next[8..12].try_into().unwrap());
            assert_ne!(opt, 7, "the client went on without TLS");
            assert_ne!(opt, 8, "the client went on without TLS");
        }
    });
    let uri = format!(
        "nbds+unix:///?socket={}&tls-certificates={}",
        fake.sock.display(),
        pki.ca_only.display()
    );
    let e = NbdDevice::open_uri(&uri, &opts_fast()).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("does not offer TLS") && m.contains("TLS is not configured"),
        "{m}"
    );
    fake.join();
}
