//! `notafs-fuse`: mount a notafs filesystem through FUSE.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use notafs_fuse::{run, MountConfig};

/// Mount a notafs filesystem through FUSE, to inspect it (and, with --rw,
/// change it) with ordinary tools.
///
/// Read-only by default: the mount shows one committed generation, the
/// newest or the one given with --generation, and never changes.
///
/// With --rw, changes go into a transaction that is committed (one atomic
/// root swap) on fsync(2)/fsyncdir, close(2) of a written file, every
/// namespace change, every --commit-interval seconds, and at unmount. After a
/// crash the filesystem is as of the last commit. Only regular files and
/// directories exist; permission bits, owner and modification time are
/// stored.
///
/// MOUNTPOINT/.generations/G/ shows retained generation G read-only (hidden
/// from the root's listing; `ls MOUNTPOINT/.generations` lists them).
///
/// Runs in the foreground until unmounted: `fusermount3 -u MOUNTPOINT`,
/// `umount MOUNTPOINT`, or SIGINT/SIGTERM/SIGHUP. A clean unmount commits
/// (with --rw) and exits 0. A signal while files are still open commits
/// what was written to them, detaches the mount and exits at once.
///
/// The generation shown is readable as the extended attribute
/// user.notafs.generation of the mount's root (user.notafs.committed is the
/// newest commit of a --rw mount).
#[derive(Parser, Debug)]
#[command(
    name = "notafs-fuse",
    version,
    verbatim_doc_comment,
    after_help = notafs_tools_common::DEVICE_FORMS
)]
struct Args {
    /// Device: an image file, a block device or an NBD URI (see DEVICE below).
    device: String,

    /// Directory to mount on.
    mountpoint: PathBuf,

    /// Allow changes (committed on fsync, every --commit-interval and at
    /// unmount).
    #[arg(long)]
    rw: bool,

    /// Show this retained generation instead of the newest (read-only).
    #[arg(long, short = 'g', value_name = "G", conflicts_with = "rw")]
    generation: Option<u64>,

    /// With --rw, commit pending changes every SECS seconds (0: only on
    /// fsync and unmount).
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    commit_interval: u64,

    /// Cache size of the filesystem, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    cache_mib: usize,

    /// Use O_DIRECT on image files (block devices always use it).
    #[arg(long)]
    direct: bool,

    /// FUSE worker threads.
    /// (4 even on 2 cores: while one thread waits for the device or the
    /// kernel, another serves the next readahead request).
    #[arg(long, default_value_t = 4)]
    threads: usize,

    /// Let other users use the mount (the kernel checks the fixed
    /// permissions).
    #[arg(long)]
    allow_other: bool,

    /// Kernel readahead of the mount in KiB (0: kernel default, 128).
    /// Setting it needs root; otherwise the default stays. 4 MiB keeps
    /// several 1 MiB read requests in flight for the worker threads.
    #[arg(long, value_name = "KIB", default_value_t = 4096)]
    readahead_kb: u32,

    /// Stay in the foreground (always the case; accepted for habit).
    #[arg(short = 'f', long)]
    foreground: bool,

    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    // Man page and completions for the install script (same clap definitions).
    notafs_tools_common::generate_docs_if_asked::<Args>("1");
    // Usage errors exit 16, as the other tools (clap alone would exit 2).
    let args: Args = notafs_tools_common::parse_args();
    // Quiet by default (warnings and errors), colour only on a terminal;
    // -v for info (every commit), -vv debug, RUST_LOG for more.
    let level = notafs_tools_common::log_level(args.verbose, false);
    notafs_tools_common::init_logging_at(&format!("{level},fuser::session=error"));
    let _ = args.foreground;
    let cfg = MountConfig {
        device: args.device,
        mountpoint: args.mountpoint,
        rw: args.rw,
        generation: args.generation,
        commit_interval: Duration::from_secs(args.commit_interval),
        cache_bytes: args.cache_mib << 20,
        direct: args.direct,
        threads: args.threads,
        allow_other: args.allow_other,
        readahead_kb: (args.readahead_kb > 0).then_some(args.readahead_kb),
    };
    match run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notafs-fuse: {e}");
            // Operational error, as e2fsprogs and the other notafs tools.
            ExitCode::from(notafs_tools_common::EXIT_OPERATIONAL as u8)
        }
    }
}
