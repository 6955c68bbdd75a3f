//! Real FUSE mounts of notafs images through the `notafs-fuse` binary.
//!
//! Needs /dev/fuse, fusermount3 and root (as CI and the dev machines have);
//! without them each test prints "SKIPPED: <reason>" and passes.
use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use notafs_blockdev::file::{FileDevice, FileOptions};
use notafs_blockdev::BlockDevice;
use notafs_core::check::{check, CheckOptions};
use notafs_core::{FormatOptions, Fs, OpenOptions};

const BIN: &str = env!("CARGO_BIN_EXE_notafs-fuse");

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Why FUSE tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    if !which("fusermount3") {
        return Some("fusermount3 is not installed (Debian package fuse3)".into());
    }
    if !is_root() {
        return Some("not root".into());
    }
    None
}

macro_rules! require_fuse {
    () => {
        if let Some(why) = skip_reason() {
            println!("SKIPPED: {why}");
            return;
        }
    };
}

/// A deterministic, non-repeating-looking byte pattern.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Image {
    _dir: tempfile::TempDir,
    path: PathBuf,
    mnt: PathBuf,
}

impl Image {
    /// A fresh image of `mib` MiB, formatted and filled by `fill`
    /// (committed by this function).
    fn new(mib: u64, fill: impl FnOnce(&Fs)) -> Image {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let dev = FileDevice::create(&path, mib << 20).unwrap();
        let fs = Fs::format(Arc::new(dev), &FormatOptions::default()).unwrap();
        fill(&fs);
        if fs.has_changes() {
            fs.commit().unwrap();
        }
        drop(fs);
        Image {
            _dir: dir,
            path,
            mnt,
        }
    }

    fn device(&self) -> Arc<dyn BlockDevice> {
        Arc::new(
            FileDevice::open(
                &self.path,
                &FileOptions {
                    read_only: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    }

    /// Open the image with the core API, read-only.
    fn open(&self) -> Fs {
        Fs::open(
            self.device(),
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn assert_clean(&self) {
        let r = check(
            self.device(),
            &CheckOptions {
                verify_data: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(r.is_clean(), "check found problems: {:#?}", r.problems);
    }

    fn mount(&self, args: &[&str]) -> Mount {
        Mount::start(&self.path, &self.mnt, args)
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

fn is_mounted(mnt: &Path) -> bool {
    let want = mnt.to_str().unwrap();
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want))
}

/// A running `notafs-fuse`; unmounted on drop whatever happened.
struct Mount {
    child: Option<Child>,
    mnt: PathBuf,
}

impl Mount {
    fn start(img: &Path, mnt: &Path, args: &[&str]) -> Mount {
        let child = Command::new(BIN)
            .args(args)
            .arg(img)
            .arg(mnt)
            .env(
                "RUST_LOG",
                // NOTAFS_FUSE_TEST_LOG=fuser=debug shows every request.
                std::env::var("NOTAFS_FUSE_TEST_LOG")
                    .unwrap_or_else(|_| "info,fuser::session=error".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn notafs-fuse");
        let mut m = Mount {
            child: Some(child),
            mnt: mnt.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mnt) {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                panic!("notafs-fuse exited before mounting: {st}");
            }
            assert!(Instant::now() < deadline, "mount did not appear in 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        m
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Wait for the daemon to exit (after an unmount was asked for).
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("already waited");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("notafs-fuse did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Unmount with fusermount3 -u and wait for a clean exit.
    fn unmount(mut self) -> ExitStatus {
        // The kernel releases a closed file asynchronously: right after a
        // close the mount can still be busy for a moment (EBUSY).
        let mut tries = 0;
        let st = loop {
            let st = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status()
                .unwrap();
            tries += 1;
            if st.success() || tries == 50 {
                break st;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(st.success(), "fusermount3 -u failed: {st}");
        let st = self.wait_exit(Duration::from_secs(60));
        assert!(!is_mounted(&self.mnt));
        st
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
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[allow(unsafe_code)]
fn getxattr(p: &Path, name: &str) -> Option<String> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of the given size.
    let n = unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

const BIG: usize = 3 * 1024 * 1024 + 1234;

fn sample(fs: &Fs) {
    fs.create("hello.txt")
        .unwrap()
        .write_at(0, b"hello, fuse\n")
        .unwrap();
    fs.create_dir_all("dir/sub").unwrap();
    fs.create_dir("emptydir").unwrap();
    fs.create("empty").unwrap();
    fs.create("dir/sub/big.bin")
        .unwrap()
        .write_at(0, &pattern(BIG, 1))
        .unwrap();
    fs.create("dir/a.txt").unwrap().write_at(0, b"a").unwrap();
}

#[test]
fn read_only_mount_serves_files_to_ordinary_tools() {
    require_fuse!();
    let img = Image::new(64, sample);
    let generation = img.open().generation();
    let m = img.mount(&[]);

    // std::fs
    let mut names: Vec<String> = fs::read_dir(&img.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "empty", "emptydir", "hello.txt"]);
    assert_eq!(fs::read(img.p("hello.txt")).unwrap(), b"hello, fuse\n");
    assert_eq!(fs::read(img.p("empty")).unwrap(), b"");
    let big = fs::read(img.p("dir/sub/big.bin")).unwrap();
    assert_eq!(big.len(), BIG);
    assert!(big == pattern(BIG, 1), "big.bin content differs");
    let md = fs::metadata(img.p("dir/sub/big.bin")).unwrap();
    assert!(md.is_file());
    assert_eq!(md.len(), BIG as u64);
    assert_eq!(md.mode() & 0o7777, 0o644);
    assert_eq!(md.nlink(), 1);
    assert_eq!(md.uid(), 0);
    assert!(md.blocks() >= (BIG as u64).div_ceil(512));
    let dmd = fs::metadata(img.p("dir")).unwrap();
    assert!(dmd.is_dir());
    assert_eq!(dmd.mode() & 0o7777, 0o755);
    assert_eq!(dmd.nlink(), 2);
    // The core's inode numbers show through.
    let core = img.open();
    assert_eq!(md.ino(), core.stat("dir/sub/big.bin").unwrap().ino);
    assert_eq!(fs::metadata(&img.mnt).unwrap().ino(), 1);

    // Random reads at odd offsets.
    let mut f = fs::File::open(img.p("dir/sub/big.bin")).unwrap();
    for off in [0u64, 1, 4095, 4096, 1 << 20, BIG as u64 - 7] {
        let mut buf = [0u8; 10];
        let n = f.read_at(&mut buf, off).unwrap();
        let want = &big[off as usize..(off as usize + 10).min(BIG)];
        assert_eq!(&buf[..n], want, "at {off}");
    }
    f.seek(SeekFrom::Start(BIG as u64)).unwrap();
    let mut rest = Vec::new();
    assert_eq!(f.read_to_end(&mut rest).unwrap(), 0);
    drop(f);

    // Ordinary tools.
    let ls = run(Command::new("ls").arg("-la").arg(&img.mnt));
    for n in ["dir", "empty", "emptydir", "hello.txt"] {
        assert!(ls.contains(n), "ls -la lacks {n}: {ls}");
    }
    assert_eq!(
        run(Command::new("cat").arg(img.p("hello.txt"))),
        "hello, fuse\n"
    );
    let local = img._dir.path().join("big.local");
    fs::write(&local, pattern(BIG, 1)).unwrap();
    run(Command::new("cmp")
        .arg(&local)
        .arg(img.p("dir/sub/big.bin")));
    assert_eq!(
        run(Command::new("stat")
            .args(["-c", "%s %F"])
            .arg(img.p("dir/sub/big.bin")))
        .trim(),
        format!("{BIG} regular file")
    );
    let found = run(Command::new("find").arg(".").current_dir(&img.mnt));
    let mut found: Vec<&str> = found.lines().collect();
    found.sort();
    assert_eq!(
        found,
        [
            ".",
            "./dir",
            "./dir/a.txt",
            "./dir/sub",
            "./dir/sub/big.bin",
            "./empty",
            "./emptydir",
            "./hello.txt"
        ]
    );
    let df = run(Command::new("df").arg("-k").arg(&img.mnt));
    assert!(df.lines().count() >= 2, "df: {df}");

    // Missing names and wrong kinds.
    let e = fs::metadata(img.p("nope")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOENT);
    let e = fs::read_dir(img.p("hello.txt")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOTDIR);

    // The generation shown.
    assert_eq!(
        getxattr(&img.mnt, "user.notafs.generation"),
        Some(generation.to_string())
    );

    // Nothing can be changed.
    let e = fs::File::create(img.p("new")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS);
    let e = fs::OpenOptions::new()
        .write(true)
        .open(img.p("hello.txt"))
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS);
    assert_eq!(
        errno_of(&fs::create_dir(img.p("d")).unwrap_err()),
        libc::EROFS
    );
    assert_eq!(
        errno_of(&fs::remove_file(img.p("hello.txt")).unwrap_err()),
        libc::EROFS
    );
    assert_eq!(
        errno_of(&fs::rename(img.p("hello.txt"), img.p("x")).unwrap_err()),
        libc::EROFS
    );

    assert!(m.unmount().success());
    // Untouched.
    assert_eq!(img.open().generation(), generation);
    img.assert_clean();
}

#[test]
fn rw_mount_commits_changes_at_unmount() {
    require_fuse!();
    let img = Image::new(64, |fs| {
        fs.create("keep.txt")
            .unwrap()
            .write_at(0, &pattern(10_000, 2))
            .unwrap();
        fs.create("old.txt").unwrap().write_at(0, b"old").unwrap();
        fs.create("victim.txt")
            .unwrap()
            .write_at(0, b"victim")
            .unwrap();
        fs.create_dir("dir").unwrap();
        fs.create("dir/x").unwrap().write_at(0, b"x").unwrap();
    });
    let g0 = img.open().generation();
    let m = img.mount(&["--rw", "--commit-interval", "0"]);

    // A new file, written in pieces (unaligned, with a hole).
    let data = pattern((1 << 20) + 123, 3);
    {
        let mut f = fs::File::create(img.p("new.bin")).unwrap();
        f.write_all(&data[..5000]).unwrap();
        f.write_all(&data[5000..]).unwrap();
    }
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(img.p("sparse"))
            .unwrap();
        f.write_at(b"end", 3 << 20).unwrap();
    }
    fs::create_dir(img.p("d2")).unwrap();
    fs::create_dir_all(img.p("d2/deep/deeper")).unwrap();
    fs::write(img.p("d2/deep/deeper/f"), b"deep").unwrap();
    fs::rename(img.p("old.txt"), img.p("d2/renamed.txt")).unwrap();
    // Rename over an existing file.
    fs::write(img.p("replacement"), b"replacement").unwrap();
    fs::rename(img.p("replacement"), img.p("victim.txt")).unwrap();
    // Rename a directory: what is below it follows.
    fs::rename(img.p("d2/deep"), img.p("moved")).unwrap();
    assert_eq!(fs::read(img.p("moved/deeper/f")).unwrap(), b"deep");
    fs::remove_file(img.p("dir/x")).unwrap();
    fs::remove_dir(img.p("dir")).unwrap();
    // Overwrite in the middle, then truncate.
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(img.p("keep.txt"))
            .unwrap();
        f.write_at(b"MIDDLE", 4000).unwrap();
        f.set_len(6000).unwrap();
    }
    // O_TRUNC through the shell.
    run(Command::new("sh")
        .arg("-c")
        .arg("printf 'via shell' > \"$1\"")
        .arg("sh")
        .arg(img.p("shell.txt")));
    run(Command::new("sh")
        .arg("-c")
        .arg("printf 'short' > \"$1\"")
        .arg("sh")
        .arg(img.p("shell.txt")));
    // cp of a local file, and touch.
    let local = img._dir.path().join("local");
    fs::write(&local, pattern(200_000, 4)).unwrap();
    run(Command::new("cp").arg(&local).arg(img.p("copied")));
    run(Command::new("touch").arg(img.p("touched")));
    let before = fs::metadata(img.p("copied")).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    run(Command::new("touch").arg(img.p("copied")));
    let after = fs::metadata(img.p("copied")).unwrap().modified().unwrap();
    assert!(
        after > before,
        "touch did not move mtime: {before:?} -> {after:?}"
    );
    // A given time is stored (touch -d, cp -p, rsync, tar x).
    run(Command::new("touch")
        .args(["-d", "2001-01-01 00:00:00 UTC"])
        .arg(img.p("copied")));
    assert_eq!(
        fs::metadata(img.p("copied")).unwrap().modified().unwrap(),
        UNIX_EPOCH + Duration::from_secs(978_307_200)
    );
    assert!(after > UNIX_EPOCH);

    // The mount sees its own uncommitted changes.
    let mut want_keep = pattern(10_000, 2);
    want_keep[4000..4006].copy_from_slice(b"MIDDLE");
    want_keep.truncate(6000);
    assert_eq!(fs::read(img.p("keep.txt")).unwrap(), want_keep);
    assert_eq!(fs::read(img.p("new.bin")).unwrap(), data);
    assert_eq!(fs::metadata(img.p("sparse")).unwrap().len(), (3 << 20) + 3);
    assert!(!img.p("old.txt").exists());
    // Already committed, without fsync or interval: every close and every
    // namespace change commits before it returns.
    assert!(img.open().generation() > g0);
    assert_eq!(img.open().snapshot().read_to_vec("new.bin").unwrap(), data);

    let st = m.unmount();
    assert!(st.success(), "exit status {st}");

    let fs = img.open();
    assert!(fs.generation() > g0);
    let s = fs.snapshot();
    assert_eq!(s.read_to_vec("new.bin").unwrap(), data);
    let sparse = s.read_to_vec("sparse").unwrap();
    assert_eq!(sparse.len(), (3 << 20) + 3);
    assert!(sparse[..3 << 20].iter().all(|b| *b == 0));
    assert_eq!(&sparse[3 << 20..], b"end");
    assert_eq!(s.read_to_vec("d2/renamed.txt").unwrap(), b"old");
    assert_eq!(s.read_to_vec("victim.txt").unwrap(), b"replacement");
    assert_eq!(s.read_to_vec("moved/deeper/f").unwrap(), b"deep");
    assert_eq!(s.read_to_vec("keep.txt").unwrap(), want_keep);
    assert_eq!(s.read_to_vec("shell.txt").unwrap(), b"short");
    assert_eq!(s.read_to_vec("copied").unwrap(), pattern(200_000, 4));
    assert_eq!(s.read_to_vec("touched").unwrap(), b"");
    for gone in ["old.txt", "replacement", "dir", "dir/x", "d2/deep"] {
        assert!(s.stat(gone).is_err(), "{gone} still exists");
    }
    let mut root: Vec<String> = s
        .read_dir("")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    root.sort();
    assert_eq!(
        root,
        [
            "copied",
            "d2",
            "keep.txt",
            "moved",
            "new.bin",
            "shell.txt",
            "sparse",
            "touched",
            "victim.txt"
        ]
    );
    drop(s);
    drop(fs);
    img.assert_clean();
}

#[test]
fn rw_mount_errors_map_to_errno() {
    require_fuse!();
    let img = Image::new(32, |fs| {
        fs.create_dir_all("full/sub").unwrap();
        fs.create("file").unwrap();
    });
    let m = img.mount(&["--rw", "--commit-interval", "0"]);
    let e = |r: std::io::Result<()>| errno_of(&r.unwrap_err());
    assert_eq!(e(fs::remove_dir(img.p("full"))), libc::ENOTEMPTY);
    assert_eq!(e(fs::create_dir(img.p("full"))), libc::EEXIST);
    assert_eq!(e(fs::remove_file(img.p("full"))), libc::EISDIR);
    assert_eq!(e(fs::remove_dir(img.p("file"))), libc::ENOTDIR);
    assert_eq!(e(fs::remove_file(img.p("missing"))), libc::ENOENT);
    assert_eq!(e(fs::create_dir(img.p("file/sub"))), libc::ENOTDIR);
    assert_eq!(
        e(fs::rename(img.p("full"), img.p("full/sub/inside"))),
        libc::EINVAL
    );
    assert_eq!(
        e(std::os::unix::fs::symlink("file", img.p("link"))),
        libc::EPERM
    );
    assert_eq!(e(fs::hard_link(img.p("file"), img.p("hard"))), libc::EPERM);
    assert_eq!(e(run_mkfifo(&img.p("fifo"))), libc::EPERM);
    let e2 = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(img.p("file"))
        .unwrap_err();
    assert_eq!(errno_of(&e2), libc::EEXIST);

    // An open file follows a rename of itself and of its directory.
    fs::create_dir(img.p("dd")).unwrap();
    let f = fs::File::create(img.p("dd/open")).unwrap();
    f.write_at(b"before ", 0).unwrap();
    fs::rename(img.p("dd/open"), img.p("dd/renamed")).unwrap();
    fs::rename(img.p("dd"), img.p("dd2")).unwrap();
    f.write_at(b"after", 7).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 12);
    drop(f);
    assert_eq!(fs::read(img.p("dd2/renamed")).unwrap(), b"before after");
    // notafs has no unlinked-but-open files: the handle goes stale.
    let f = fs::File::open(img.p("dd2/renamed")).unwrap();
    fs::remove_file(img.p("dd2/renamed")).unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(errno_of(&f.read_at(&mut buf, 0).unwrap_err()), libc::ESTALE);
    drop(f);

    assert!(m.unmount().success());
    let s = img.open().snapshot();
    assert!(s.stat("dd2").unwrap().is_dir());
    assert!(s.read_dir("dd2").unwrap().is_empty());
    drop(s);
    img.assert_clean();
}

#[allow(unsafe_code)]
fn run_mkfifo(p: &Path) -> std::io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn fsync_commits_while_mounted() {
    require_fuse!();
    let img = Image::new(32, |_| {});
    let g0 = img.open().generation();
    let m = img.mount(&["--rw", "--commit-interval", "0"]);
    let mut f = fs::File::create(img.p("synced")).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    // Another reader of the image sees the commit while still mounted.
    let fs = img.open();
    assert_eq!(fs.generation(), g0 + 1);
    assert_eq!(fs.snapshot().read_to_vec("synced").unwrap(), b"durable");
    drop(fs);
    // Directory fsync commits too.
    fs::create_dir(img.p("newdir")).unwrap();
    fs::File::open(&img.mnt).unwrap().sync_all().unwrap();
    assert!(img.open().stat("newdir").unwrap().is_dir());
    assert_eq!(
        getxattr(&img.mnt, "user.notafs.committed"),
        Some((g0 + 2).to_string())
    );
    // Nothing pending: the unmount commits nothing more (it may seal the
    // last one-flush commit: one log-free slot with the same tree).
    drop(f);
    assert!(m.unmount().success());
    let g = img.open().generation();
    assert!(g == g0 + 2 || g == g0 + 3, "generation {g} after unmount");
    assert!(img.open().stat("newdir").unwrap().is_dir());
    img.assert_clean();
}

#[test]
fn periodic_commit() {
    require_fuse!();
    let img = Image::new(32, |_| {});
    let g0 = img.open().generation();
    let m = img.mount(&["--rw", "--commit-interval", "1"]);
    fs::write(img.p("later"), b"eventually").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let fs = img.open();
        if fs.generation() > g0 {
            assert_eq!(fs.snapshot().read_to_vec("later").unwrap(), b"eventually");
            break;
        }
        assert!(Instant::now() < deadline, "no periodic commit in 15 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(m.unmount().success());
    img.assert_clean();
}

#[test]
fn sigterm_unmounts_and_commits() {
    require_fuse!();
    let img = Image::new(32, |_| {});
    let mut m = img.mount(&["--rw", "--commit-interval", "0"]);
    fs::write(img.p("before-signal"), b"kept").unwrap();
    // SAFETY (in spirit): kill(2) on our own child.
    #[allow(unsafe_code)]
    let r = unsafe { libc::kill(m.pid(), libc::SIGTERM) };
    assert_eq!(r, 0);
    let st = m.wait_exit(Duration::from_secs(30));
    assert!(st.success(), "exit status {st}");
    assert!(!is_mounted(&img.mnt));
    assert_eq!(
        img.open().snapshot().read_to_vec("before-signal").unwrap(),
        b"kept"
    );
    img.assert_clean();
}

#[test]
fn generation_option_shows_old_content() {
    require_fuse!();
    let mut gens = Vec::new();
    let img = Image::new(32, |fs| {
        // Barrier commits: no sealing slot at close, `new` stays newest.
        fs.set_commit_log(false);
        let f = fs.create("v").unwrap();
        f.write_at(0, b"one").unwrap();
        gens.push(fs.commit().unwrap());
        f.write_at(0, b"two!").unwrap();
        fs.create("added-later").unwrap();
        gens.push(fs.commit().unwrap());
    });
    let (old, new) = (gens[0], gens[1]);

    let m = img.mount(&["--generation", &old.to_string()]);
    assert_eq!(fs::read(img.p("v")).unwrap(), b"one");
    assert!(!img.p("added-later").exists());
    assert_eq!(
        getxattr(&img.mnt, "user.notafs.generation"),
        Some(old.to_string())
    );
    assert!(m.unmount().success());

    let m = img.mount(&[]);
    assert_eq!(fs::read(img.p("v")).unwrap(), b"two!");
    assert!(img.p("added-later").exists());
    assert_eq!(
        getxattr(&img.mnt, "user.notafs.generation"),
        Some(new.to_string())
    );
    assert!(m.unmount().success());

    // A generation that is not retained is refused with a message.
    let out = Command::new(BIN)
        .args(["--generation", "999"])
        .arg(&img.path)
        .arg(&img.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("999"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&img.mnt));
}

#[test]
fn many_files_and_forget() {
    require_fuse!();
    let img = Image::new(32, |fs| {
        fs.create_dir("many").unwrap();
        for i in 0..500 {
            fs.create(&format!("many/f{i:04}"))
                .unwrap()
                .write_at(0, format!("{i}").as_bytes())
                .unwrap();
        }
    });
    let m = img.mount(&[]);
    let mut n = 0;
    for e in fs::read_dir(img.p("many")).unwrap() {
        let e = e.unwrap();
        let i: usize = e.file_name().to_str().unwrap()[1..].parse().unwrap();
        assert_eq!(fs::read(e.path()).unwrap(), format!("{i}").as_bytes());
        n += 1;
    }
    assert_eq!(n, 500);
    // Drop the kernel's dentries and inodes: forget must keep the daemon
    // consistent, and a fresh walk must still work.
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
    assert_eq!(fs::read(img.p("many/f0499")).unwrap(), b"499");
    assert!(m.unmount().success());
}

#[test]
fn parallel_readers_and_a_writer() {
    require_fuse!();
    const LEN: usize = 8 << 20;
    let img = Image::new(64, |fs| {
        fs.create("shared")
            .unwrap()
            .write_at(0, &pattern(LEN, 5))
            .unwrap();
    });
    let m = img.mount(&["--rw", "--threads", "4", "--commit-interval", "1"]);
    let want = Arc::new(pattern(LEN, 5));
    let readers: Vec<_> = (0..4u64)
        .map(|t| {
            let path = img.p("shared");
            let want = want.clone();
            std::thread::spawn(move || {
                let f = fs::File::open(&path).unwrap();
                let mut buf = vec![0u8; 300_000];
                for i in 0..40u64 {
                    let off = (i * 7919 * 4096 + t * 12345) % (LEN as u64 - buf.len() as u64);
                    f.read_exact_at(&mut buf, off).unwrap();
                    assert!(buf[..] == want[off as usize..off as usize + buf.len()]);
                }
            })
        })
        .collect();
    // Meanwhile another file is written in 1 MiB pieces (and the periodic
    // commit runs under the readers).
    let data = pattern(24 << 20, 6);
    {
        let mut f = fs::File::create(img.p("written")).unwrap();
        for c in data.chunks(1 << 20) {
            f.write_all(c).unwrap();
        }
    }
    for r in readers {
        r.join().unwrap();
    }
    assert!(fs::read(img.p("written")).unwrap() == data);
    assert!(m.unmount().success());
    let s = img.open().snapshot();
    assert!(s.read_to_vec("written").unwrap() == data);
    assert!(s.read_to_vec("shared").unwrap()[..] == want[..]);
    drop(s);
    img.assert_clean();
}

/// Drop the page cache (the mount's files included: FOPEN_KEEP_CACHE
/// keeps it across opens), then read the image back in, so that both the
/// core and the mount read a cached image and only the FUSE path differs.
fn cold_mount_warm_image(img: &Image) {
    let _ = fs::write("/proc/sys/vm/drop_caches", "1");
    let mut f = fs::File::open(&img.path).unwrap();
    std::io::copy(&mut f, &mut std::io::sink()).unwrap();
}

/// Read throughput of a 256 MiB file through the mount and through the
/// core API. Run with `cargo test --release -p notafs-fuse --test mount --
/// --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput() {
    require_fuse!();
    const SIZE: usize = 256 << 20;
    let img = Image::new(640, |fs| {
        let f = fs.create("big").unwrap();
        let chunk = pattern(8 << 20, 9);
        for i in 0..SIZE / chunk.len() {
            f.write_at((i * chunk.len()) as u64, &chunk).unwrap();
        }
    });
    let mib = (SIZE >> 20) as f64;

    for bs in [128usize << 10, 1 << 20] {
        cold_mount_warm_image(&img);
        let fs = img.open();
        let s = fs.snapshot();
        let f = s.open("big").unwrap();
        let mut buf = vec![0u8; bs];
        let t = Instant::now();
        let mut off = 0u64;
        while (off as usize) < SIZE {
            off += f.read_at(off, &mut buf).unwrap() as u64;
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "core API read_at bs={}k: {:.0} MiB/s ({secs:.2} s)",
            bs >> 10,
            mib / secs
        );
    }

    for threads in ["1", "2", "4"] {
        let m = img.mount(&["--threads", threads]);
        for bs in ["128k", "1M"] {
            cold_mount_warm_image(&img);
            let dd = || {
                let t = Instant::now();
                run(Command::new("dd")
                    .arg(format!("if={}", img.p("big").display()))
                    .arg("of=/dev/null")
                    .arg(format!("bs={bs}")));
                t.elapsed().as_secs_f64()
            };
            let cold = dd();
            let warm = dd();
            println!(
                "FUSE threads={threads} dd bs={bs}: {:.0} MiB/s ({cold:.2} s); \
                 again from the kernel page cache {:.0} MiB/s",
                mib / cold,
                mib / warm
            );
        }
        assert!(m.unmount().success());
    }

    // Writes through a --rw mount, committed by conv=fsync.
    let m = img.mount(&["--rw", "--commit-interval", "0"]);
    let t = Instant::now();
    run(Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", img.p("w").display()))
        .args(["bs=1M", "count=256", "conv=fsync"]));
    let secs = t.elapsed().as_secs_f64();
    println!(
        "FUSE --rw dd write bs=1M conv=fsync: {:.0} MiB/s ({secs:.2} s)",
        mib / secs
    );
    assert!(m.unmount().success());
}

/// Unmount means committed (issue 8, item 6): 1 GiB written without any
/// fsync, then `fusermount3 -u`, then at once (not waiting for the daemon to
/// exit) the image is read through the core in the next step: the file is
/// there, whole, with the right bytes. The daemon commits at the close that
/// ends the writes (and at every namespace change), so an unmount that
/// succeeds has nothing left to commit.
#[test]
fn unmount_returns_after_the_last_commit() {
    require_fuse!();
    let img = Image::new(1200, |_| {});
    let mut m = img.mount(&["--rw", "--commit-interval", "0"]);
    let chunk = pattern(1 << 20, 42);
    {
        use std::io::Write;
        let mut f = fs::File::create(img.p("big")).unwrap();
        for _ in 0..1024 {
            f.write_all(&chunk).unwrap();
        }
        // No fsync: only the close.
    }
    fs::create_dir(img.p("d")).unwrap();
    fs::rename(img.p("big"), img.p("d/big")).unwrap();
    let st = fusermount_u(&img.mnt);
    assert!(st.success());
    // Right after the unmount returned: the next command sees everything.
    let fs = img.open();
    let meta = fs
        .stat("d/big")
        .expect("d/big committed before the unmount returned");
    assert_eq!(meta.size, 1 << 30);
    {
        let snap = fs.snapshot();
        let f = snap.open("d/big").unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for i in [0u64, 511, 1023] {
            f.read_at(i << 20, &mut buf).unwrap();
            assert!(buf == chunk, "MiB {i} differs");
        }
    }
    drop(fs);
    let st = m.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "{st}");
    img.assert_clean();
}

/// Mount conventions: a mountpoint that is a regular file is refused with
/// exit 8 and one line; a 512-byte-block image mounts without options
/// (the block size comes from the superblock); the daemon is quiet by
/// default (no INFO per commit, no colour escapes into a file).
#[test]
fn mount_conventions_and_quiet_logs() {
    require_fuse!();
    let img = Image::new(16, |fs| {
        fs.create("a").unwrap().write_at(0, b"hello").unwrap();
    });
    let not_dir = img._dir.path().join("file");
    fs::write(&not_dir, b"x").unwrap();
    let out = Command::new(BIN)
        .arg(&img.path)
        .arg(&not_dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(8), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a directory"), "{err}");

    // 512-byte blocks.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.img");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    {
        let dev = FileDevice::create(&path, 16 << 20).unwrap();
        drop(dev);
        let dev = FileDevice::open(
            &path,
            &FileOptions {
                block_size: Some(512),
                ..Default::default()
            },
        )
        .unwrap();
        let fs = Fs::format(Arc::new(dev), &FormatOptions::default()).unwrap();
        fs.create("small")
            .unwrap()
            .write_at(0, b"512-byte blocks")
            .unwrap();
        fs.commit().unwrap();
    }
    // Quiet: stderr goes to a file; no RUST_LOG.
    let log = dir.path().join("log");
    let child = Command::new(BIN)
        .args(["--rw"])
        .arg(&path)
        .arg(&mnt)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut m = Mount {
        child: Some(child),
        mnt: mnt.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(&mnt) {
        assert!(Instant::now() < deadline, "512-byte image did not mount");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fs::read(mnt.join("small")).unwrap(), b"512-byte blocks");
    for i in 0..20 {
        fs::write(mnt.join(format!("f{i}")), b"data").unwrap();
    }
    let st = fusermount_u(&mnt);
    assert!(st.success());
    assert!(m.wait_exit(Duration::from_secs(30)).success());
    let logged = fs::read_to_string(&log).unwrap();
    assert!(
        !logged.contains('\u{1b}'),
        "colour escapes in a file: {logged:?}"
    );
    assert!(!logged.contains("INFO"), "INFO lines by default: {logged}");
}

/// Out of space, a removal frees its blocks for the next writes at once:
/// older generations give their space back (issue 12).
#[test]
fn rm_then_write_on_a_full_mount() {
    require_fuse!();
    let img = Image::new(64, |_| {});
    let m = img.mount(&["--rw"]);
    let chunk = pattern(1 << 20, 9);
    let write = |name: &str, mib: usize| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = fs::File::create(img.p(name))?;
        for _ in 0..mib {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    };
    write("one", 52).expect("first file fits");
    fs::remove_file(img.p("one")).unwrap();
    write("two", 52).expect("the removed file's space is writable again");
    assert_eq!(fs::metadata(img.p("two")).unwrap().len(), 52 << 20);
    assert!(m.unmount().success());
    img.assert_clean();
}

/// `fusermount3 -u`, retried while the kernel still holds a just-closed
/// file (EBUSY for a moment after close).
fn fusermount_u(mnt: &Path) -> ExitStatus {
    for _ in 0..50 {
        let st = Command::new("fusermount3")
            .arg("-u")
            .arg(mnt)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if st.success() {
            return st;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("fusermount3")
        .arg("-u")
        .arg(mnt)
        .status()
        .unwrap()
}

/// rsync -a works and is incremental (issue 12): chmod (its temporaries are
/// created 0600), a given mtime and, as root, chown are stored in the inode;
/// the second run transfers nothing; the attributes survive an unmount.
#[test]
fn rsync_archive_is_incremental() {
    require_fuse!();
    if !which("rsync") {
        println!("SKIPPED: rsync not installed");
        return;
    }
    let img = Image::new(64, |_| {});
    let src = img._dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), b"alpha").unwrap();
    fs::write(src.join("sub/b.bin"), pattern(100_000, 3)).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(src.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o700)).unwrap();
    }
    run(Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(src.join("a.txt")));
    let m = img.mount(&["--rw"]);
    let rsync = |extra: &[&str]| {
        let out = Command::new("rsync")
            .args(["-a", "--stats"])
            .args(extra)
            .arg(format!("{}/", src.display()))
            .arg(format!("{}/", img.mnt.display()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "rsync failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let first = rsync(&[]);
    assert!(
        first.contains("Number of regular files transferred: 2"),
        "{first}"
    );
    let second = rsync(&[]);
    assert!(
        second.contains("Number of regular files transferred: 0"),
        "the second rsync -a copied again: {second}"
    );
    let check = |p: &Path| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let a = fs::metadata(p.join("a.txt")).unwrap();
        assert_eq!(a.permissions().mode() & 0o7777, 0o640);
        assert_eq!(
            a.modified().unwrap(),
            fs::metadata(src.join("a.txt")).unwrap().modified().unwrap()
        );
        let d = fs::metadata(p.join("sub")).unwrap();
        assert_eq!(d.permissions().mode() & 0o7777, 0o700);
        assert_eq!(a.uid(), fs::metadata(src.join("a.txt")).unwrap().uid());
    };
    check(&img.mnt);
    assert!(m.unmount().success());
    let m = img.mount(&[]);
    check(&img.mnt);
    drop(m);
    img.assert_clean();
}

/// df -i adds up: total = used + free, used = the files and directories
/// (issue 12: it showed "Inodes 0, IUsed -4194293").
#[test]
fn statfs_inodes_add_up() {
    require_fuse!();
    let img = Image::new(32, |fs| {
        fs.create_dir("d").unwrap();
        fs.create("d/a").unwrap().write_at(0, b"x").unwrap();
        fs.create("b").unwrap();
    });
    let m = img.mount(&[]);
    let out = run(Command::new("df")
        .args(["--output=itotal,iused,iavail"])
        .arg(&img.mnt));
    let nums: Vec<i64> = out
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(nums[0], nums[1] + nums[2], "{out}");
    assert_eq!(nums[1], 4, "{out}"); // root, d, d/a, b
    drop(m);
}

/// `mount -t fuse.notafs IMAGE MNT -o rw,...` and the helper it runs
/// (`mount.fuse.notafs`, built as `mount-fuse-notafs`): options mapped to
/// flags, mount(8)'s generic options ignored, unknown ones refused (16),
/// the helper returns once the mount is in place.
#[test]
fn mount_helper_and_mount_t_fuse_notafs() {
    require_fuse!();
    let helper = env!("CARGO_BIN_EXE_mount-fuse-notafs");
    let img = Image::new(32, |fs| {
        fs.create("hello").unwrap().write_at(0, b"hi").unwrap();
    });
    let out = Command::new(helper)
        .arg(&img.path)
        .arg(&img.mnt)
        .args(["-o", "rw,bogus_option"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(16), "{out:?}");
    assert!(!is_mounted(&img.mnt));

    let st = Command::new(helper)
        .arg(&img.path)
        .arg(&img.mnt)
        .args(["-o", "rw,noatime,nodev,x-systemd.automount"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        is_mounted(&img.mnt),
        "the helper returned before the mount was in place"
    );
    assert_eq!(fs::read(img.p("hello")).unwrap(), b"hi");
    fs::write(img.p("via-helper"), b"written").unwrap();
    assert!(fusermount_u(&img.mnt).success());
    assert_eq!(
        img.open().snapshot().read_to_vec("via-helper").unwrap(),
        b"written"
    );

    // mount(8) itself, which runs /sbin/mount.fuse.notafs for the type
    // fuse.notafs: only as root, and only if no helper is installed there.
    let sbin = Path::new("/sbin/mount.fuse.notafs");
    if !is_root() || sbin.exists() || !which("mount") {
        println!(
            "SKIPPED: mount -t fuse.notafs (needs root and no installed /sbin/mount.fuse.notafs)"
        );
        return;
    }
    struct Unlink<'a>(&'a Path);
    impl Drop for Unlink<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_file(self.0);
        }
    }
    if std::os::unix::fs::symlink(helper, sbin).is_err() {
        println!("SKIPPED: mount -t fuse.notafs (cannot install the helper in /sbin)");
        return;
    }
    let _guard = Unlink(sbin);
    // status(), not output(): the daemon keeps the inherited stderr open.
    let st = Command::new("mount")
        .args(["-t", "fuse.notafs", "-o", "rw"])
        .arg(&img.path)
        .arg(&img.mnt)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "mount -t fuse.notafs: {st}");
    fs::write(img.p("via-mount"), b"mounted").unwrap();
    let st = Command::new("umount").arg(&img.mnt).status().unwrap();
    assert!(st.success());
    assert_eq!(
        img.open().snapshot().read_to_vec("via-mount").unwrap(),
        b"mounted"
    );
}

#[allow(unsafe_code)]
fn lseek_raw(f: &fs::File, off: i64, whence: i32) -> Result<i64, i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; lseek touches no memory of ours.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    } else {
        Ok(r)
    }
}

/// du / ls -s and SEEK_DATA / SEEK_HOLE (issue 12): a 20 MiB file with a
/// 10 MiB hole occupies about 10 MiB (st_blocks counts allocated blocks, as
/// ext4), lseek finds its data and holes, and `cp` out of the mount keeps
/// it sparse; on the read-write mount (open and committed) and read-only.
#[test]
fn du_and_seek_data_hole() {
    require_fuse!();
    const MIB: u64 = 1 << 20;
    let img = Image::new(64, |_| {});
    let m = img.mount(&["--rw", "--commit-interval", "0"]);
    let data = pattern(5 * MIB as usize, 12);
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(img.p("sparse"))
        .unwrap();
    // [0, 5 MiB) data, [5, 15 MiB) hole, [15, 20 MiB) data.
    f.write_all_at(&data, 0).unwrap();
    f.write_all_at(&data, 15 * MIB).unwrap();
    let seeks = |f: &fs::File| {
        assert_eq!(lseek_raw(f, 0, libc::SEEK_DATA), Ok(0));
        assert_eq!(lseek_raw(f, 0, libc::SEEK_HOLE), Ok(5 * MIB as i64));
        assert_eq!(
            lseek_raw(f, 5 * MIB as i64, libc::SEEK_DATA),
            Ok(15 * MIB as i64)
        );
        assert_eq!(
            lseek_raw(f, 7 * MIB as i64 + 3, libc::SEEK_HOLE),
            Ok(7 * MIB as i64 + 3)
        );
        assert_eq!(
            lseek_raw(f, 15 * MIB as i64, libc::SEEK_HOLE),
            Ok(20 * MIB as i64)
        );
        assert_eq!(
            lseek_raw(f, 20 * MIB as i64 - 1, libc::SEEK_DATA),
            Ok(20 * MIB as i64 - 1)
        );
        assert_eq!(
            lseek_raw(f, 20 * MIB as i64, libc::SEEK_DATA),
            Err(libc::ENXIO)
        );
        assert_eq!(
            lseek_raw(f, 20 * MIB as i64, libc::SEEK_HOLE),
            Err(libc::ENXIO)
        );
    };
    let du = |p: &Path| {
        let md = fs::metadata(p).unwrap();
        assert_eq!(md.len(), 20 * MIB);
        let bytes = md.blocks() * 512;
        assert!(
            (10 * MIB..=10 * MIB + 64 * 1024).contains(&bytes),
            "{}: st_blocks {} ({bytes} bytes) for 10 MiB of data",
            p.display(),
            md.blocks()
        );
        // du reads st_blocks: about 10 MiB, not 20.
        let out = run(Command::new("du").arg("-k").arg(p));
        let kib: u64 = out.split_whitespace().next().unwrap().parse().unwrap();
        assert!((10240..=10304).contains(&kib), "du -k: {out}");
    };
    // Still open, not committed (the lseek is answered from the open file).
    seeks(&f);
    drop(f);
    du(&img.p("sparse"));
    let f = fs::File::open(img.p("sparse")).unwrap();
    seeks(&f);
    drop(f);
    // cp (default --sparse=auto) finds the holes with SEEK_HOLE.
    let out = tempfile::tempdir().unwrap();
    let copy = out.path().join("copy");
    run(Command::new("cp").arg(img.p("sparse")).arg(&copy));
    let cmd = fs::metadata(&copy).unwrap();
    assert!(
        cmd.blocks() * 512 <= 11 * MIB,
        "cp out of the mount lost the hole: {} blocks",
        cmd.blocks()
    );
    // --sparse=always too (holes found by lseek, zeros by content).
    let copy2 = out.path().join("copy2");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(img.p("sparse"))
        .arg(&copy2));
    assert!(fs::metadata(&copy2).unwrap().blocks() * 512 <= 11 * MIB);
    let back = fs::read(&copy).unwrap();
    assert_eq!(&back[..5 * MIB as usize], &data[..]);
    assert!(back[5 * MIB as usize..15 * MIB as usize]
        .iter()
        .all(|b| *b == 0));
    assert_eq!(&back[15 * MIB as usize..], &data[..]);
    if which("xfs_io") {
        let o = run(Command::new("xfs_io")
            .args([
                "-r",
                "-c",
                "seek -d 0",
                "-c",
                "seek -h 0",
                "-c",
                "seek -d 6m",
            ])
            .arg(img.p("sparse")));
        for want in ["DATA\t0", "HOLE\t5242880", "DATA\t15728640"] {
            assert!(o.contains(want), "xfs_io seek output lacks {want:?}: {o}");
        }
    }
    assert!(m.unmount().success());
    // The same on a read-only mount (served from a snapshot).
    let m = img.mount(&[]);
    du(&img.p("sparse"));
    let f = fs::File::open(img.p("sparse")).unwrap();
    seeks(&f);
    drop(f);
    assert!(m.unmount().success());
    img.assert_clean();
}

/// `.generations/<G>/` (issue 12): every retained generation, read-only,
/// inside one mount; hidden from the root's listing; its inode numbers do
/// not collide with the live tree's; changes there fail with EROFS.
#[test]
fn generations_view() {
    require_fuse!();
    let img = Image::new(64, |_| {});
    let m = img.mount(&["--rw", "--commit-interval", "0"]);
    let committed = || -> u64 {
        getxattr(&img.mnt, "user.notafs.committed")
            .unwrap()
            .parse()
            .unwrap()
    };
    // v1 (the close commits), then v2 of the same file, and a directory
    // that exists only in the first generation.
    let v1 = pattern(3 << 20, 21);
    fs::create_dir(img.p("d")).unwrap();
    fs::write(img.p("d/inner"), b"only in g1").unwrap();
    fs::write(img.p("file"), &v1).unwrap();
    let g1 = committed();
    fs::remove_file(img.p("d/inner")).unwrap();
    fs::remove_dir(img.p("d")).unwrap();
    fs::write(img.p("file"), b"v2").unwrap();
    let g2 = committed();
    assert!(g2 > g1);

    let gens = img.p(".generations");
    let listed: Vec<u64> = fs::read_dir(&gens)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    assert!(listed.contains(&g1) && listed.contains(&g2), "{listed:?}");
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "{listed:?}");
    let ls = run(Command::new("ls").arg(&gens));
    assert!(ls.lines().any(|l| l == g1.to_string()), "ls: {ls}");
    // Hidden from the root's listing, reachable by name.
    let root = run(Command::new("ls").arg("-a").arg(&img.mnt));
    assert!(!root.contains(".generations"), "ls -a shows it: {root}");
    assert!(fs::metadata(&gens).unwrap().is_dir());

    let old = gens.join(g1.to_string());
    assert_eq!(fs::read(old.join("file")).unwrap(), v1);
    assert_eq!(fs::read(old.join("d/inner")).unwrap(), b"only in g1");
    assert_eq!(
        fs::read(gens.join(g2.to_string()).join("file")).unwrap(),
        b"v2"
    );
    assert_eq!(fs::read(img.p("file")).unwrap(), b"v2");
    assert!(!img.p("d").exists());
    let cat = run(Command::new("cat").arg(old.join("d/inner")));
    assert_eq!(cat, "only in g1");
    let names: Vec<String> = fs::read_dir(&old)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.contains(&"file".into()) && names.contains(&"d".into()));

    // Inode numbers: distinct from the live tree's and between generations.
    let live = fs::metadata(img.p("file")).unwrap();
    let a = fs::metadata(old.join("file")).unwrap();
    let b = fs::metadata(gens.join(g2.to_string()).join("file")).unwrap();
    assert_eq!(a.len(), v1.len() as u64);
    assert!(a.ino() != live.ino() && b.ino() != live.ino() && a.ino() != b.ino());
    assert_ne!(
        fs::metadata(&old).unwrap().ino(),
        fs::metadata(&img.mnt).unwrap().ino()
    );

    // Read-only: every change fails with EROFS.
    let e = fs::OpenOptions::new()
        .write(true)
        .open(old.join("file"))
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "{e}");
    let e = fs::write(old.join("new"), b"x").unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "{e}");
    let e = fs::remove_file(old.join("file")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "{e}");
    let e = fs::create_dir(gens.join("new")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "{e}");
    let e = fs::remove_dir(&gens).unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "{e}");
    let e = fs::rename(img.p("file"), old.join("moved")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "{e}");
    let e = fs::rename(old.join("file"), img.p("stolen")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "{e}");
    let e = fs::set_permissions(
        old.join("file"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "{e}");
    let e = std::os::unix::fs::symlink("file", old.join("link")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "{e}");
    let e = fs::hard_link(old.join("file"), img.p("hard")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "{e}");
    let e = fs::create_dir(img.p(".generations")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EEXIST, "{e}");
    // Names that are not retained generations.
    for bad in ["999999999", "abc", "01", ""] {
        if bad.is_empty() {
            continue;
        }
        let e = fs::metadata(gens.join(bad)).unwrap_err();
        assert_eq!(errno_of(&e), libc::ENOENT, "{bad}: {e}");
    }
    // du of the mount does not walk the generations.
    let du = run(Command::new("du").arg("-sk").arg(&img.mnt));
    let kib: u64 = du.split_whitespace().next().unwrap().parse().unwrap();
    assert!(kib < 100, "du -s walked .generations: {du}");
    // The live tree still works and the live file is unaffected.
    fs::write(img.p("after"), b"ok").unwrap();
    assert_eq!(fs::read(img.p("after")).unwrap(), b"ok");
    assert!(m.unmount().success());

    // A read-only mount has the view too; du and SEEK_HOLE work there.
    let m = img.mount(&[]);
    let old = img.p(&format!(".generations/{g1}/file"));
    assert_eq!(fs::read(&old).unwrap(), v1);
    let md = fs::metadata(&old).unwrap();
    assert_eq!(md.blocks() * 512, v1.len().next_multiple_of(4096) as u64);
    let f = fs::File::open(&old).unwrap();
    assert_eq!(lseek_raw(&f, 0, libc::SEEK_HOLE), Ok(v1.len() as i64));
    assert_eq!(lseek_raw(&f, 0, libc::SEEK_DATA), Ok(0));
    drop(f);
    assert!(m.unmount().success());
    img.assert_clean();
}

/// SIGTERM while a program still holds a written file open (issue 12): the
/// daemon commits what was written, detaches the mount and exits at once
/// (it used to detach lazily and keep the changes uncommitted until the
/// last close); the data is in the image.
#[test]
fn sigterm_with_a_file_open_commits_and_exits() {
    require_fuse!();
    let img = Image::new(32, |_| {});
    let mut m = img.mount(&["--rw", "--commit-interval", "0"]);
    let data = pattern(1 << 20, 31);
    let mut f = fs::File::create(img.p("open-file")).unwrap();
    f.write_all(&data).unwrap();
    f.write_all(b"tail").unwrap();
    // Still open, no fsync, no close.
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on our own child.
    let r = unsafe { libc::kill(m.pid(), libc::SIGTERM) };
    assert_eq!(r, 0);
    let t = Instant::now();
    let st = m.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit status {st}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(!is_mounted(&img.mnt), "still mounted after exit");
    // The holder's next write fails instead of going nowhere silently.
    assert!(f.write_all(b"more").and_then(|_| f.sync_all()).is_err());
    drop(f);
    let fs = img.open();
    let got = fs.snapshot().read_to_vec("open-file").unwrap();
    assert_eq!(got.len(), data.len() + 4);
    assert_eq!(&got[..data.len()], &data[..]);
    assert_eq!(&got[data.len()..], b"tail");
    drop(fs);
    img.assert_clean();
}

/// A page-aligned buffer for O_DIRECT reads.
struct Aligned {
    v: Vec<u8>,
    off: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let v = vec![0u8; len + 4096];
        let off = (4096 - (v.as_ptr() as usize % 4096)) % 4096;
        Aligned { v, off }
    }
    fn buf(&mut self, len: usize) -> &mut [u8] {
        &mut self.v[self.off..self.off + len]
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// FUSE against the library through the same image (issue 12's speed
/// targets: sequential write and read >= 0.8x, random 4 KiB reads >= 0.7x).
/// Best of NOTAFS_FUSE_BENCH_ROUNDS (3) rounds, each contender in the same
/// round; NOTAFS_FUSE_BENCH_MB (512) MiB files, 1 MiB writes and reads,
/// NOTAFS_FUSE_BENCH_IOPS (20000) random 4 KiB O_DIRECT reads (the library:
/// `SnapshotFile::read_at` of 4 KiB at the same offsets). The image stays in
/// the host page cache for both (see cold_mount_warm_image). Run with
/// `cargo test --release -p notafs-fuse --test mount -- --ignored --nocapture fuse_vs_library`.
#[test]
#[ignore]
fn fuse_vs_library() {
    require_fuse!();
    let env = |k: &str, d: usize| -> usize {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mb = env("NOTAFS_FUSE_BENCH_MB", 512);
    let rounds = env("NOTAFS_FUSE_BENCH_ROUNDS", 3);
    let nrand = env("NOTAFS_FUSE_BENCH_IOPS", 20000);
    // Worker threads of the mounts (unset: the daemon's default).
    let threads = std::env::var("NOTAFS_FUSE_BENCH_THREADS").ok();
    let targs = |rw: bool| -> Vec<String> {
        let mut v: Vec<String> = if rw {
            vec!["--rw".into(), "--commit-interval".into(), "0".into()]
        } else {
            Vec::new()
        };
        if let Some(t) = &threads {
            v.push("--threads".into());
            v.push(t.clone());
        }
        v
    };
    let mount = |img: &Image, rw: bool| {
        let a = targs(rw);
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        img.mount(&a)
    };
    let size = mb << 20;
    let img = Image::new((mb as u64) * 3 + 64, |_| {});
    let chunk = pattern(1 << 20, 77);
    let mut offs = Vec::with_capacity(nrand);
    let mut x = 0x1234_5678_9abc_def1u64;
    for _ in 0..nrand {
        offs.push((xorshift(&mut x) % (size as u64 / 4096)) * 4096);
    }
    let rw_dev = || -> Arc<dyn BlockDevice> {
        Arc::new(FileDevice::open(&img.path, &FileOptions::default()).unwrap())
    };
    // The CLI built next to notafs-fuse (cargo build --release -p
    // notafs-cli), if there: `notafs get IMG fuse /dev/null` is the library
    // as a user runs it (process start, open, 1 MiB reads, a write each).
    let cli = Path::new(BIN).with_file_name("notafs");
    let cli = cli.is_file().then_some(cli);
    let mut best = [0f64; 7]; // lib w, fuse w, lib r, fuse r, lib iops, fuse iops, cli get
    for round in 0..rounds {
        // Library: write (write-behind as the CLI's put), commit included.
        let fs = Fs::open(
            rw_dev(),
            &OpenOptions {
                write_behind: Some(8 << 20),
                ..Default::default()
            },
        )
        .unwrap();
        let _ = fs.remove("lib");
        let _ = fs.remove("fuse");
        fs.commit().unwrap();
        let t = Instant::now();
        let f = fs.create("lib").unwrap();
        for i in 0..mb {
            f.write_at((i << 20) as u64, &chunk).unwrap();
        }
        fs.commit().unwrap();
        let lib_w = mb as f64 / t.elapsed().as_secs_f64();
        drop(f);
        drop(fs);
        // FUSE: write through a --rw mount, the close commits.
        let m = mount(&img, true);
        let t = Instant::now();
        let mut f = fs::File::create(img.p("fuse")).unwrap();
        for _ in 0..mb {
            f.write_all(&chunk).unwrap();
        }
        drop(f);
        let fuse_w = mb as f64 / t.elapsed().as_secs_f64();
        assert!(m.unmount().success());
        // Library reads.
        cold_mount_warm_image(&img);
        let fs = img.open();
        let s = fs.snapshot();
        let sf = s.open("fuse").unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let t = Instant::now();
        let mut off = 0u64;
        while (off as usize) < size {
            off += sf.read_at(off, &mut buf).unwrap() as u64;
        }
        let lib_r = mb as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for o in &offs {
            sf.read_at(*o, &mut buf[..4096]).unwrap();
        }
        let lib_iops = nrand as f64 / t.elapsed().as_secs_f64();
        drop(sf);
        drop(s);
        drop(fs);
        let mut cli_r = 0f64;
        if let Some(cli) = &cli {
            cold_mount_warm_image(&img);
            let t = Instant::now();
            run(Command::new(cli)
                .arg("get")
                .arg(&img.path)
                .arg("fuse")
                .arg("/dev/null"));
            cli_r = mb as f64 / t.elapsed().as_secs_f64();
        }
        // FUSE reads (read-only mount, kernel page cache dropped).
        let m = mount(&img, false);
        cold_mount_warm_image(&img);
        let t = Instant::now();
        let mut f = fs::File::open(img.p("fuse")).unwrap();
        let mut n = 0usize;
        loop {
            let k = f.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        assert_eq!(n, size);
        let fuse_r = mb as f64 / t.elapsed().as_secs_f64();
        drop(f);
        let fd = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(img.p("fuse"))
                .unwrap()
        };
        let mut al = Aligned::new(4096);
        let t = Instant::now();
        for o in &offs {
            assert_eq!(fd.read_at(al.buf(4096), *o).unwrap(), 4096);
        }
        let fuse_iops = nrand as f64 / t.elapsed().as_secs_f64();
        drop(fd);
        assert!(m.unmount().success());
        let r = [lib_w, fuse_w, lib_r, fuse_r, lib_iops, fuse_iops, cli_r];
        println!(
            "round {round}: write lib {lib_w:.0} fuse {fuse_w:.0} MiB/s; read lib {lib_r:.0} \
             (notafs get {cli_r:.0}) fuse {fuse_r:.0} MiB/s; random 4k lib {lib_iops:.0} \
             fuse {fuse_iops:.0} IOPS"
        );
        for i in 0..7 {
            best[i] = best[i].max(r[i]);
        }
    }
    println!(
        "best of {rounds}: sequential write lib {:.0} MiB/s, FUSE {:.0} MiB/s = {:.2}x; \
         sequential read lib {:.0} MiB/s, FUSE {:.0} MiB/s = {:.2}x; \
         random 4 KiB reads lib {:.0} IOPS, FUSE {:.0} IOPS = {:.2}x; \
         notafs get {:.0} MiB/s, FUSE read = {:.2}x of it",
        best[0],
        best[1],
        best[1] / best[0],
        best[2],
        best[3],
        best[3] / best[2],
        best[4],
        best[5],
        best[5] / best[4],
        best[6],
        best[3] / best[6].max(1e-9)
    );
}
