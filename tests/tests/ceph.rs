//! notafs on a real distributed engine (issue 11): a one-node Ceph cluster
//! (mon, mgr, one BlueStore OSD on a sparse file) brought up by
//! `tests/ceph/ceph-cluster.sh`, RBD images served by qemu-nbd's rbd driver on
//! Unix sockets, and the real release tools (`mkfs.notafs`, `notafs`,
//! `fsck.notafs`, `notafs-fuse`) given the NBD URI `nbd+unix:///?socket=S`.
//!
//! One cluster per test binary, brought up once (about 15 s) and torn down
//! by PID in a drop guard (`ceph-cluster.sh down`), plus a watchdog process
//! that tears it down if this binary dies without unwinding. The scenarios
//! run one after another inside one `#[test]` (they share the cluster, and
//! one of them stops the OSD); each runs under `catch_unwind` so one failure
//! does not hide the others, and the test fails listing every failed one:
//!
//! - `basic`: mkfs over the URI, puts with commits (one 64 MiB file), every
//!   file read back by hash, `fsck.notafs -n` clean, a `notafs-fuse --rw`
//!   mount over the URI (write, fsync, read back, unmount), then the core
//!   tools see the file written through FUSE;
//! - `qemu_nbd_killed`: SIGKILL qemu-nbd in the middle of a 256 MiB put: the
//!   put fails (exit 8, the lost connection named), never hangs; qemu-nbd
//!   restarted, the image reopens with the files of the last acknowledged
//!   commit intact and `fsck -n` clean, and a new put works;
//! - `osd_killed`: SIGKILL the OSD in the middle of a 256 MiB put, restart it
//!   (librbd in qemu-nbd waits for it): the put either completes (then the
//!   file is there, whole) or fails with an error, within a bound; the files
//!   of the last acknowledged commit are intact and `fsck -n` clean;
//! - `osd_down_past_timeout`: the same with the OSD down past the client's
//!   I/O timeout (`&timeout=5`): the put fails naming the timeout within
//!   30 s; with the OSD back the image reopens, last commit intact.
//!
//! Needs the Debian packages ceph-mon, ceph-mgr, ceph-osd, ceph-common and a
//! qemu-nbd with the rbd driver, which `tests/ceph/install-deps.sh` provides
//! (`.ci/run` calls it); without them the test prints "SKIPPED: <reason>" and
//! passes. The FUSE part needs /dev/fuse and fusermount3 (else SKIPPED too).
//! The tools are the binaries next to this test's directory
//! (`target/release/` for `cargo test --release`).
use std::fs;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Bound on every tool run that should be quick.
const QUICK: Duration = Duration::from_secs(60);
/// Size of the put interrupted by a fault.
const FAULT_PUT_BYTES: usize = 256 << 20;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ceph/ceph-cluster.sh")
}

/// The directory holding the workspace's binaries: the parent of `deps/`.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the tools first (cargo build --release --bins)",
        p.display()
    );
    p
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

fn qemu_rbd_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NOTAFS_QEMU_RBD_DIR") {
        return d.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("notafs/qemu-rbd")
}

/// Why this machine cannot run the tier, if it cannot.
fn skip_reason() -> Option<String> {
    for b in [
        "ceph-mon",
        "ceph-mgr",
        "ceph-osd",
        "ceph",
        "rbd",
        "monmaptool",
    ] {
        if !which(b) {
            return Some(format!(
                "{b} is not installed (Debian packages ceph-mon ceph-mgr ceph-osd ceph-common; \
                 tests/ceph/install-deps.sh installs them)"
            ));
        }
    }
    let q = qemu_rbd_dir();
    if !q.join("usr/bin/qemu-nbd").exists()
        || !q
            .join("usr/lib/x86_64-linux-gnu/qemu/block-rbd.so")
            .exists()
    {
        return Some(format!(
            "no qemu-nbd with the rbd driver in {} (tests/ceph/install-deps.sh unpacks one)",
            q.display()
        ));
    }
    None
}

fn fuse_skip_reason() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    if !which("fusermount3") {
        return Some("fusermount3 is not installed (Debian package fuse3)".into());
    }
    None
}

/// What a finished command did.
struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self, what: &str) -> Out {
        assert!(
            self.status.success(),
            "{what}: {}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// A child whose output goes to files (no pipe to fill), waited for with a bound.
struct Proc {
    child: Option<Child>,
    what: String,
    out: tempfile::NamedTempFile,
    err: tempfile::NamedTempFile,
}

impl Proc {
    fn spawn(cmd: &mut Command, what: &str) -> Proc {
        let out = tempfile::NamedTempFile::new().unwrap();
        let err = tempfile::NamedTempFile::new().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.reopen().unwrap())
            .stderr(err.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        Proc {
            child: Some(child),
            what: what.to_string(),
            out,
            err,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// Bytes this process has read through read(2) and friends: how far a
    /// put has gone through its local file (its NBD sends, by sendto(2), are
    /// not counted in /proc/PID/io).
    fn rchar(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/io", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("rchar: ").map(|v| v.trim().parse().unwrap()))
            })
            .unwrap_or(0)
    }

    /// Wait at most `limit`; past it, SIGKILL the process and panic: it hung.
    fn wait(mut self, limit: Duration) -> Out {
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.try_wait() {
                break st;
            }
            if start.elapsed() > limit {
                let mut c = self.child.take().unwrap();
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "{} hung: still running after {limit:?}\nstderr: {}",
                    self.what,
                    fs::read_to_string(self.err.path()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.child = None;
        Out {
            status,
            stdout: fs::read_to_string(self.out.path()).unwrap_or_default(),
            stderr: fs::read_to_string(self.err.path()).unwrap_or_default(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(prog: &Path, args: &[&str], limit: Duration) -> Out {
    let what = format!("{} {}", prog.display(), args.join(" "));
    Proc::spawn(Command::new(prog).args(args), &what).wait(limit)
}

/// The cluster, torn down by PID when dropped (and by the watchdog if this
/// process dies without unwinding).
struct Cluster {
    dir: tempfile::TempDir,
    watchdog: Option<Child>,
}

impl Cluster {
    fn up() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("notafs-ceph")
            .tempdir()
            .unwrap();
        // Tear down if this process goes away without running Drop
        // (SIGKILL, abort): the watchdog waits for our PID to vanish.
        let watchdog = Command::new("setsid")
            .arg("bash")
            .arg("-c")
            .arg(
                "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; \"$2\" down \"$3\"; rm -rf \"$3\"",
            )
            .arg("watchdog")
            .arg(std::process::id().to_string())
            .arg(script())
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the watchdog");
        let c = Cluster {
            dir,
            watchdog: Some(watchdog),
        };
        let t = Instant::now();
        c.script(&["up"], &[], Duration::from_secs(120))
            .ok("ceph-cluster.sh up");
        eprintln!("ceph: cluster up in {:.1} s", t.elapsed().as_secs_f64());
        c
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn script(&self, cmd: &[&str], args: &[&str], limit: Duration) -> Out {
        let mut a = vec![cmd[0], self.dir().to_str().unwrap()];
        a.extend_from_slice(args);
        run(&script(), &a, limit)
    }

    fn socket(&self, image: &str) -> PathBuf {
        self.dir().join(format!("{image}.sock"))
    }

    fn uri(&self, image: &str) -> String {
        format!("nbd+unix:///?socket={}", self.socket(image).display())
    }

    fn new_image(&self, image: &str) {
        self.script(&["rbd-image"], &[image, "2G"], QUICK)
            .ok("ceph-cluster.sh rbd-image");
    }

    fn serve(&self, image: &str) {
        let sock = self.socket(image);
        self.script(&["serve"], &[image, sock.to_str().unwrap()], QUICK)
            .ok("ceph-cluster.sh serve");
    }

    fn kill_nbd(&self, image: &str) {
        self.script(&["kill-nbd"], &[image], QUICK)
            .ok("ceph-cluster.sh kill-nbd");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = self.script(&["down"], &[], Duration::from_secs(180));
        if !out.status.success() {
            eprintln!("ceph-cluster.sh down failed: {}", out.stderr);
        }
        if let Some(mut w) = self.watchdog.take() {
            // The watchdog is a bash we started: end it by its PID.
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Deterministic incompressible bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// BLAKE2b-256 of a local file, as `b2sum -l 256` prints it.
fn local_hash(path: &Path) -> String {
    let out = run(
        Path::new("b2sum"),
        &["-l", "256", path.to_str().unwrap()],
        QUICK,
    )
    .ok("b2sum");
    out.stdout.split_whitespace().next().unwrap().to_string()
}

/// BLAKE2b-256 of a file in the image, by `notafs hash`.
fn image_hash(uri: &str, path: &str) -> String {
    let out = run(&bin("notafs"), &["hash", uri, path], QUICK).ok("notafs hash");
    out.stdout.split_whitespace().next().unwrap().to_string()
}

/// Files put into an image: image path, local copy, hash.
struct Files {
    dir: tempfile::TempDir,
    files: Vec<(String, PathBuf, String)>,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
            files: Vec::new(),
        }
    }

    fn make(&self, name: &str, len: usize, seed: u64) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::write(&p, data(len, seed)).unwrap();
        p
    }

    /// `notafs put` (one commit); quiet on success.
    fn put(&mut self, uri: &str, path: &str, len: usize, seed: u64) {
        let local = self.make(&path.replace('/', "_"), len, seed);
        let out = run(
            &bin("notafs"),
            &["put", "-p", uri, local.to_str().unwrap(), path],
            Duration::from_secs(120),
        )
        .ok("notafs put");
        assert!(
            out.stderr.trim().is_empty(),
            "a successful put over NBD printed: {}",
            out.stderr
        );
        let h = local_hash(&local);
        self.files.retain(|f| f.0 != path);
        self.files.push((path.to_string(), local, h));
    }

    /// Every file put so far is in the image with its content.
    fn check(&self, uri: &str) {
        for (path, _, h) in &self.files {
            assert_eq!(&image_hash(uri, path), h, "{path}: content differs");
        }
    }
}

fn fsck_clean(uri: &str) {
    let out = run(&bin("fsck-notafs"), &["-n", uri], Duration::from_secs(120));
    assert!(
        out.status.code() == Some(0),
        "fsck.notafs -n {uri}: {}\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

fn mkfs(uri: &str) {
    let out = run(&bin("mkfs-notafs"), &[uri], QUICK).ok("mkfs.notafs");
    assert!(
        out.stdout.contains("Created a notafs filesystem"),
        "{}",
        out.stdout
    );
}

fn ls(uri: &str, dir: &str) -> Vec<String> {
    let out = run(&bin("notafs"), &["ls", uri, dir], QUICK).ok("notafs ls");
    out.stdout.lines().map(|l| l.trim().to_string()).collect()
}

/// Start a put of FAULT_PUT_BYTES and return once it has read `sent` bytes
/// (read from its local file: it is then in the middle of its writes).
fn start_big_put(uri: &str, local: &Path, path: &str) -> Proc {
    let mut p = Proc::spawn(
        Command::new(bin("notafs")).args(["put", uri, local.to_str().unwrap(), path]),
        "notafs put (to be interrupted)",
    );
    let sent = 48 << 20;
    let start = Instant::now();
    while p.rchar() < sent {
        if let Some(st) = p.try_wait() {
            panic!(
                "the put ended ({st}) before reading {sent} bytes: {}",
                fs::read_to_string(p.err.path()).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the put read only {} bytes in 60 s",
            p.rchar()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(p.try_wait().is_none(), "the put finished before the fault");
    eprintln!(
        "ceph: fault after {} MiB read, {:.1} s into the put",
        p.rchar() >> 20,
        start.elapsed().as_secs_f64()
    );
    p
}

fn is_mounted(mnt: &Path) -> bool {
    let want = mnt.to_str().unwrap();
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want))
}

/// A running `notafs-fuse --rw` over a URI; unmounted on drop whatever happened.
struct Mount {
    proc: Option<Proc>,
    mnt: PathBuf,
}

impl Mount {
    fn start(uri: &str, mnt: &Path) -> Mount {
        let mut p = Proc::spawn(
            Command::new(bin("notafs-fuse")).args(["--rw", uri, mnt.to_str().unwrap()]),
            "notafs-fuse",
        );
        let start = Instant::now();
        while !is_mounted(mnt) {
            if let Some(st) = p.try_wait() {
                panic!(
                    "notafs-fuse exited before mounting: {st}: {}",
                    fs::read_to_string(p.err.path()).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "mount did not appear in 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Mount {
            proc: Some(p),
            mnt: mnt.to_path_buf(),
        }
    }

    /// `fusermount3 -u` (retried while the kernel still holds a just-closed
    /// file), then the daemon exits 0 quietly.
    fn unmount(mut self) {
        let start = Instant::now();
        loop {
            let out = run(
                Path::new("fusermount3"),
                &["-u", self.mnt.to_str().unwrap()],
                QUICK,
            );
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "fusermount3 -u failed: {}",
                out.stderr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = self.proc.take().unwrap().wait(Duration::from_secs(60));
        assert!(
            out.status.success(),
            "notafs-fuse: {}: {}",
            out.status,
            out.stderr
        );
        assert!(!is_mounted(&self.mnt));
        assert!(
            !out.stderr.contains("WARN") && !out.stderr.contains("ERROR"),
            "notafs-fuse logged on a clean unmount: {}",
            out.stderr
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
    }
}

fn basic(c: &Cluster) {
    let img = "basic";
    c.new_image(img);
    c.serve(img);
    let uri = c.uri(img);
    mkfs(&uri);
    let mut f = Files::new();
    f.put(&uri, "/a.txt", 1000, 1);
    f.put(&uri, "/dir/b.bin", 3 << 20, 2);
    f.put(&uri, "/dir/big.bin", 64 << 20, 3);
    f.put(&uri, "/a.txt", 5000, 4); // replaced: a new commit
    f.check(&uri);
    assert_eq!(ls(&uri, "/"), ["a.txt", "dir/"]);
    assert_eq!(ls(&uri, "/dir"), ["b.bin", "big.bin"]);
    // A whole read back through `notafs get`, byte for byte.
    let back = f.dir.path().join("big.back");
    run(
        &bin("notafs"),
        &["get", &uri, "/dir/big.bin", back.to_str().unwrap()],
        Duration::from_secs(120),
    )
    .ok("notafs get");
    assert!(
        fs::read(&back).unwrap() == data(64 << 20, 3),
        "get: content differs"
    );
    fsck_clean(&uri);

    if let Some(why) = fuse_skip_reason() {
        println!("SKIPPED: FUSE part of the ceph tier: {why}");
        return;
    }
    let mnt = f.dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mount::start(&uri, &mnt);
    // Read a file put by the CLI through the mount.
    assert!(
        fs::read(mnt.join("dir/b.bin")).unwrap() == data(3 << 20, 2),
        "dir/b.bin read through FUSE differs"
    );
    let written = data(5 << 20, 5);
    {
        let mut w = fs::File::create(mnt.join("dir/fuse.bin")).unwrap();
        w.write_all(&written).unwrap();
        w.sync_all().unwrap();
    }
    assert!(fs::read(mnt.join("dir/fuse.bin")).unwrap() == written);
    m.unmount();
    let local = f.make("fuse.bin", 5 << 20, 5);
    assert_eq!(image_hash(&uri, "/dir/fuse.bin"), local_hash(&local));
    f.check(&uri);
    fsck_clean(&uri);
}

fn qemu_nbd_killed(c: &Cluster) {
    let img = "nbdkill";
    c.new_image(img);
    c.serve(img);
    let uri = c.uri(img);
    mkfs(&uri);
    let mut f = Files::new();
    f.put(&uri, "/keep/one", 100_000, 11);
    f.put(&uri, "/keep/two", 8 << 20, 12);
    let big = f.make("big", FAULT_PUT_BYTES, 13);

    let put = start_big_put(&uri, &big, "/big");
    c.kill_nbd(img);
    let out = put.wait(Duration::from_secs(30));
    assert_eq!(
        out.status.code(),
        Some(8),
        "a put whose server died: {}: {}",
        out.status,
        out.stderr
    );
    assert!(
        out.stderr.contains("NBD connection lost"),
        "the error does not say the connection was lost: {}",
        out.stderr
    );

    c.serve(img);
    fsck_clean(&uri);
    f.check(&uri);
    let names = ls(&uri, "/");
    assert!(
        !names.iter().any(|n| n.starts_with("big")),
        "/big of the failed put is there: {names:?}"
    );
    // The reopened image takes new commits.
    f.put(&uri, "/after", 2 << 20, 14);
    f.check(&uri);
    fsck_clean(&uri);
}

fn osd_killed(c: &Cluster) {
    let img = "osdkill";
    c.new_image(img);
    c.serve(img);
    let uri = c.uri(img);
    mkfs(&uri);
    let mut f = Files::new();
    f.put(&uri, "/keep/one", 100_000, 21);
    f.put(&uri, "/keep/two", 8 << 20, 22);
    let big = f.make("big", FAULT_PUT_BYTES, 23);

    let mut put = start_big_put(&uri, &big, "/big");
    c.script(&["kill-osd"], &[], QUICK)
        .ok("ceph-cluster.sh kill-osd");
    let before = put.rchar();
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "ceph: while the OSD was down the put read {} KiB more (still running: {})",
        (put.rchar() - before) >> 10,
        put.try_wait().is_none()
    );
    let t = Instant::now();
    c.script(&["start-osd"], &[], Duration::from_secs(120))
        .ok("ceph-cluster.sh start-osd");
    eprintln!("ceph: OSD back in {:.1} s", t.elapsed().as_secs_f64());
    // librbd resends what the dead OSD did not acknowledge; the put goes on.
    // It may also fail (the NBD client's I/O timeout, 120 s): never hang.
    let out = put.wait(Duration::from_secs(150));
    // qemu-nbd keeps running through an OSD restart; serve is a no-op then.
    c.serve(img);
    fsck_clean(&uri);
    f.check(&uri);
    if out.status.success() {
        assert!(out.stderr.trim().is_empty(), "put: {}", out.stderr);
        assert_eq!(
            image_hash(&uri, "/big"),
            local_hash(&big),
            "/big after the OSD restart"
        );
        eprintln!("ceph: the put survived the OSD restart");
    } else {
        assert_eq!(
            out.status.code(),
            Some(8),
            "put: {}: {}",
            out.status,
            out.stderr
        );
        let names = ls(&uri, "/");
        assert!(
            !names.iter().any(|n| n.starts_with("big")),
            "/big of the failed put is there: {names:?}"
        );
        eprintln!(
            "ceph: the put failed across the OSD restart: {}",
            out.stderr.trim()
        );
    }
    f.put(&uri, "/after", 2 << 20, 24);
    f.check(&uri);
    fsck_clean(&uri);
}

/// The OSD stays down past the NBD client's I/O timeout (`&timeout=5` in the
/// URI): the put fails with a timeout error within the bound instead of
/// waiting for the cluster; once the OSD is back the image reopens with the
/// last acknowledged commit.
fn osd_down_past_timeout(c: &Cluster) {
    let img = "osdlong";
    c.new_image(img);
    c.serve(img);
    let uri = c.uri(img);
    mkfs(&uri);
    let mut f = Files::new();
    f.put(&uri, "/keep/one", 100_000, 31);
    f.put(&uri, "/keep/two", 8 << 20, 32);
    let big = f.make("big", FAULT_PUT_BYTES, 33);

    let short = format!("{uri}&timeout=5");
    let put = start_big_put(&short, &big, "/big");
    c.script(&["kill-osd"], &[], QUICK)
        .ok("ceph-cluster.sh kill-osd");
    let t = Instant::now();
    let out = put.wait(Duration::from_secs(30));
    eprintln!(
        "ceph: the put ended {:.1} s after the OSD stopped: {}",
        t.elapsed().as_secs_f64(),
        out.stderr.trim()
    );
    assert_eq!(
        out.status.code(),
        Some(8),
        "a put whose OSD is gone: {}: {}",
        out.status,
        out.stderr
    );
    assert!(
        out.stderr.contains("timed out"),
        "the error does not name the timeout: {}",
        out.stderr
    );
    c.script(&["start-osd"], &[], Duration::from_secs(120))
        .ok("ceph-cluster.sh start-osd");
    c.serve(img);
    fsck_clean(&uri);
    f.check(&uri);
    let names = ls(&uri, "/");
    assert!(
        !names.iter().any(|n| n.starts_with("big")),
        "/big of the failed put is there: {names:?}"
    );
    f.put(&uri, "/after", 2 << 20, 34);
    f.check(&uri);
    fsck_clean(&uri);
}

#[test]
fn ceph_rbd_over_nbd() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED: {why}");
        return;
    }
    let t = Instant::now();
    let cluster = Cluster::up();
    let mut failed = Vec::new();
    let scenarios: [(&str, fn(&Cluster)); 4] = [
        ("basic", basic),
        ("qemu_nbd_killed", qemu_nbd_killed),
        ("osd_killed", osd_killed),
        ("osd_down_past_timeout", osd_down_past_timeout),
    ];
    for (name, f) in scenarios {
        let s = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| f(&cluster)));
        eprintln!(
            "ceph: {name}: {} in {:.1} s",
            if r.is_ok() { "ok" } else { "FAILED" },
            s.elapsed().as_secs_f64()
        );
        if r.is_err() {
            failed.push(name);
        }
    }
    drop(cluster);
    eprintln!("ceph: tier done in {:.1} s", t.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "failed scenarios: {failed:?}");
}
