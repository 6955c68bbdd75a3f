//! What the notafs tools (`mkfs.notafs`, `fsck.notafs`, `notafs`) share:
//! exit codes, argument parsing with clap mapped to util-linux exit codes,
//! size and UUID parsing, logging set-up, device opening (with the block
//! size read from the superblock, whatever the device form) and progress
//! bars.
use std::fmt;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use notafs_blockdev::BlockDevice;

/// Exit status of a successful run.
pub const EXIT_OK: i32 = 0;
/// e2fsck: errors were found and corrected.
pub const EXIT_CORRECTED: i32 = 1;
/// e2fsck: errors were left uncorrected.
pub const EXIT_UNCORRECTED: i32 = 4;
/// e2fsck: cancelled by the user (SIGINT).
pub const EXIT_CANCELLED: i32 = 32;
/// Exit status of `notafs` for "no such file", "exists", "not a directory"
/// and the like: the request was well formed but the image does not allow it.
pub const EXIT_NOT_FOUND: i32 = 1;
/// Operational error: the device could not be opened, read or written, it
/// holds no (valid) notafs filesystem, it is full, ...
pub const EXIT_OPERATIONAL: i32 = 8;
/// Usage error: bad command line.
pub const EXIT_USAGE: i32 = 16;

/// An error on its way to `main`: a message and the exit status it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub msg: String,
}

impl CliError {
    pub fn new(code: i32, msg: impl Into<String>) -> Self {
        CliError {
            code,
            msg: msg.into(),
        }
    }
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::new(EXIT_USAGE, msg)
    }
    pub fn op(msg: impl Into<String>) -> Self {
        Self::new(EXIT_OPERATIONAL, msg)
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(EXIT_NOT_FOUND, msg)
    }
    /// Prefix the message with some context ("put backup.tar", "image.img").
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for CliError {}

impl From<notafs_core::Error> for CliError {
    fn from(e: notafs_core::Error) -> Self {
        use notafs_core::Error as E;
        let code = match &e {
            E::NotFound(_)
            | E::Exists(_)
            | E::NotADirectory(_)
            | E::IsADirectory(_)
            | E::DirectoryNotEmpty(_)
            | E::InvalidPath { .. }
            | E::InvalidArgument(_)
            | E::NoSuchGeneration(_) => EXIT_NOT_FOUND,
            _ => EXIT_OPERATIONAL,
        };
        CliError::new(code, e.to_string())
    }
}

impl From<notafs_blockdev::BlockError> for CliError {
    fn from(e: notafs_blockdev::BlockError) -> Self {
        CliError::op(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::op(e.to_string())
    }
}

pub type CliResult<T> = std::result::Result<T, CliError>;

/// Parse the command line with clap, mapping its outcome to util-linux
/// conventions: `--help`/`--version` print and exit 0, any usage error
/// prints clap's message and exits 16 (clap itself would exit 2).
pub fn parse_args<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => EXIT_OK,
                _ => EXIT_USAGE,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// Print `prog: message` to stderr and exit with the error's status.
pub fn exit_with(prog: &str, r: CliResult<()>) -> ! {
    match r {
        Ok(()) => std::process::exit(EXIT_OK),
        Err(e) => {
            eprintln!("{prog}: {}", e.msg);
            std::process::exit(e.code)
        }
    }
}

/// The default log level of a tool run with `-v` given `verbose` times
/// (`quiet`: `-q`): `warn`, raised to `info`, `debug`, `trace` by each `-v`;
/// `error` when quiet.
pub fn log_level(verbose: u8, quiet: bool) -> &'static str {
    match (quiet, verbose) {
        (true, 0) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    }
}

/// Install the tracing subscriber: `RUST_LOG` wins; otherwise `warn`,
/// raised to `info`, `debug`, `trace` by each `-v`. Logs go to stderr,
/// coloured only when stderr is a terminal.
pub fn init_logging(verbose: u8, quiet: bool) {
    init_logging_at(log_level(verbose, quiet))
}

/// Install the tracing subscriber with `default` as the filter unless
/// `RUST_LOG` is set (and valid).
pub fn init_logging_at(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => {
            EnvFilter::try_new(s).unwrap_or_else(|_| EnvFilter::new(default))
        }
        _ => EnvFilter::new(default),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Parse a size such as `4096`, `64K`, `512M`, `1G`, `1GiB`, `2T`: binary
/// multiples, as mke2fs. A bare number is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(format!(
            "invalid size {s:?}: expected a number such as 512M or 1G"
        ));
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("invalid size {s:?}: number too large"))?;
    let unit = t[digits..].trim();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {unit:?} (use K, M, G, T, P or E)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// `1073741824` -> `1.00 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

/// Parse a UUID in the standard text form (`8-4-4-4-12` hex digits; braces,
/// `urn:uuid:` and a form without dashes are accepted too).
pub fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let t = s.trim();
    let t = t.strip_prefix("urn:uuid:").unwrap_or(t);
    let t = t
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(t);
    let hex: String = if t.len() == 36 {
        let b = t.as_bytes();
        if [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return Err(format!(
                "invalid UUID {s:?}: expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
            ));
        }
        t.chars().filter(|&c| c != '-').collect()
    } else {
        t.to_string()
    };
    if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid UUID {s:?}: expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
        ));
    }
    let mut u = [0u8; 16];
    for (i, b) in u.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(u)
}

/// A UUID in its standard text form.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = notafs_core::digest::hex(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Nanoseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn format_time_ns(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The device forms every tool accepts, for `--help` texts.
pub const DEVICE_FORMS: &str = "\
DEVICE is one of:
  PATH                          an image file or a block device (/dev/sdb1, /dev/loop0)
  file:PATH                     an image file or block device, named explicitly
  nbd://HOST[:PORT]/EXPORT      an NBD export over TCP (port 10809 by default)
  nbd+unix:///EXPORT?socket=S   an NBD export over a Unix socket
  nbds://HOST[:PORT]/EXPORT     the same over TLS (certificate always verified);
  nbds+unix:///EXPORT?socket=S    add &tls-certificates=DIR for DIR/ca-cert.pem (and
                                  client-cert.pem + client-key.pem), &tls-hostname=NAME
  (NBD URIs also take &connections=N, 1..16 connections where the server allows
   several, and &timeout=SECS, the longest wait for a reply: 120 by default)
  memory:SIZE                   a scratch in-memory device (testing)";

/// Whether `spec` names a device by URI (`nbd://`, `memory:`, `file:`...)
/// rather than by a local path.
pub fn is_uri(spec: &str) -> bool {
    spec.starts_with("memory:") || spec.starts_with("file:") || spec.contains("://")
}

/// The local path a device spec names, if it names one (`file:` stripped).
pub fn local_path(spec: &str) -> Option<&str> {
    if let Some(p) = spec.strip_prefix("file:") {
        return Some(p);
    }
    (!is_uri(spec)).then_some(spec)
}

/// How to open a device.
#[derive(Clone, Debug, Default)]
pub struct DeviceOptions {
    pub read_only: bool,
    /// Logical block size to present; None lets the backend choose (4096
    /// for image files, the sector size for block devices).
    pub block_size: Option<u32>,
    /// O_DIRECT for image files (block devices always use it).
    pub direct: bool,
}

/// Open the device named by `spec` (a path, `file:PATH`, an NBD URI,
/// `memory:SIZE`).
pub fn open_device(spec: &str, opts: &DeviceOptions) -> CliResult<Arc<dyn BlockDevice>> {
    if let Some(p) = local_path(spec) {
        if !Path::new(p).exists() {
            return Err(CliError::op(format!("{spec}: no such file or device")));
        }
    }
    let o = notafs_blockdev::OpenOptions {
        read_only: opts.read_only,
        block_size: opts.block_size,
        direct: opts.direct,
    };
    let dev = notafs_blockdev::open(spec, &o).map_err(|e| CliError::op(format!("{spec}: {e}")))?;
    Ok(Arc::from(dev))
}

/// Open the device holding a notafs filesystem, presenting the block size
/// its superblock records (so filesystems formatted with `-b 512` or
/// `-b 16384` open without further options), whatever the device form:
/// image file, block device or NBD export. An explicit `opts.block_size`
/// wins. When no superblock is found the device opens as the backend
/// chooses, and the caller reports what it finds.
pub fn open_fs_device_with(spec: &str, opts: &DeviceOptions) -> CliResult<Arc<dyn BlockDevice>> {
    if opts.block_size.is_some() {
        return open_device(spec, opts);
    }
    // Image files and block devices: read the superblock with plain reads
    // before opening (no second open, no exclusive claim to undo).
    if let Some(p) = local_path(spec) {
        let bs = probe_block_size(p);
        return open_device(
            spec,
            &DeviceOptions {
                block_size: bs,
                ..opts.clone()
            },
        );
    }
    let dev = open_device(spec, opts)?;
    match probe_device_block_size(dev.as_ref()) {
        Some(bs) if bs != dev.geometry().block_size => {
            drop(dev);
            open_device(
                spec,
                &DeviceOptions {
                    block_size: Some(bs),
                    ..opts.clone()
                },
            )
        }
        _ => Ok(dev),
    }
}

/// [`open_fs_device_with`] with default options but `read_only`.
pub fn open_fs_device(spec: &str, read_only: bool) -> CliResult<Arc<dyn BlockDevice>> {
    open_fs_device_with(
        spec,
        &DeviceOptions {
            read_only,
            ..Default::default()
        },
    )
}

/// Whether `path` names a regular file (an image), following symlinks.
pub fn is_regular_file(path: &str) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file())
        .unwrap_or(false)
}

/// The superblock copy in `b` (at least its first 256 bytes), read from byte
/// offset `off` of a device of `len` bytes, decoded and verified by
/// notafs-core (magic, checksum, address, every field) for the one block
/// size it can be valid with. None when no block size gives a valid copy.
pub fn peek_superblock(b: &[u8], off: u64, len: u64) -> Option<notafs_core::Superblock> {
    if b.len() < notafs_core::superblock::SUPERBLOCK_LEN
        || b[0..8] != notafs_core::superblock::MAGIC
    {
        return None;
    }
    (9..=16).map(|s| 1u32 << s).find_map(|bs| {
        let bs64 = bs as u64;
        if off % bs64 != 0 {
            return None;
        }
        notafs_core::Superblock::decode(b, off / bs64, bs, len / bs64).ok()
    })
}

/// Block size recorded in a notafs superblock at the start (or, failing
/// that, the end) of the image file or block device `path`, read with plain
/// buffered reads; None when neither copy carries the magic and a sane
/// block size.
pub fn probe_block_size(path: &str) -> Option<u32> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    // Block devices report a zero length in their metadata: seek to the end.
    let len = f.seek(SeekFrom::End(0)).ok()?;
    f.seek(SeekFrom::Start(0)).ok()?;
    let mut head = [0u8; notafs_core::superblock::SUPERBLOCK_LEN];
    if f.read_exact(&mut head).is_ok() {
        if let Some(sb) = peek_superblock(&head, 0, len) {
            return Some(sb.block_size);
        }
    }
    // The backup copy sits in the last block, whose size we do not know yet.
    let mut bs = 512u64;
    while bs <= 65536 {
        if len >= bs * 2
            && f.seek(SeekFrom::Start(len - bs)).is_ok()
            && f.read_exact(&mut head).is_ok()
        {
            if let Some(sb) = peek_superblock(&head, len - bs, len) {
                return Some(sb.block_size);
            }
        }
        bs *= 2;
    }
    None
}

/// [`probe_block_size`] through an open device (NBD exports and anything
/// else that is not a local path).
pub fn probe_device_block_size(dev: &dyn BlockDevice) -> Option<u32> {
    let geo = dev.geometry();
    let dbs = geo.block_size as u64;
    if geo.block_count == 0 {
        return None;
    }
    let len = geo.size_bytes();
    let mut buf = vec![0u8; dbs as usize];
    if dev.read(0, &mut buf).is_ok() {
        if let Some(sb) = peek_superblock(&buf, 0, len) {
            return Some(sb.block_size);
        }
    }
    let tail_blocks = 65536u64.div_ceil(dbs).min(geo.block_count);
    let mut tail = vec![0u8; (tail_blocks * dbs) as usize];
    dev.read(geo.block_count - tail_blocks, &mut tail).ok()?;
    let mut bs = 512usize;
    while bs <= tail.len() {
        if len >= bs as u64 * 2 {
            if let Some(sb) = peek_superblock(&tail[tail.len() - bs..], len - bs as u64, len) {
                return Some(sb.block_size);
            }
        }
        bs *= 2;
    }
    None
}

/// Environment variable that makes a tool write its manual pages and shell
/// completions into the directory it names, then exit 0 (the install script
/// uses it, so the pages come from the same clap definitions as `--help`).
pub const GENERATE_DOCS_ENV: &str = "NOTAFS_GENERATE_DOCS";

/// If [`GENERATE_DOCS_ENV`] is set, write `C`'s manual pages (in manual
/// `section`) and shell completions there and exit; otherwise return.
pub fn generate_docs_if_asked<C: clap::CommandFactory>(section: &str) {
    let Some(dir) = std::env::var_os(GENERATE_DOCS_ENV) else {
        return;
    };
    match generate_docs(C::command(), section, Path::new(&dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            std::process::exit(EXIT_OK)
        }
        Err(e) => {
            eprintln!("{}: generating documentation: {e}", C::command().get_name());
            std::process::exit(EXIT_OPERATIONAL)
        }
    }
}

/// Write the manual pages of `cmd` (one per subcommand too, named
/// `CMD-SUB.SECTION`, as git's) under `dir/man/manSECTION/`, and its
/// completions for bash, zsh and fish under `dir/completions/{bash,zsh,fish}/`
/// with the file names those shells look for. Returns the files written.
pub fn generate_docs(
    cmd: clap::Command,
    section: &str,
    dir: &Path,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    use clap_complete::Shell;
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();
    let man_dir = dir.join("man").join(format!("man{section}"));
    std::fs::create_dir_all(&man_dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    fn pages(
        cmd: &clap::Command,
        section: &str,
        dir: &Path,
        out: &mut Vec<std::path::PathBuf>,
    ) -> std::io::Result<()> {
        let man = clap_mangen::Man::new(cmd.clone())
            .section(section)
            .manual("notafs");
        out.push(man.generate_to(dir)?);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub, section, dir, out)?;
        }
        Ok(())
    }
    pages(&cmd, section, &man_dir, &mut written)?;
    for (shell, sub, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        let d = dir.join("completions").join(sub);
        std::fs::create_dir_all(&d)?;
        let p = d.join(file);
        let mut f = std::fs::File::create(&p)?;
        clap_complete::generate(shell, &mut cmd, name.clone(), &mut f);
        written.push(p);
    }
    Ok(written)
}

/// A byte-count progress bar on stderr, drawn only when stderr is a
/// terminal (hidden otherwise, so pipelines and logs stay clean).
pub fn progress_bar(total: Option<u64>, what: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = match total {
        Some(t) => {
            let pb = ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr());
            if let Ok(s) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                pb.set_style(s.progress_chars("=> "));
            }
            pb
        }
        None => {
            let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(s) = ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}") {
                pb.set_style(s);
            }
            pb
        }
    };
    pb.set_message(what.to_string());
    pb
}

/// Whether a path exists (without following a dangling symlink into an error).
pub fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A formatted image file of `bytes` bytes with `bs`-byte blocks.
    fn image(dir: &Path, bs: u32, bytes: u64) -> String {
        let p = dir.join(format!("i{bs}.img"));
        std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
        let p = p.to_str().unwrap().to_string();
        let dev = open_device(
            &p,
            &DeviceOptions {
                block_size: Some(bs),
                ..Default::default()
            },
        )
        .unwrap();
        notafs_core::Fs::format(dev, &notafs_core::FormatOptions::default()).unwrap();
        p
    }

    #[test]
    fn block_size_probe_by_path_and_by_device() {
        let dir = tempfile::tempdir().unwrap();
        for bs in [512u32, 4096, 16384, 65536] {
            let p = image(dir.path(), bs, 16 << 20);
            assert_eq!(probe_block_size(&p), Some(bs), "{bs}");
            let ro = DeviceOptions {
                read_only: true,
                ..Default::default()
            };
            let dev = open_device(&p, &ro).unwrap();
            assert_eq!(probe_device_block_size(dev.as_ref()), Some(bs), "{bs}");
            drop(dev);
            let fs_dev = open_fs_device(&p, false).unwrap();
            assert_eq!(fs_dev.geometry().block_size, bs);
            drop(fs_dev);
            // The backup copy alone is enough.
            let mut b = std::fs::read(&p).unwrap();
            b[..bs as usize].fill(0);
            std::fs::write(&p, &b).unwrap();
            assert_eq!(probe_block_size(&p), Some(bs), "{bs} from the backup");
            let dev = open_device(&p, &ro).unwrap();
            assert_eq!(probe_device_block_size(dev.as_ref()), Some(bs));
            drop(dev);
            // Magic with a bad checksum in both copies: no answer.
            b[..8].copy_from_slice(&notafs_core::superblock::MAGIC);
            let n = b.len();
            b[n - bs as usize + 100] ^= 1;
            std::fs::write(&p, &b).unwrap();
            assert_eq!(probe_block_size(&p), None, "{bs} damaged");
        }
        // Not notafs, too small, missing: no answer, no panic.
        let z = dir.path().join("zero.img");
        std::fs::write(&z, vec![0u8; 8192]).unwrap();
        assert_eq!(probe_block_size(z.to_str().unwrap()), None);
        let t = dir.path().join("tiny.img");
        std::fs::write(&t, b"NOTAFS\0\x01").unwrap();
        assert_eq!(probe_block_size(t.to_str().unwrap()), None);
        assert_eq!(probe_block_size("/nonexistent/x.img"), None);
    }

    #[test]
    fn device_specs() {
        for (spec, local) in [
            ("disk.img", Some("disk.img")),
            ("/dev/sdb1", Some("/dev/sdb1")),
            ("file:a:b.img", Some("a:b.img")),
            ("nbd://h/x", None),
            ("nbd+unix:///?socket=/s", None),
            ("nbds+unix:///e?socket=/s", None),
            ("memory:64M", None),
        ] {
            assert_eq!(local_path(spec), local, "{spec}");
        }
        match open_device("/nonexistent/x.img", &DeviceOptions::default()) {
            Err(e) => assert!(e.msg.contains("no such file or device"), "{e}"),
            Ok(_) => panic!("opened a missing file"),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2t").unwrap(), 2 << 40);
        for bad in ["", "G", "1X", "-1", "99999999999999999999", "16E"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn uuids() {
        let u = parse_uuid("0123abcd-0000-4000-8000-00000000beef").unwrap();
        assert_eq!(format_uuid(&u), "0123abcd-0000-4000-8000-00000000beef");
        assert_eq!(
            parse_uuid("{0123ABCD-0000-4000-8000-00000000BEEF}").unwrap(),
            u
        );
        assert_eq!(
            parse_uuid(
                "0123abcd000040008000 00000000beef"
                    .replace(' ', "")
                    .as_str()
            )
            .unwrap(),
            u
        );
        for bad in [
            "",
            "xyz",
            "0123abcd-0000-4000-8000-00000000beeg",
            "0123abcd00-00-4000-8000-00000000beef",
        ] {
            assert!(parse_uuid(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn times() {
        assert_eq!(format_time_ns(0), "1970-01-01 00:00:00");
        assert_eq!(
            format_time_ns(1_700_000_000_000_000_000),
            "2023-11-14 22:13:20"
        );
        assert_eq!(
            format_time_ns(951_782_400_000_000_000),
            "2000-02-29 00:00:00"
        );
    }
}
