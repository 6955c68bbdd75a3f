//! Peer filesystems for the notafs-core benchmarks, measured in the same run
//! on the same device as notafs: a loop device over a preallocated file in
//! the bench directory (the directory of the notafs image), formatted ext4,
//! xfs, btrfs or FAT32 and mounted; and littlefs (the littlefs C library
//! through the `littlefs-python` binding) on an image file there.
//!
//! Everything a peer sets up (backing file, loop device, mount point, mount)
//! is torn down by [`Peer`]'s `Drop`, also when the bench panics. A peer that
//! cannot run here (not root, a missing tool, a filesystem the kernel lacks)
//! yields `Err(reason)`, which the benches print as SKIPPED; they never fail
//! for it.
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use notafs_blockdev::file::{FileDevice, FileOptions};
use notafs_blockdev::raw::{RawDevice, RawOptions};
use notafs_blockdev::BlockDevice;
use notafs_core::{FormatOptions, Fs, OpenOptions as NOpenOptions};

use super::Counting;

/// Loop devices get this logical sector size (the notafs block size).
pub const SECTOR: u32 = 4096;

/// The peer filesystems on a loop device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ext4,
    Xfs,
    Btrfs,
    Fat,
}

pub const KINDS: [Kind; 4] = [Kind::Ext4, Kind::Xfs, Kind::Btrfs, Kind::Fat];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ext4 => "ext4",
            Kind::Xfs => "xfs",
            Kind::Btrfs => "btrfs",
            Kind::Fat => "fat",
        }
    }
    fn mkfs(self) -> (&'static str, &'static [&'static str], &'static str) {
        // (tool, arguments before the device, Debian package)
        match self {
            // No lazy inode table / journal init: ext4lazyinit would write
            // during the timed phase.
            Kind::Ext4 => (
                "mkfs.ext4",
                &["-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
                "e2fsprogs",
            ),
            Kind::Xfs => ("mkfs.xfs", &["-f", "-q"], "xfsprogs"),
            Kind::Btrfs => ("mkfs.btrfs", &["-f", "-q"], "btrfs-progs"),
            Kind::Fat => ("mkfs.vfat", &["-F", "32"], "dosfstools"),
        }
    }
}

/// A formatted and mounted loop device; torn down on drop.
pub struct Peer {
    pub kind: Kind,
    pub label: String,
    backing: String,
    loopdev: Option<String>,
    mountpoint: Option<PathBuf>,
    mounted: bool,
    fuse: bool,
    /// FAT through fusefat: fusefat implements no fsync, so a commit also
    /// fsyncs the block device (its page cache, then a device flush).
    devsync: Option<File>,
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            err.trim().lines().next().unwrap_or("(no message)")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn kernel_has(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some(fs))
}

fn pid_alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in a name made by these benches (`...-<kind>-<pid>.img`,
/// `...-<pid>-<name>.img`, `notafs-peer-mnt-<kind>-<pid>`), if any.
fn owner_pid(name: &str, prefix: &str) -> Option<String> {
    let rest = name.strip_prefix(prefix)?.trim_end_matches(".img");
    rest.split('-')
        .find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .map(String::from)
}

/// Remove what an earlier run killed before its cleanup left behind (a
/// SIGKILL skips every destructor): mounts, loop devices and image files
/// named by these benches whose process is gone. Own names only.
pub fn sweep_stale(dir: &str) {
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let tmp = std::env::temp_dir();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let mut it = line.split_whitespace();
        let (src, mp, fstype) = (it.next(), it.next(), it.next());
        let (Some(_src), Some(mp), Some(fstype)) = (src, mp, fstype) else {
            continue;
        };
        let name = Path::new(mp)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        if Path::new(mp).parent() != Some(tmp.as_path()) {
            continue;
        }
        if let Some(pid) = owner_pid(name, "notafs-peer-mnt-") {
            if !pid_alive(&pid) {
                let _ = if fstype.starts_with("fuse") {
                    run("fusermount", &["-u", mp])
                } else {
                    run("umount", &[mp])
                };
                let _ = std::fs::remove_dir(mp);
            }
        }
    }
    let loops = run("losetup", &["--list", "-n", "-O", "NAME,BACK-FILE"]).unwrap_or_default();
    for line in loops.lines() {
        let mut it = line.split_whitespace();
        let (Some(dev), Some(back)) = (it.next(), it.next()) else {
            continue;
        };
        let name = Path::new(back)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        if let Some(pid) = owner_pid(name, "notafs-peer-") {
            if !pid_alive(&pid) {
                let _ = run("losetup", &["-d", dev]);
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let pid = [
                "notafs-peer-",
                "notafs-small-commit-",
                "notafs-random-overwrite-",
            ]
            .iter()
            .find_map(|p| owner_pid(&name, p));
            if let Some(pid) = pid {
                if name.ends_with(".img") && !pid_alive(&pid) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Make SIGINT / SIGTERM stop the run between slices by a panic, so that
/// the destructors unmount and detach everything.
pub fn catch_interrupts() {
    let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    unsafe {
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
}

fn check_interrupted() {
    if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        panic!("interrupted: cleaning up loop devices and mounts");
    }
}

/// Why peers on loop devices cannot run here at all, if they cannot.
pub fn loop_unavailable() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (losetup, mount)".into());
    }
    if !have("losetup") {
        return Some("losetup not found (util-linux)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control (loop driver missing)".into());
    }
    None
}

impl Peer {
    /// Loop device over a new preallocated `bytes`-byte file in `dir`
    /// (`--direct-io=on` when `direct`), formatted as `kind` and mounted.
    pub fn setup(kind: Kind, dir: &str, bytes: u64, direct: bool) -> Result<Peer, String> {
        if let Some(why) = loop_unavailable() {
            return Err(why);
        }
        let (tool, args, pkg) = kind.mkfs();
        if !have(tool) {
            return Err(format!("{tool} not found (apt-get install {pkg})"));
        }
        let fuse = kind == Kind::Fat && !kernel_has("vfat");
        if fuse && !(have("fusefat") && Path::new("/dev/fuse").exists()) {
            return Err(
                "the kernel has no vfat, and no fusefat + /dev/fuse (apt-get install fusefat)"
                    .into(),
            );
        }
        let id = format!("{}-{}", kind.name(), std::process::id());
        let mut p = Peer {
            kind,
            label: String::new(),
            backing: format!("{dir}/notafs-peer-{id}.img"),
            loopdev: None,
            mountpoint: None,
            mounted: false,
            fuse,
            devsync: None,
        };
        super::preallocate(&p.backing, bytes);
        let sector = SECTOR.to_string();
        let mut la = vec!["-f", "--show", "--sector-size", &sector];
        if direct {
            la.push("--direct-io=on");
        }
        la.push(&p.backing);
        p.loopdev = Some(run("losetup", &la)?);
        let dev = p.loopdev.clone().unwrap();
        let mut margs: Vec<&str> = args.to_vec();
        margs.push(&dev);
        run(tool, &margs)?;
        let mp = std::env::temp_dir().join(format!("notafs-peer-mnt-{id}"));
        std::fs::create_dir_all(&mp).map_err(|e| format!("mkdir {}: {e}", mp.display()))?;
        p.mountpoint = Some(mp.clone());
        let mps = mp.to_string_lossy().to_string();
        if fuse {
            run("fusefat", &["-o", "rw+", &dev, &mps])?;
            p.mounted = true;
            p.devsync = Some(File::open(&dev).map_err(|e| format!("open {dev}: {e}"))?);
            p.label = "FAT32 (fusefat, + fsync of the loop device)".into();
        } else {
            let t = if kind == Kind::Fat {
                "vfat"
            } else {
                kind.name()
            };
            run("mount", &["-t", t, &dev, &mps])?;
            p.mounted = true;
            p.label = match kind {
                Kind::Fat => "FAT32 (vfat)".into(),
                k => k.name().to_string(),
            };
        }
        Ok(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mountpoint.as_ref().unwrap().join(name)
    }

    /// Open `name` in the mounted filesystem for writing (created), with
    /// O_DIRECT when asked; FUSE without O_DIRECT support falls back to
    /// buffered and says so in the label.
    pub fn open(&mut self, name: &str, direct: bool) -> io::Result<File> {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true).create(true).truncate(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        match o.open(self.path(name)) {
            Err(e) if direct && self.fuse && e.raw_os_error() == Some(libc::EINVAL) => {
                self.label.push_str(" (no O_DIRECT: buffered)");
                self.open(name, false)
            }
            r => r,
        }
    }

    /// What a commit is for this peer: `fdatasync` of the file, plus (FAT
    /// through fusefat only) an fsync of the device.
    pub fn commit(&self, f: &File) -> io::Result<()> {
        f.sync_data()?;
        if let Some(d) = &self.devsync {
            d.sync_all()?;
        }
        Ok(())
    }

    /// syncfs of the mounted filesystem (and the device for fusefat), so
    /// that counters read afterwards include deferred writeback.
    pub fn sync_all(&self) {
        if let Ok(d) = File::open(self.mountpoint.as_ref().unwrap()) {
            unsafe { libc::syncfs(d.as_raw_fd()) };
        }
        if let Some(d) = &self.devsync {
            let _ = d.sync_all();
        }
    }

    /// (bytes written to the loop device, flush requests) so far, from
    /// /sys/block/loopN/stat (sectors there are 512 bytes).
    pub fn dev_counts(&self) -> (u64, u64) {
        let dev = self.loopdev.as_ref().unwrap();
        let name = dev.trim_start_matches("/dev/");
        let s = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap_or_default();
        let v: Vec<u64> = s
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        (
            v.get(6).copied().unwrap_or(0) * 512,
            v.get(15).copied().unwrap_or(0),
        )
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.devsync = None;
        if let Some(mp) = &self.mountpoint {
            if self.mounted {
                let mps = mp.to_string_lossy().to_string();
                let ok = if self.fuse {
                    run("fusermount", &["-u", &mps]).is_ok()
                } else {
                    run("umount", &[&mps]).is_ok()
                };
                if !ok {
                    let _ = run("umount", &["-l", &mps]);
                }
            }
            let _ = std::fs::remove_dir(mp);
        }
        if let Some(dev) = &self.loopdev {
            // fusefat may still hold the device for a moment after unmount.
            for _ in 0..50 {
                if run("losetup", &["-d", dev]).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        let _ = std::fs::remove_file(&self.backing);
    }
}

/// What a contender did in its timed phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Operations (commits or writes) per second.
    pub rate: f64,
    /// Bytes the device was asked to write per payload byte.
    pub wa: f64,
    /// Device flushes per commit.
    pub flushes: f64,
    /// Operations done (fewer than asked when a time budget ran out).
    pub done: u64,
}

/// A 4096-aligned buffer (for O_DIRECT).
pub struct Aligned {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    pub fn new(len: usize, fill: u8) -> Aligned {
        let mut v = vec![fill; len + 4096];
        let off = v.as_mut_ptr().align_offset(4096);
        Aligned { v, off, len }
    }
    pub fn get(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }
}

/// splitmix64: the random block sequence every contender of the random
/// overwrite bench replays (the littlefs script has the same generator).
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The operation sequence of a workload.
#[derive(Clone, Copy, Debug)]
pub enum Workload {
    /// 4 KiB appends to one file (after a first committed block), a commit
    /// after each.
    Append,
    /// 4 KiB overwrites at random 4 KiB-aligned offsets of a `file` -byte
    /// file (written and committed first), a commit after every `every`.
    Random { file: u64, every: usize, seed: u64 },
}

/// Where a contender is in its workload.
pub struct Ops {
    w: Workload,
    rng: SplitMix,
    i: u64,
}

impl Ops {
    pub fn new(w: Workload) -> Ops {
        let seed = match w {
            Workload::Random { seed, .. } => seed,
            Workload::Append => 0,
        };
        Ops {
            w,
            rng: SplitMix(seed),
            i: 0,
        }
    }
    /// The next write's byte offset, and whether a commit follows it.
    pub fn next_op(&mut self) -> (u64, bool) {
        self.i += 1;
        match self.w {
            // Block 0 is the first block, written before the timed phase.
            Workload::Append => (self.i * 4096, true),
            Workload::Random { file, every, .. } => (
                (self.rng.next_u64() % (file / 4096)) * 4096,
                self.i % every as u64 == 0,
            ),
        }
    }
    pub fn commits_per_op(&self) -> f64 {
        match self.w {
            Workload::Append => 1.0,
            Workload::Random { every, .. } => 1.0 / every as f64,
        }
    }
}

/// Fill `f` with `bytes` of non-zero data in 1 MiB writes.
pub fn fill(f: &File, bytes: u64) -> io::Result<()> {
    let chunk = Aligned::new(1 << 20, 0xa5);
    let mut off = 0;
    while off < bytes {
        f.write_at(chunk.get(), off)?;
        off += 1 << 20;
    }
    Ok(())
}

/// One contender of an interleaved run: it is handed slices of its
/// workload in turn with the others, so that all of them see the same
/// device weather.
pub trait Contender {
    fn label(&self) -> String;
    /// Do up to `k` operations of the workload; returns how many were done
    /// (fewer only when `deadline` passed: it stops after a commit).
    fn run(&mut self, k: usize, deadline: Instant) -> io::Result<usize>;
    /// (bytes written to the device, device flushes) so far, after making
    /// deferred writeback happen (untimed).
    fn counts(&mut self) -> (u64, u64);
    /// Commits per operation (1 for appends, 1/256 for random overwrites).
    fn commits_per_op(&self) -> f64;
    /// WA and flushes are not measured but 1 by construction (raw).
    fn is_raw(&self) -> bool {
        false
    }
}

/// Raw limit: the workload with pwrite + fdatasync on a preallocated file.
pub struct Raw {
    f: File,
    path: String,
    ops: Ops,
    buf: Aligned,
    bytes: u64,
    syncs: u64,
    /// The loop device written to (`on_loop`), detached after `f` closes.
    lo: Option<LoopDev>,
}

impl Raw {
    pub fn new(path: &str, size: u64, w: Workload, direct: bool) -> Result<Raw, String> {
        Self::make(path, size, w, direct).map_err(|e| {
            let _ = std::fs::remove_file(path);
            format!("raw file {path}: {e}")
        })
    }

    /// The raw limit of a loop device set up as the peers' are: pwrite +
    /// fdatasync on the block device itself (O_DIRECT when `direct`, and
    /// the loop device `--direct-io=on` then).
    pub fn on_loop(dir: &str, size: u64, w: Workload, direct: bool) -> Result<Raw, String> {
        if let Some(why) = loop_unavailable() {
            return Err(why);
        }
        let path = format!("{dir}/notafs-peer-raw-{}.img", std::process::id());
        Self::make_on(&path, size, w, direct, true).map_err(|e| {
            let _ = std::fs::remove_file(&path);
            format!("raw loop device over {path}: {e}")
        })
    }
    fn make(path: &str, size: u64, w: Workload, direct: bool) -> io::Result<Raw> {
        Self::make_on(path, size, w, direct, false)
    }
    fn make_on(path: &str, size: u64, w: Workload, direct: bool, on_loop: bool) -> io::Result<Raw> {
        super::preallocate(path, size);
        let lo = if on_loop {
            let sector = SECTOR.to_string();
            let mut la = vec!["-f", "--show", "--sector-size", &sector];
            if direct {
                la.push("--direct-io=on");
            }
            la.push(path);
            Some(LoopDev(run("losetup", &la).map_err(io::Error::other)?))
        } else {
            None
        };
        let mut o = std::fs::OpenOptions::new();
        o.write(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let f = o.open(lo.as_ref().map_or(path, |l| l.0.as_str()))?;
        let first = Aligned::new(4096, 1);
        match w {
            Workload::Append => f.write_at(first.get(), 0).map(|_| ())?,
            Workload::Random { file, .. } => fill(&f, file)?,
        }
        f.sync_all()?;
        Ok(Raw {
            f,
            path: path.into(),
            ops: Ops::new(w),
            buf: Aligned::new(4096, 0x5a),
            bytes: 0,
            syncs: 0,
            lo,
        })
    }
}

impl Contender for Raw {
    fn label(&self) -> String {
        let on = if self.lo.is_some() {
            " (loop device)"
        } else {
            ""
        };
        match self.ops.w {
            Workload::Append => format!("raw 4 KiB pwrite + fdatasync{on}"),
            Workload::Random { every, .. } => {
                format!("raw 4 KiB pwrite, fdatasync every {every}{on}")
            }
        }
    }
    fn run(&mut self, k: usize, deadline: Instant) -> io::Result<usize> {
        for done in 1..=k {
            let (off, commit) = self.ops.next_op();
            self.f.write_at(self.buf.get(), off)?;
            self.bytes += 4096;
            if commit {
                self.f.sync_data()?;
                self.syncs += 1;
                if Instant::now() >= deadline {
                    return Ok(done);
                }
            }
        }
        Ok(k)
    }
    fn counts(&mut self) -> (u64, u64) {
        (self.bytes, self.syncs)
    }
    fn commits_per_op(&self) -> f64 {
        self.ops.commits_per_op()
    }
    fn is_raw(&self) -> bool {
        true
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// notafs on an image file (FileDevice, buffered or O_DIRECT) through the
/// public API: `File::append` / `File::write_at` + `Fs::commit`.
pub struct Notafs {
    // The file handle goes before the filesystem (field drop order).
    f: notafs_core::File,
    fs: Fs,
    dev: Arc<Counting<Box<dyn BlockDevice>>>,
    path: String,
    ops: Ops,
    buf: Aligned,
    label: String,
    /// The loop device notafs runs on (`on_loop`), detached after the
    /// filesystem above is dropped (last field).
    _loop: Option<LoopDev>,
}

/// A loop device, detached on drop.
struct LoopDev(String);

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = run("losetup", &["-d", &self.0]);
    }
}

impl Notafs {
    /// `log`: the commit-log protocol (default) or the barrier protocol.
    pub fn new(
        path: &str,
        size: u64,
        w: Workload,
        direct: bool,
        log: bool,
    ) -> Result<Notafs, String> {
        Self::make(path, size, w, direct, log, false).map_err(|e| {
            let _ = std::fs::remove_file(path);
            format!("notafs on {path}: {e}")
        })
    }

    /// notafs on a loop device (`--sector-size 4096`, `--direct-io=on` when
    /// `direct`) over a new preallocated file in `dir`, through the raw
    /// backend (O_DIRECT on the block device), as the peers on loop run.
    pub fn on_loop(dir: &str, size: u64, w: Workload, direct: bool) -> Result<Notafs, String> {
        if let Some(why) = loop_unavailable() {
            return Err(why);
        }
        let path = format!("{dir}/notafs-peer-notafs-{}.img", std::process::id());
        Self::make(&path, size, w, direct, true, true).map_err(|e| {
            let _ = std::fs::remove_file(&path);
            format!("notafs on a loop device over {path}: {e}")
        })
    }
    fn make(
        path: &str,
        size: u64,
        w: Workload,
        direct: bool,
        log: bool,
        on_loop: bool,
    ) -> Result<Notafs, Box<dyn std::error::Error>> {
        super::preallocate(path, size);
        let (dev, lo): (Box<dyn BlockDevice>, _) = if on_loop {
            let sector = SECTOR.to_string();
            let mut la = vec!["-f", "--show", "--sector-size", &sector];
            if direct {
                la.push("--direct-io=on");
            }
            la.push(path);
            let lo = LoopDev(run("losetup", &la)?);
            let raw = RawDevice::open(&lo.0, &RawOptions::default())?;
            (Box::new(raw), Some(lo))
        } else {
            let dev = FileDevice::open(
                Path::new(path),
                &FileOptions {
                    direct,
                    ..Default::default()
                },
            )?;
            (Box::new(dev), None)
        };
        let dev = Arc::new(Counting::new(dev));
        drop(Fs::format(dev.clone(), &FormatOptions::default())?);
        let fs = Fs::open(dev.clone(), &NOpenOptions::default())?;
        fs.set_commit_log(log);
        let f = fs.create("data")?;
        match w {
            Workload::Append => {
                f.append(&[1u8; 4096])?;
            }
            Workload::Random { file, .. } => {
                let chunk = vec![0xa5u8; 1 << 20];
                for _ in 0..file >> 20 {
                    f.append(&chunk)?;
                }
            }
        }
        fs.commit()?;
        let label = match (w, log, on_loop) {
            (_, _, true) => "notafs on loop (raw backend)",
            (Workload::Append, true, _) => "notafs, commit log (default)",
            (Workload::Append, false, _) => "notafs, barrier protocol",
            (_, true, _) => "notafs",
            (_, false, _) => "notafs, barrier protocol",
        };
        Ok(Notafs {
            fs,
            f,
            dev,
            path: path.into(),
            ops: Ops::new(w),
            buf: Aligned::new(4096, 0x5a),
            label: label.into(),
            _loop: lo,
        })
    }
}

impl Contender for Notafs {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn run(&mut self, k: usize, deadline: Instant) -> io::Result<usize> {
        let e = |e: notafs_core::Error| io::Error::other(e.to_string());
        for done in 1..=k {
            let (off, commit) = self.ops.next_op();
            match self.ops.w {
                Workload::Append => self.f.append(self.buf.get()).map(|_| ()).map_err(e)?,
                Workload::Random { .. } => self.f.write_at(off, self.buf.get()).map_err(e)?,
            }
            if commit {
                self.fs.commit().map_err(e)?;
                if Instant::now() >= deadline {
                    return Ok(done);
                }
            }
        }
        Ok(k)
    }
    fn counts(&mut self) -> (u64, u64) {
        self.dev.counts()
    }
    fn commits_per_op(&self) -> f64 {
        self.ops.commits_per_op()
    }
}

impl Drop for Notafs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A peer filesystem on a loop device running the workload on one file.
pub struct LoopPeer {
    peer: Peer,
    f: File,
    ops: Ops,
    buf: Aligned,
}

impl LoopPeer {
    pub fn new(
        kind: Kind,
        dir: &str,
        size: u64,
        w: Workload,
        direct: bool,
    ) -> Result<LoopPeer, String> {
        let mut peer = Peer::setup(kind, dir, size, direct)?;
        let io = |e: io::Error| format!("I/O on {}: {e}", kind.name());
        let f = peer.open("data", direct).map_err(io)?;
        let first = Aligned::new(4096, 1);
        match w {
            Workload::Append => f.write_at(first.get(), 0).map(|_| ()).map_err(io)?,
            Workload::Random { file, .. } => fill(&f, file).map_err(io)?,
        }
        f.sync_all().map_err(io)?;
        peer.commit(&f).map_err(io)?;
        Ok(LoopPeer {
            peer,
            f,
            ops: Ops::new(w),
            buf: Aligned::new(4096, 0x5a),
        })
    }
}

impl Contender for LoopPeer {
    fn label(&self) -> String {
        format!("{} on loop", self.peer.label)
    }
    fn run(&mut self, k: usize, deadline: Instant) -> io::Result<usize> {
        for done in 1..=k {
            let (off, commit) = self.ops.next_op();
            self.f.write_at(self.buf.get(), off)?;
            if commit {
                self.peer.commit(&self.f)?;
                if Instant::now() >= deadline {
                    return Ok(done);
                }
            }
        }
        Ok(k)
    }
    fn counts(&mut self) -> (u64, u64) {
        self.peer.sync_all();
        self.peer.dev_counts()
    }
    fn commits_per_op(&self) -> f64 {
        self.ops.commits_per_op()
    }
}

/// littlefs (C, through littlefs-python) on an image file, driven by
/// benches/peers/littlefs_peer.py over a pipe.
pub struct Littlefs {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    image: String,
    bytes: u64,
    syncs: u64,
    cpo: f64,
}

impl Littlefs {
    pub fn new(image: &str, size: u64, w: Workload, direct: bool) -> Result<Littlefs, String> {
        if !have("python3") {
            return Err("python3 not found".into());
        }
        let probe = Command::new("python3")
            .args(["-c", "import littlefs"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            return Err("python module littlefs not found (pip install littlefs-python)".into());
        }
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/peers/littlefs_peer.py"
        );
        super::preallocate(image, size);
        let (mode, every, file, seed) = match w {
            Workload::Append => ("append", 1, 0, 0),
            Workload::Random { file, every, seed } => ("random", every, file, seed),
        };
        let mut child = Command::new("python3")
            .args([
                script,
                image,
                mode,
                &every.to_string(),
                &file.to_string(),
                &seed.to_string(),
                if direct { "1" } else { "0" },
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("python3: {e}"))?;
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut l = Littlefs {
            child,
            out,
            image: image.into(),
            bytes: 0,
            syncs: 0,
            cpo: Ops::new(w).commits_per_op(),
        };
        match l.reply() {
            Ok(r) if r.first().map(String::as_str) == Some("READY") => Ok(l),
            Ok(r) => Err(format!("littlefs script: unexpected {r:?}")),
            Err(e) => Err(format!("littlefs script failed: {e}")),
        }
    }
    fn reply(&mut self) -> io::Result<Vec<String>> {
        use std::io::BufRead;
        let mut s = String::new();
        if self.out.read_line(&mut s)? == 0 {
            return Err(io::Error::other("the script exited"));
        }
        Ok(s.split_whitespace().map(String::from).collect())
    }
}

impl Contender for Littlefs {
    fn label(&self) -> String {
        "littlefs 2.11 (littlefs-python) on an image file".into()
    }
    fn run(&mut self, k: usize, deadline: Instant) -> io::Result<usize> {
        use std::io::Write;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "RUN {k} {left}")?;
        stdin.flush()?;
        let r = self.reply()?;
        // DONE ops secs bytes syncs
        let num = |i: usize| -> f64 { r.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
        if r.first().map(String::as_str) != Some("DONE") {
            return Err(io::Error::other(format!("littlefs script: {r:?}")));
        }
        self.bytes += num(3) as u64;
        self.syncs += num(4) as u64;
        Ok(num(1) as usize)
    }
    fn counts(&mut self) -> (u64, u64) {
        (self.bytes, self.syncs)
    }
    fn commits_per_op(&self) -> f64 {
        self.cpo
    }
}

impl Drop for Littlefs {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// A contender, or why it could not run (printed as SKIPPED).
pub type Entry = (String, Result<Box<dyn Contender>, String>);

/// Run `n` operations on every contender in slices of `slice`, the order
/// rotating each slice; each contender's time is the sum of its slices. A
/// contender gets `budget` seconds in all: past it, it stops after its
/// current commit and gets no more slices (its outcome has `done` < n).
/// Returns one outcome per entry.
pub fn interleave(
    entries: &mut [Entry],
    n: usize,
    slice: usize,
    budget: f64,
) -> Vec<Result<Outcome, String>> {
    let m = entries.len();
    let mut secs = vec![0f64; m];
    let mut done = vec![0usize; m];
    let mut failed: Vec<Option<String>> = vec![None; m];
    let mut c0 = vec![(0u64, 0u64); m];
    for (i, (_, e)) in entries.iter_mut().enumerate() {
        if let Ok(c) = e {
            c0[i] = c.counts();
        }
    }
    let slices = n.div_ceil(slice);
    for s in 0..slices {
        let k = slice.min(n - s * slice);
        for j in 0..m {
            check_interrupted();
            let i = (j + s) % m;
            if failed[i].is_some() || secs[i] >= budget {
                continue;
            }
            if let (_, Ok(c)) = &mut entries[i] {
                let t = Instant::now();
                let deadline = t + std::time::Duration::from_secs_f64(budget - secs[i]);
                match c.run(k, deadline) {
                    Ok(d) => {
                        secs[i] += t.elapsed().as_secs_f64();
                        done[i] += d;
                    }
                    Err(e) => failed[i] = Some(format!("I/O: {e}")),
                }
            }
        }
    }
    entries
        .iter_mut()
        .enumerate()
        .map(|(i, (_, e))| {
            let c = e.as_mut().map_err(|w| w.clone())?;
            if let Some(f) = &failed[i] {
                return Err(f.clone());
            }
            let (b1, f1) = c.counts();
            let ops = done[i].max(1) as f64;
            let commits = (ops * c.commits_per_op()).max(1.0);
            Ok(Outcome {
                rate: done[i] as f64 / secs[i],
                wa: if c.is_raw() {
                    1.0
                } else {
                    (b1 - c0[i].0) as f64 / (ops * 4096.0)
                },
                flushes: if c.is_raw() {
                    1.0
                } else {
                    (f1 - c0[i].1) as f64 / commits
                },
                done: done[i] as u64,
            })
        })
        .collect()
}

/// Per contender: its label, its best outcome over the rounds (or the
/// reason it was skipped) and its ratio to raw in each round.
pub struct Best {
    pub label: String,
    pub result: Result<Outcome, String>,
    pub ratios: Vec<f64>,
}

impl Best {
    pub fn new(n: usize) -> Vec<Best> {
        (0..n)
            .map(|_| Best {
                label: String::new(),
                result: Err("not run".into()),
                ratios: Vec::new(),
            })
            .collect()
    }
}

/// Fold one round into `best`; `raw` is the index of the raw contender.
pub fn keep_best(
    best: &mut [Best],
    labels: Vec<String>,
    round: Vec<Result<Outcome, String>>,
    raw: Option<usize>,
) {
    let raw_rate = raw.and_then(|i| round[i].as_ref().ok().map(|o| o.rate));
    for ((b, label), r) in best.iter_mut().zip(labels).zip(round) {
        if let (Ok(o), Some(rr)) = (&r, raw_rate) {
            b.ratios.push(o.rate / rr);
        }
        match (r, &b.result) {
            (Ok(o), Ok(prev)) if o.rate > prev.rate => b.result = Ok(o),
            (Ok(_), Ok(_)) => {}
            (r @ Ok(_), Err(_)) | (r @ Err(_), Err(_)) => {
                b.result = r;
                b.label = label;
            }
            (Err(_), Ok(_)) => {}
        }
    }
}

/// "1.23 0.98 0.75" from /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Print a markdown table, one row per contender: best ops/s, its ratio
/// to the best raw, WA, flushes per commit, and the ratio to raw within
/// each round; a contender that did fewer than `n` operations within its
/// `budget` seconds says so, one that could not run is SKIPPED.
pub fn print_table(unit: &str, n: usize, budget: f64, rows: &[Best], raw: Option<usize>) {
    let raw = raw
        .and_then(|i| rows[i].result.as_ref().ok().map(|o| o.rate))
        .unwrap_or(f64::NAN);
    println!(
        "| contender | {unit} | vs raw | write amplification | device flushes per commit | vs raw in each round |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for b in rows {
        match &b.result {
            Ok(o) => {
                let partial = if (o.done as usize) < n {
                    format!(" ({} of {n} ops in the {budget:.0} s budget)", o.done)
                } else {
                    String::new()
                };
                let rounds: Vec<String> = b.ratios.iter().map(|r| format!("{r:.2}")).collect();
                println!(
                    "| {}{partial} | {} | {:.2} | {:.2} | {:.2} | {} |",
                    b.label,
                    if o.rate >= 10.0 {
                        format!("{:.0}", o.rate)
                    } else {
                        format!("{:.2}", o.rate)
                    },
                    o.rate / raw,
                    o.wa,
                    o.flushes,
                    rounds.join(" / "),
                )
            }
            Err(why) => println!("| {} | SKIPPED: {why} | | | | |", b.label),
        }
    }
}
