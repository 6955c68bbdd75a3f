//! `mount.fuse.notafs`: the mount(8) helper, so that
//! `mount -t fuse.notafs IMAGE MNT -o rw,...` and an fstab line
//! (`/srv/packs.img /mnt/packs fuse.notafs rw,noauto 0 0`) work as for
//! other FUSE filesystems. mount(8) calls it as
//! `mount.fuse.notafs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`; it maps the
//! options to `notafs-fuse` flags, starts the daemon in its own process
//! group, and returns once the mount is in place (or with the daemon's
//! error and exit status).
//!
//! Options: `rw` (read-write; `ro` is the default), `generation=G`,
//! `commit_interval=SECS`, `cache_mib=MIB`, `direct`, `allow_other`;
//! mount(8)'s generic options (`defaults`, `noauto`, `auto`, `user`,
//! `nouser`, `users`, `_netdev`, `nofail`, `noatime`, `nodev`, `nosuid`,
//! `exec`, `noexec`, `x-*`, `comment=*`) are accepted and ignored.
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: mount.fuse.notafs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut pos = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => match it.next() {
                Some(o) => opts.extend(o.split(',').map(str::to_string)),
                None => return usage("-o needs OPTIONS"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            s if s.starts_with("-o") => opts.extend(s[2..].split(',').map(str::to_string)),
            // -s (sloppy), -f (fake), -n (no mtab), -v (verbose), -t TYPE.
            "-t" => {
                let _ = it.next();
            }
            s if s.starts_with('-') => {}
            s => pos.push(s.to_string()),
        }
    }
    let [source, mnt] = match <[String; 2]>::try_from(pos) {
        Ok(p) => p,
        Err(_) => return usage("SOURCE and MOUNTPOINT are needed"),
    };
    let mut flags: Vec<String> = Vec::new();
    for o in opts.iter().filter(|o| !o.is_empty()) {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o.as_str(), None),
        };
        match (k, v) {
            ("rw", None) => flags.push("--rw".into()),
            ("ro", None) => {}
            ("generation", Some(v)) => flags.extend(["--generation".into(), v.to_string()]),
            ("commit_interval", Some(v)) => {
                flags.extend(["--commit-interval".into(), v.to_string()])
            }
            ("cache_mib", Some(v)) => flags.extend(["--cache-mib".into(), v.to_string()]),
            ("direct", None) => flags.push("--direct".into()),
            ("allow_other", None) => flags.push("--allow-other".into()),
            (
                "defaults" | "noauto" | "auto" | "user" | "nouser" | "users" | "_netdev" | "nofail"
                | "noatime" | "relatime" | "nodev" | "nosuid" | "exec" | "noexec" | "dev" | "suid",
                None,
            ) => {}
            (k, _) if k.starts_with("x-") || k == "comment" => {}
            _ => {
                eprintln!("mount.fuse.notafs: unknown option {o:?}");
                return ExitCode::from(notafs_tools_common::EXIT_USAGE as u8);
            }
        }
    }
    let daemon = daemon_path();
    let mut child = match Command::new(&daemon)
        .args(&flags)
        .arg(&source)
        .arg(&mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its own process group: the terminal's Ctrl-C does not reach it.
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mount.fuse.notafs: cannot start {}: {e}", daemon.display());
            return ExitCode::from(notafs_tools_common::EXIT_OPERATIONAL as u8);
        }
    };
    let want = std::fs::canonicalize(&mnt).unwrap_or_else(|_| PathBuf::from(&mnt));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if is_mounted(&want) {
            return ExitCode::SUCCESS;
        }
        if let Ok(Some(st)) = child.try_wait() {
            // The daemon said why on stderr.
            return ExitCode::from(st.code().unwrap_or(8).clamp(1, 255) as u8);
        }
        if Instant::now() > deadline {
            eprintln!("mount.fuse.notafs: {mnt} did not appear within 30 s");
            let _ = child.kill();
            return ExitCode::from(notafs_tools_common::EXIT_OPERATIONAL as u8);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("mount.fuse.notafs: {why}\n{USAGE}");
    ExitCode::from(notafs_tools_common::EXIT_USAGE as u8)
}

/// `notafs-fuse` beside this program, else on PATH.
fn daemon_path() -> PathBuf {
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            for name in ["notafs-fuse"] {
                let p = dir.join(name);
                if p.exists() {
                    return p;
                }
                // Installed layout: sbin/mount.fuse.notafs, bin/notafs-fuse.
                let p = dir.join("../bin").join(name);
                if p.exists() {
                    return p;
                }
            }
        }
    }
    PathBuf::from("notafs-fuse")
}

fn is_mounted(mnt: &Path) -> bool {
    let want = mnt.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*want))
}
