//! The `notafs` command: inspect and script notafs images.
use std::io::{Read, Write};

use clap::{ArgAction, Args as ClapArgs, Parser, Subcommand};
use notafs_core::{Fs, OpenOptions};

use crate::common::{self, format_time_ns, human_bytes, CliError, CliResult};

const AFTER_HELP: &str = "\
DEVICE is an image file, a block device or an NBD URI (see below). Read commands (info, ls, tree, \
stat, cat, get, hash, generations, dump) open it read-only and accept \
--generation G to read an older retained generation. Write commands commit \
once, on success: a failed command leaves the image as it was.

Exit status: 0 success; 1 no such file or directory, already exists, not a \
directory, directory not empty, invalid path or generation not retained; \
8 operational error (device unreadable, not a notafs filesystem, corrupt, \
no space); 16 usage error.

Logging: RUST_LOG (e.g. RUST_LOG=debug) or -v, -vv.

Start with:  notafs demo
";

fn help_after() -> String {
    format!("{AFTER_HELP}\n{}", common::DEVICE_FORMS)
}

/// Inspect and script notafs images.
#[derive(Parser, Debug)]
#[command(
    name = "notafs",
    version,
    about = "Inspect and script notafs images",
    after_help = help_after()
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short = 'v', long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Options of read commands.
#[derive(ClapArgs, Debug, Clone, Default)]
pub struct ReadOpts {
    /// Read this retained generation instead of the newest.
    #[arg(short = 'g', long, value_name = "G")]
    pub generation: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Superblock, root slots, generations and space.
    #[command(visible_alias = "stats")]
    Info {
        device: String,
        #[command(flatten)]
        ro: ReadOpts,
    },
    /// List a directory.
    #[command(visible_alias = "list")]
    Ls {
        device: String,
        /// Directory (or file) to list; default: the root.
        #[arg(default_value = "/")]
        path: String,
        /// Long format: type, size, modification time.
        #[arg(short = 'l', long)]
        long: bool,
        /// Recurse into directories, printing full paths.
        #[arg(short = 'R', long)]
        recursive: bool,
        #[command(flatten)]
        ro: ReadOpts,
    },
    /// Show the whole tree with indentation.
    Tree {
        device: String,
        #[arg(default_value = "/")]
        path: String,
        #[command(flatten)]
        ro: ReadOpts,
    },
    /// Metadata of a file or directory.
    Stat {
        device: String,
        path: String,
        #[command(flatten)]
        ro: ReadOpts,
    },
    /// Write files' content to stdout.
    Cat {
        device: String,
        #[arg(required = true)]
        paths: Vec<String>,
        #[command(flatten)]
        ro: ReadOpts,
    },
    /// Copy a file out of the image (LOCAL `-` is stdout).
    ///
    /// A regular LOCAL file is written under a temporary name and renamed
    /// into place once complete, so a failed read leaves no partial file
    /// behind (and an existing LOCAL untouched). LOCAL may also be a
    /// device or FIFO such as /dev/null, or an existing directory (the file
    /// keeps its name).
    Get {
        device: String,
        path: String,
        local: String,
        #[command(flatten)]
        ro: ReadOpts,
    },
    /// Copy a local file (or stdin with `-`) into the image, replacing PATH; commits.
    ///
    /// If PATH is an existing directory, or ends with `/`, the file goes
    /// inside it under LOCAL's name.
    Put {
        device: String,
        local: String,
        path: String,
        /// Create PATH's missing parent directories (as `mkdir -p`, `install -D`).
        #[arg(short = 'p', long)]
        parents: bool,
    },
    /// Remove files (and directories with -r); commits.
    #[command(visible_alias = "remove")]
    Rm {
        device: String,
        #[arg(required = true)]
        paths: Vec<String>,
        /// Remove directories and their content.
        #[arg(short = 'r', short_alias = 'R', long)]
        recursive: bool,
        /// Ignore missing paths.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Rename or move (replaces a file at NEW); commits.
    #[command(visible_alias = "rename")]
    Mv {
        device: String,
        old: String,
        new: String,
    },
    /// Copy a file within the image; commits.
    #[command(visible_alias = "copy")]
    Cp {
        device: String,
        src: String,
        dst: String,
    },
    /// Create empty files, or update the modification time of existing ones; commits.
    Touch {
        device: String,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Create directories; commits.
    Mkdir {
        device: String,
        #[arg(required = true)]
        paths: Vec<String>,
        /// Create missing parents; no error if the directory exists.
        #[arg(short = 'p', long)]
        parents: bool,
    },
    /// Retained generations, newest first.
    Generations { device: String },
    /// BLAKE2b-256 digest of a file, a directory or the whole filesystem.
    ///
    /// Of a file: of its bytes (as `b2sum -l 256`). Of the filesystem or a directory: of the content (names, types,
    /// sizes, bytes), equal whatever the layout, block size or history.
    Hash {
        device: String,
        path: Option<String>,
        #[command(flatten)]
        ro: ReadOpts,
    },
    /// Discard the free blocks (give them back to a thin device or sparse file).
    Trim { device: String },
    /// Print the on-disk structure for debugging (read-only).
    ///
    /// Superblock, root slots, file table nodes, per-file extents, free list.
    Dump {
        device: String,
        #[command(flatten)]
        ro: ReadOpts,
    },
    /// Create a demo image, write a pack-store-like file set over several
    /// generations, and read it back.
    Demo {
        /// Image to create (re-created only if it is an earlier demo image).
        #[arg(default_value = crate::demo::DEFAULT_IMAGE)]
        image: String,
    },
}

/// Open the filesystem on `device` for reading (at `generation`) or writing.
pub fn open_fs(device: &str, write: bool, generation: Option<u64>) -> CliResult<Fs> {
    let dev = common::open_fs_device(device, !write)?;
    let opts = OpenOptions {
        read_only: !write,
        generation,
        // Background flushes during long copies: commits then find the
        // data mostly durable already.
        write_behind: Some(8 << 20),
        ..OpenOptions::default()
    };
    let fs = Fs::open(dev, &opts).map_err(|e| {
        let code = match e {
            notafs_core::Error::NoSuchGeneration(_) => common::EXIT_NOT_FOUND,
            _ => common::EXIT_OPERATIONAL,
        };
        CliError::new(code, format!("{device}: {e}"))
    })?;
    // One command, one commit: the barrier protocol (the one-flush commit
    // log would need a sealing slot at close, costing the flush it saves).
    fs.set_commit_log(false);
    Ok(fs)
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> CliResult<()> {
    let mut out = std::io::stdout().lock();
    let r = dispatch(cli.cmd, &mut out);
    match r {
        Err(e) if e.msg == BROKEN_PIPE => Ok(()),
        r => r,
    }
}

const BROKEN_PIPE: &str = "\0broken pipe";

fn w(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::op(BROKEN_PIPE)
    } else {
        CliError::op(format!("writing output: {e}"))
    }
}

fn dispatch(cmd: Cmd, out: &mut dyn Write) -> CliResult<()> {
    match cmd {
        Cmd::Info { device, ro } => {
            let fs = open_fs(&device, false, ro.generation)?;
            info(&fs, &device, out)
        }
        Cmd::Ls {
            device,
            path,
            long,
            recursive,
            ro,
        } => {
            let fs = open_fs(&device, false, ro.generation)?;
            ls(&fs, &path, long, recursive, out)
        }
        Cmd::Tree { device, path, ro } => {
            let fs = open_fs(&device, false, ro.generation)?;
            tree(&fs, &path, out)
        }
        Cmd::Stat { device, path, ro } => {
            let fs = open_fs(&device, false, ro.generation)?;
            let snap = fs.snapshot();
            let m = snap.stat(&path)?;
            writeln!(out, "  path: {}", display_path(&path)).map_err(w)?;
            writeln!(
                out,
                "  type: {}",
                if m.is_dir() { "directory" } else { "file" }
            )
            .map_err(w)?;
            writeln!(out, "  size: {}", m.size).map_err(w)?;
            writeln!(out, " inode: {}", m.ino).map_err(w)?;
            writeln!(out, " mtime: {} UTC", format_time_ns(m.mtime_ns)).map_err(w)?;
            writeln!(out, "   gen: {}", snap.generation()).map_err(w)?;
            Ok(())
        }
        Cmd::Cat { device, paths, ro } => {
            let fs = open_fs(&device, false, ro.generation)?;
            let snap = fs.snapshot();
            for p in &paths {
                let f = snap.open(p)?;
                copy_out(f, None, out, p)?;
            }
            out.flush().map_err(w)
        }
        Cmd::Get {
            device,
            path,
            local,
            ro,
        } => {
            let fs = open_fs(&device, false, ro.generation)?;
            let snap = fs.snapshot();
            let f = snap.open(&path)?;
            let len = f.len();
            let pb = common::progress_bar(Some(len), "get");
            if local == "-" {
                copy_out(f, Some(pb), out, &path)?;
                out.flush().map_err(w)
            } else {
                get_to_local(f, pb, &path, &local)
            }
        }
        Cmd::Put {
            device,
            local,
            path,
            parents,
        } => put(&device, &local, &path, parents),
        Cmd::Rm {
            device,
            paths,
            recursive,
            force,
        } => {
            let fs = open_fs(&device, true, None)?;
            for p in &paths {
                let r = match fs.stat(p) {
                    Ok(m) if m.is_dir() && recursive => fs.remove_all(p),
                    Ok(m) if m.is_dir() && m.ino == notafs_core::ROOT_INO => {
                        Err(notafs_core::Error::InvalidArgument(
                            "cannot remove the root directory".into(),
                        ))
                    }
                    Ok(_) => fs.remove(p),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => {}
                    Err(notafs_core::Error::NotFound(_)) if force => {}
                    Err(notafs_core::Error::DirectoryNotEmpty(_)) => {
                        return Err(CliError::not_found(format!(
                            "cannot remove {p}: directory not empty (use -r)"
                        )))
                    }
                    Err(e) => return Err(CliError::from(e).context(format!("cannot remove {p}"))),
                }
            }
            commit(&fs)
        }
        Cmd::Mv { device, old, new } => {
            let fs = open_fs(&device, true, None)?;
            let target = into_dir(&fs, &old, &new)?;
            fs.rename(&old, &target)
                .map_err(|e| CliError::from(e).context(format!("cannot move {old} to {target}")))?;
            commit(&fs)
        }
        Cmd::Cp { device, src, dst } => {
            let fs = open_fs(&device, true, None)?;
            let target = into_dir(&fs, &src, &dst)?;
            copy_within(&fs, &src, &target)?;
            commit(&fs)
        }
        Cmd::Touch { device, paths } => {
            let fs = open_fs(&device, true, None)?;
            for p in &paths {
                let f = fs
                    .open_file_with(p, true, false)
                    .map_err(|e| CliError::from(e).context(format!("cannot touch {p}")))?;
                // Setting the size to itself updates the modification time.
                let len = f.len()?;
                f.set_len(len)?;
            }
            commit(&fs)
        }
        Cmd::Mkdir {
            device,
            paths,
            parents,
        } => {
            let fs = open_fs(&device, true, None)?;
            for p in &paths {
                let r = if parents {
                    fs.create_dir_all(p)
                } else {
                    fs.create_dir(p)
                };
                r.map_err(|e| CliError::from(e).context(format!("cannot create directory {p}")))?;
            }
            commit(&fs)
        }
        Cmd::Generations { device } => {
            let fs = open_fs(&device, false, None)?;
            generations(&fs, out)
        }
        Cmd::Hash { device, path, ro } => {
            let fs = open_fs(&device, false, ro.generation)?;
            let snap = fs.snapshot();
            let d = match &path {
                None => snap.digest()?,
                Some(p) if snap.stat(p)?.is_dir() => snap.digest_path(p)?,
                Some(p) => file_digest(snap.open(p)?, p)?,
            };
            writeln!(
                out,
                "{}  {}",
                notafs_core::digest::hex(&d),
                display_path(path.as_deref().unwrap_or("/"))
            )
            .map_err(w)
        }
        Cmd::Trim { device } => {
            let fs = open_fs(&device, true, None)?;
            let n = fs.trim()?;
            let bs = fs.superblock().block_size as u64;
            writeln!(
                out,
                "{device}: discarded {n} free blocks ({})",
                human_bytes(n * bs)
            )
            .map_err(w)
        }
        Cmd::Dump { device, ro } => {
            // From the raw device, so a damaged image can still be dumped.
            let dev = common::open_fs_device(&device, true)?;
            crate::dump::dump_device(&dev, ro.generation, out).map_err(|e| {
                if e.msg == BROKEN_PIPE {
                    e
                } else {
                    e.context(&device)
                }
            })
        }
        Cmd::Demo { image } => crate::demo::run(&image, out),
    }
}

fn display_path(p: &str) -> String {
    let t = p.trim_matches('/');
    format!("/{t}")
}

/// Join a directory path and a name.
fn join(dir: &str, name: &str) -> String {
    let d = dir.trim_end_matches('/');
    if d.is_empty() {
        name.to_string()
    } else {
        format!("{d}/{name}")
    }
}

fn base_name(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}

/// `mv a dir` and `cp a dir` put `a` inside an existing directory `dir`.
fn into_dir(fs: &Fs, src: &str, dst: &str) -> CliResult<String> {
    match fs.stat(dst) {
        Ok(m) if m.is_dir() && !base_name(src).is_empty() => Ok(join(dst, base_name(src))),
        _ => Ok(dst.to_string()),
    }
}

fn commit(fs: &Fs) -> CliResult<()> {
    if fs.has_changes() {
        fs.commit()
            .map_err(|e| CliError::op(format!("commit failed: {e}")))?;
    }
    Ok(())
}

/// Bytes per read or write call of `put`, `get` and `cp`. Large, because a
/// network device keeps one call's pieces in flight together: NBD splits a
/// call into 256 KiB requests, so 1 MiB kept only 4 in flight (0.56-0.72x
/// nbdcopy, which keeps 64); 16 MiB gives 64. Within the memory rule
/// (cache + 32 MiB): `get` and `cat` hold two (read ahead, see
/// [`crate::readahead`]), the others one.
pub(crate) const COPY_CHUNK: usize = 16 << 20;

/// Copy an open snapshot file to `out` in `COPY_CHUNK` pieces, the next
/// pieces read ahead on other threads while one is written out (see
/// [`crate::readahead`]: one call at a time left a network device idle
/// between calls).
fn copy_out(
    f: notafs_core::SnapshotFile<'_>,
    pb: Option<indicatif::ProgressBar>,
    out: &mut dyn Write,
    what: &str,
) -> CliResult<()> {
    // A snapshot is immutable: its length is the number of bytes to copy.
    let read = |off: u64, buf: &mut [u8]| {
        f.read_at(off, buf)
            .map_err(|e| CliError::op(format!("reading {what}: {e}")))
    };
    crate::readahead::copy_chunks(f.len(), COPY_CHUNK, &read, &mut |data: &[u8]| {
        out.write_all(data).map_err(w)?;
        if let Some(pb) = &pb {
            pb.inc(data.len() as u64);
        }
        Ok(())
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(())
}

/// BLAKE2b-256 of a file's bytes (what `b2sum -l 256` prints for the same
/// content), streamed in 1 MiB chunks.
fn file_digest(mut f: notafs_core::SnapshotFile<'_>, what: &str) -> CliResult<[u8; 32]> {
    use blake2::digest::consts::U32;
    use blake2::{Blake2b, Digest};
    let mut h = Blake2b::<U32>::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| CliError::op(format!("reading {what}: {e}")))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Write snapshot file `f` (image path `what`) to the local file `local`.
///
/// A regular file (or a new name) is written to a temporary file in the
/// same directory, synced, then renamed over `local`: a failure anywhere
/// removes the temporary and leaves `local` as it was. Anything else that
/// exists (a character device such as /dev/null or /dev/stdout, a FIFO) is
/// written directly and not synced (fsync of /dev/null fails with EINVAL).
/// An existing directory receives the file under its own name.
fn get_to_local(
    f: notafs_core::SnapshotFile<'_>,
    pb: indicatif::ProgressBar,
    what: &str,
    local: &str,
) -> CliResult<()> {
    use std::path::{Path, PathBuf};
    let mut dest = PathBuf::from(local);
    if dest.is_dir() {
        let name = base_name(what);
        if name.is_empty() {
            return Err(CliError::usage(format!("{what}: not a file name")));
        }
        dest.push(name);
    }
    let shown = dest.display().to_string();
    let meta = std::fs::metadata(&dest).ok();
    if let Some(m) = &meta {
        if m.is_dir() {
            return Err(CliError::op(format!("{shown}: is a directory")));
        }
        if !m.is_file() {
            // Device, FIFO, socket: stream into it as it is.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&dest)
                .map_err(|e| CliError::op(format!("{shown}: {e}")))?;
            let mut bw = std::io::BufWriter::with_capacity(1 << 20, file);
            copy_out(f, Some(pb), &mut bw, what).map_err(|e| e.context(&shown))?;
            return bw
                .flush()
                .map_err(|e| CliError::op(format!("{shown}: {e}")));
        }
    }
    // A regular file or a new name: follow a symlink so the link survives
    // and the temporary lives beside the real file.
    let real = std::fs::canonicalize(&dest).unwrap_or_else(|_| dest.clone());
    let dir = match real.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| CliError::usage(format!("{shown}: not a file name")))?;
    // Hold Ctrl-C, SIGTERM and SIGHUP back until the handler knows the
    // temporary's name (no window where it could be left behind).
    let deferred = crate::signals::Deferred::new();
    let (tmp, file) = create_temp(&dir, &file_name).map_err(|e| {
        CliError::op(format!(
            "{shown}: creating a temporary file in {}: {e}",
            dir.display()
        ))
    })?;
    struct Cleanup<'a>(Option<&'a Path>);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                let _ = std::fs::remove_file(p);
            }
            crate::signals::forget_temp();
        }
    }
    let mut guard = Cleanup(Some(&tmp));
    // Ctrl-C, SIGTERM or SIGHUP during the copy remove the temporary too.
    crate::signals::remove_on_signal(&tmp);
    drop(deferred);
    if let Some(m) = &meta {
        // Replacing a file: keep its permission bits.
        let _ = file.set_permissions(m.permissions());
    }
    let mut bw = std::io::BufWriter::with_capacity(1 << 20, file);
    copy_out(f, Some(pb), &mut bw, what).map_err(|e| e.context(&shown))?;
    let file = bw
        .into_inner()
        .map_err(|e| CliError::op(format!("{shown}: {}", e.error())))?;
    file.sync_all()
        .map_err(|e| CliError::op(format!("{shown}: {e}")))?;
    drop(file);
    std::fs::rename(&tmp, &real).map_err(|e| CliError::op(format!("{shown}: {e}")))?;
    guard.0 = None;
    // Make the rename durable too.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Create a new file `.NAME.notafs-get.N` in `dir` (mode 0666 less umask).
fn create_temp(
    dir: &std::path::Path,
    name: &str,
) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let pid = std::process::id();
    for i in 0u32.. {
        let p = dir.join(format!(".{name}.notafs-get.{pid}.{i}"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && i < 1000 => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

/// Stream `local` (or stdin) into `path`, replacing it, and commit; with
/// `parents`, create the missing parent directories of `path` first.
fn put(device: &str, local: &str, path: &str, parents: bool) -> CliResult<()> {
    if path.trim().is_empty() {
        return Err(CliError::usage(
            "put: PATH is empty: name the file to create in the image (e.g. backup/file.tar, or / for the root directory)",
        ));
    }
    if local.is_empty() {
        return Err(CliError::usage(
            "put: LOCAL is empty: name a local file, or - for stdin",
        ));
    }
    let fs = open_fs(device, true, None)?;
    let (mut input, total): (Box<dyn Read>, Option<u64>) = if local == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(local).map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                common::EXIT_NOT_FOUND
            } else {
                common::EXIT_OPERATIONAL
            };
            CliError::new(code, format!("{local}: {e}"))
        })?;
        let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
        (Box::new(f), len)
    };
    let mut target = path.to_string();
    // A trailing slash names a directory, as with cp: the file goes inside.
    let wants_dir = path.ends_with('/') && !path.trim_matches('/').is_empty();
    let is_dir = match fs.stat(path) {
        Ok(m) if m.is_dir() => true,
        Ok(_) if wants_dir => {
            return Err(CliError::not_found(format!(
                "cannot write into {path}: not a directory"
            )))
        }
        Err(notafs_core::Error::NotFound(_)) if wants_dir => {
            if !parents {
                return Err(CliError::not_found(format!(
                    "cannot write into {path}: no such directory (use -p to create it)"
                )));
            }
            fs.create_dir_all(path.trim_end_matches('/')).map_err(|e| {
                CliError::from(e).context(format!("cannot create directory {path}"))
            })?;
            true
        }
        _ => false,
    };
    if is_dir {
        if local == "-" {
            return Err(CliError::not_found(format!(
                "cannot write {}: is a directory (name the file to create inside it)",
                display_path(path)
            )));
        }
        target = join(path, base_name(local));
    } else if parents {
        if let Some((parent, _)) = target.trim_end_matches('/').rsplit_once('/') {
            if !parent.trim_matches('/').is_empty() {
                fs.create_dir_all(parent).map_err(|e| {
                    CliError::from(e).context(format!("cannot create directory {parent}"))
                })?;
            }
        }
    }
    let file = fs.open_file_with(&target, true, true).map_err(|e| {
        let hint = matches!(e, notafs_core::Error::NotFound(_)) && !parents;
        let e = CliError::from(e).context(format!("cannot write {target}"));
        if hint {
            CliError::new(
                e.code,
                format!("{} (use -p to create missing parent directories)", e.msg),
            )
        } else {
            e
        }
    })?;
    let pb = common::progress_bar(total, "put");
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        // Fill the chunk completely (pipes return short reads), so writes
        // reach the core as whole blocks.
        let mut filled = 0;
        while filled < buf.len() {
            match input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CliError::op(format!("reading {local}: {e}"))),
            }
        }
        if filled == 0 {
            break;
        }
        file.append(&buf[..filled])
            .map_err(|e| CliError::from(e).context(format!("writing {target}")))?;
        pb.inc(filled as u64);
        if filled < buf.len() {
            break;
        }
    }
    pb.finish_and_clear();
    commit(&fs)
}

/// Copy file `src` to `dst` within the transaction (content read in chunks).
fn copy_within(fs: &Fs, src: &str, dst: &str) -> CliResult<()> {
    let m = fs.stat(src)?;
    if m.is_dir() {
        return Err(CliError::not_found(format!(
            "cannot copy {src}: is a directory"
        )));
    }
    let from = fs.open_file(src)?;
    if from.ino() == fs.stat(dst).map(|m| m.ino).unwrap_or(0) {
        return Err(CliError::not_found(format!(
            "cannot copy {src} onto itself"
        )));
    }
    let to = fs
        .open_file_with(dst, true, true)
        .map_err(|e| CliError::from(e).context(format!("cannot write {dst}")))?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut off = 0u64;
    loop {
        let n = from.read_at(off, &mut buf)?;
        if n == 0 {
            break;
        }
        to.write_at(off, &buf[..n])?;
        off += n as u64;
    }
    Ok(())
}

fn entry_line(long: bool, name: &str, m: &notafs_core::Metadata) -> String {
    let shown = if m.is_dir() {
        format!("{name}/")
    } else {
        name.to_string()
    };
    if long {
        format!(
            "{} {:>14}  {}  {}",
            if m.is_dir() { 'd' } else { '-' },
            m.size,
            format_time_ns(m.mtime_ns),
            shown
        )
    } else {
        shown
    }
}

fn ls(fs: &Fs, path: &str, long: bool, recursive: bool, out: &mut dyn Write) -> CliResult<()> {
    let snap = fs.snapshot();
    let m = snap.stat(path)?;
    if !m.is_dir() {
        let name = path.trim_matches('/');
        return writeln!(out, "{}", entry_line(long, name, &m)).map_err(w);
    }
    // Depth-first, a directory's content right after it (as `find`); an
    // explicit stack of (entries, next index, display prefix, path).
    let mut stack = vec![(
        snap.read_dir(path)?,
        0usize,
        String::new(),
        path.to_string(),
    )];
    while let Some(top) = stack.last_mut() {
        let (entries, i, prefix, dir) = top;
        if *i == entries.len() {
            stack.pop();
            continue;
        }
        let e = entries[*i].clone();
        *i += 1;
        let shown = format!("{prefix}{}", e.name);
        writeln!(out, "{}", entry_line(long, &shown, &e.meta)).map_err(w)?;
        if recursive && e.meta.is_dir() {
            let child = join(dir, &e.name);
            let sub = snap.read_dir(&child)?;
            stack.push((sub, 0, format!("{shown}/"), child));
        }
    }
    Ok(())
}

fn tree(fs: &Fs, path: &str, out: &mut dyn Write) -> CliResult<()> {
    let snap = fs.snapshot();
    let m = snap.stat(path)?;
    writeln!(out, "{}", display_path(path)).map_err(w)?;
    if !m.is_dir() {
        return Ok(());
    }
    let (mut files, mut dirs, mut bytes) = (0u64, 0u64, 0u64);
    // Frames of (entries, next index, directory path, indentation): an
    // explicit stack, so depth costs no recursion.
    let mut stack = vec![(
        snap.read_dir(path)?,
        0usize,
        path.to_string(),
        String::new(),
    )];
    while let Some(top) = stack.last_mut() {
        let (entries, i, dir, indent) = top;
        if *i == entries.len() {
            stack.pop();
            continue;
        }
        let e = entries[*i].clone();
        *i += 1;
        let last = *i == entries.len();
        let branch = if last { "`-- " } else { "|-- " };
        if e.meta.is_dir() {
            dirs += 1;
            writeln!(out, "{indent}{branch}{}/", e.name).map_err(w)?;
            let child_indent = format!("{indent}{}", if last { "    " } else { "|   " });
            let child = join(dir, &e.name);
            let sub = snap.read_dir(&child)?;
            stack.push((sub, 0, child, child_indent));
        } else {
            files += 1;
            bytes += e.meta.size;
            writeln!(
                out,
                "{indent}{branch}{} ({})",
                e.name,
                human_bytes(e.meta.size)
            )
            .map_err(w)?;
        }
    }
    writeln!(
        out,
        "\n{dirs} directories, {files} files, {}",
        human_bytes(bytes)
    )
    .map_err(w)
}

fn info(fs: &Fs, device: &str, out: &mut dyn Write) -> CliResult<()> {
    let inf = fs.info();
    let sb = &inf.superblock;
    let bs = inf.block_size as u64;
    let mut s = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(s, "device:         {device}");
    let _ = writeln!(
        s,
        "format:         notafs {}.{}",
        sb.version_major, sb.version_minor
    );
    let _ = writeln!(s, "UUID:           {}", common::format_uuid(&sb.uuid));
    let _ = writeln!(s, "label:          {}", sb.label);
    let _ = writeln!(
        s,
        "created:        {} UTC",
        format_time_ns(sb.created.saturating_mul(1_000_000_000))
    );
    let _ = writeln!(
        s,
        "superblock:     {}",
        if inf.superblock_source == 0 {
            "primary copy (block 0)".to_string()
        } else {
            format!(
                "BACKUP copy (block {}): the primary is damaged",
                inf.superblock_source
            )
        }
    );
    let _ = writeln!(s, "block size:     {} bytes", sb.block_size);
    let _ = writeln!(s, "node size:      {} bytes", sb.node_size);
    let _ = writeln!(
        s,
        "size:           {} ({} blocks)",
        human_bytes(inf.block_count * bs),
        inf.block_count
    );
    let _ = writeln!(s, "generation:     {}", inf.generation);
    let _ = writeln!(s, "files+dirs:     {}", inf.inodes);
    let _ = writeln!(
        s,
        "used:           {} ({} blocks)",
        human_bytes(inf.used_blocks * bs),
        inf.used_blocks
    );
    let _ = writeln!(
        s,
        "free:           {} ({} blocks)",
        human_bytes(inf.free_blocks * bs),
        inf.free_blocks
    );
    let _ = writeln!(
        s,
        "pending:        {} ({} blocks held for older generations)",
        human_bytes(inf.pending_blocks * bs),
        inf.pending_blocks
    );
    let _ = writeln!(s, "root slots:     {}", sb.ring_slots);
    if let Some(why) = &inf.needs_check {
        let _ = writeln!(
            s,
            "needs check:    {why} (writes refused until fsck.notafs)"
        );
    }
    for st in fs.slot_status() {
        let line = match (&st.state, &st.roots_ok) {
            (Err(e), _) => format!("unusable: {e}"),
            (Ok(r), Some(Err(e))) => {
                format!("generation {} (roots do not verify: {e})", r.generation)
            }
            (Ok(r), _) => format!(
                "generation {} at {} UTC, {} files+dirs",
                r.generation,
                format_time_ns(r.time_ns),
                r.inode_count
            ),
        };
        let _ = writeln!(s, "  slot {:>2}:      {line}", st.index);
    }
    let gens: Vec<String> = fs
        .generations()
        .iter()
        .map(|g| g.generation.to_string())
        .collect();
    let _ = writeln!(s, "generations:    {}", gens.join(" "));
    out.write_all(s.as_bytes()).map_err(w)
}

fn generations(fs: &Fs, out: &mut dyn Write) -> CliResult<()> {
    let bs = fs.superblock().block_size as u64;
    writeln!(
        out,
        "{:>10}  {:<19}  {:>8}  {:>12}  {:>12}  {:>12}",
        "GENERATION", "TIME (UTC)", "FILES", "USED", "FREE", "PENDING"
    )
    .map_err(w)?;
    for g in fs.generations() {
        writeln!(
            out,
            "{:>10}  {:<19}  {:>8}  {:>12}  {:>12}  {:>12}",
            g.generation,
            format_time_ns(g.time_ns),
            g.inodes,
            human_bytes(g.used_blocks * bs),
            human_bytes(g.free_blocks * bs),
            human_bytes(g.pending_blocks * bs)
        )
        .map_err(w)?;
    }
    Ok(())
}

/// The `notafs` program.
pub fn main() -> ! {
    common::generate_docs_if_asked::<Cli>("1");
    let cli: Cli = common::parse_args();
    common::init_logging(cli.verbose, false);
    common::exit_with("notafs", run(cli))
}
