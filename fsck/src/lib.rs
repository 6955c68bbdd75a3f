//! `fsck.notafs`: check and repair a notafs filesystem, with the flags and
//! exit codes of e2fsck. A thin front end over [`notafs_core::check`]: every
//! finding and every repair comes from there; this crate parses arguments,
//! opens the device, prints the report and computes the exit code.
//!
//! Cargo does not allow a `.` in a binary name, so the binary is built as
//! `fsck-notafs`; install it as `fsck.notafs` (`install -m755
//! target/release/fsck-notafs /usr/sbin/fsck.notafs`) so that `fsck -t notafs`
//! finds it.
//!
//! Exit codes (summed, as e2fsck): 0 clean, 1 errors corrected, 4 errors left
//! uncorrected, 8 operational error, 16 usage error, 32 cancelled.
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::sync::Arc;

use clap::Parser;
use notafs_blockdev::BlockDevice;
use notafs_core::check::{self, CheckOptions, CheckReport, Problem, Severity};
use notafs_core::repair::{self, RepairReport};

pub use notafs_tools_common::{
    EXIT_CANCELLED, EXIT_CORRECTED, EXIT_OK, EXIT_OPERATIONAL, EXIT_UNCORRECTED, EXIT_USAGE,
};

const PROG: &str = "fsck.notafs";

const AFTER_HELP: &str = "Exit status is the sum of: 0 no errors, 1 errors corrected, \
     4 errors left uncorrected, 8 operational error (device unreadable, not a notafs \
     filesystem, --generation not retained), 16 usage error, 32 cancelled.\n\
     Without -n, -y or -p, fsck.notafs asks before repairing when stdin \
     is a terminal, and otherwise behaves as with -n.\n\
     The block size is read from the superblock; -b is only needed when both \
     superblock copies are damaged.\n";

fn after_help() -> String {
    format!("{AFTER_HELP}\n{}", notafs_tools_common::DEVICE_FORMS)
}

/// Check and repair a notafs filesystem.
#[derive(Parser, Debug)]
#[command(
    name = PROG,
    version,
    about = "Check and repair a notafs filesystem",
    after_help = after_help()
)]
struct Args {
    /// Open the device read-only and answer "no" to every question: nothing is written.
    #[arg(short = 'n')]
    no: bool,
    /// Answer "yes" to every question: repair everything that can be repaired.
    #[arg(short = 'y')]
    yes: bool,
    /// Preen: repair what is safe without asking (superblock copies, free
    /// space, rollback to the newest consistent generation); exit 4 when a
    /// human is needed.
    #[arg(short = 'p', short_alias = 'a')]
    preen: bool,
    /// Force a full check (the check is always full: accepted for compatibility).
    #[arg(short = 'f')]
    force: bool,
    /// Verbose: print statistics (and, twice, log more).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    /// Check this retained generation instead of the newest (read-only).
    #[arg(long, value_name = "G")]
    generation: Option<u64>,
    /// Read every data block and verify its checksum.
    #[arg(long)]
    verify_data: bool,
    /// Print a machine-readable report on stdout.
    #[arg(long)]
    json: bool,
    /// Logical block size to open the device with (default: the one the
    /// superblock records; needed only when no superblock copy is readable).
    #[arg(short = 'b', long, value_name = "BYTES")]
    block_size: Option<u32>,
    /// Read with O_DIRECT (bypass the page cache).
    #[arg(long)]
    direct: bool,
    /// Image file, block device or NBD URI (see DEVICE below).
    #[arg(value_name = "DEVICE")]
    device: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Change nothing.
    No,
    /// Repair everything.
    Yes,
    /// Repair what is safe.
    Preen,
    /// Ask on the terminal.
    Ask,
}

/// Entry point of the binary: parse `std::env::args_os` and run.
pub fn main_exit() -> i32 {
    notafs_tools_common::generate_docs_if_asked::<Args>("8");
    install_sigint();
    run(std::env::args_os())
}

/// Run fsck with `args` (the first is the program name); returns the exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => EXIT_OK,
                _ => EXIT_USAGE,
            };
            let _ = e.print();
            return code;
        }
    };
    init_tracing(args.verbose);
    if args.no && (args.yes || args.preen) {
        eprintln!("{PROG}: -n cannot be combined with -y or -p");
        return EXIT_USAGE;
    }
    if args.yes && args.preen {
        eprintln!("{PROG}: only one of -y and -p may be given");
        return EXIT_USAGE;
    }
    if args.generation.is_some() && (args.yes || args.preen) {
        eprintln!(
            "{PROG}: --generation checks a retained generation read-only; \
             it cannot be combined with -y or -p"
        );
        return EXIT_USAGE;
    }
    let mode = if args.no || args.generation.is_some() {
        Mode::No
    } else if args.yes {
        Mode::Yes
    } else if args.preen {
        Mode::Preen
    } else if std::io::stdin().is_terminal() && !args.json {
        Mode::Ask
    } else {
        Mode::No
    };
    Fsck::new(args, mode).run()
}

struct Fsck {
    args: Args,
    mode: Mode,
    out: Box<dyn Write>,
}

/// Outcome of one check, as this front end classifies it.
struct Verdict {
    /// Something needs repair (errors in the checked generation, a damaged
    /// superblock copy, no usable root).
    needs_repair: bool,
}

fn verdict(r: &CheckReport) -> Verdict {
    let needs_repair = r.generation.is_none()
        || r.problems.iter().any(|p| {
            p.severity == Severity::Error
                || (p.code == "superblock" && p.severity >= Severity::Warning)
        });
    Verdict { needs_repair }
}

impl Fsck {
    fn new(args: Args, mode: Mode) -> Self {
        let out: Box<dyn Write> = if args.json {
            Box::new(std::io::sink())
        } else {
            Box::new(std::io::stdout())
        };
        Fsck { args, mode, out }
    }

    fn say(&mut self, s: impl AsRef<str>) {
        let _ = writeln!(self.out, "{}", s.as_ref());
    }

    fn open(&self, read_only: bool) -> Result<Arc<dyn BlockDevice>, String> {
        let opts = notafs_tools_common::DeviceOptions {
            read_only,
            direct: self.args.direct,
            block_size: self.args.block_size,
        };
        notafs_tools_common::open_fs_device_with(&self.args.device, &opts)
            .map_err(|e| format!("cannot open {}", e.msg))
    }

    fn check(&self, dev: &Arc<dyn BlockDevice>) -> notafs_core::Result<CheckReport> {
        let bar = (self.args.verify_data && std::io::stderr().is_terminal()).then(|| {
            let pb = indicatif::ProgressBar::new(0);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            pb.set_message("verifying data");
            pb
        });
        let progress = |done: u64, total: u64| {
            if let Some(pb) = &bar {
                pb.set_length(total);
                pb.set_position(done);
            }
        };
        let opts = CheckOptions {
            generation: self.args.generation,
            verify_data: self.args.verify_data,
            progress: bar.as_ref().map(|_| &progress as &dyn Fn(u64, u64)),
            cache_bytes: None,
        };
        let r = check::check(dev.clone(), &opts);
        if let Some(pb) = &bar {
            pb.finish_and_clear();
        }
        r
    }

    fn run(mut self) -> i32 {
        let read_only = self.mode == Mode::No;
        let dev = match self.open(read_only) {
            Ok(d) => d,
            Err(m) => return self.operational(&m),
        };
        let geo = dev.geometry();
        if !self.args.json && self.mode != Mode::Preen {
            self.say(format!("{PROG} {}", env!("CARGO_PKG_VERSION")));
        }
        let report = match self.check(&dev) {
            Ok(r) => r,
            Err(e) if e.is_io() => {
                return self.operational(&format!(
                    "{}: {e}\n{PROG}: the device failed a read: nothing was checked or \
                     changed (an I/O error is not damage; retry when the device answers)",
                    self.args.device
                ))
            }
            Err(e) => {
                return self.operational(&format!(
                    "{}: {e}\n{PROG}: the superblock could not be read or does not describe a \
                     valid notafs filesystem ({} blocks of {} bytes)",
                    self.args.device, geo.block_count, geo.block_size
                ))
            }
        };
        if let Some(g) = self.args.generation {
            if report.newest.is_some() && !report.retained.contains(&g) {
                let kept: Vec<String> = report.retained.iter().map(|g| g.to_string()).collect();
                return self.operational(&format!(
                    "{}: generation {g} is not retained (retained: {})",
                    self.args.device,
                    kept.join(" ")
                ));
            }
        }
        self.print_report(&report);
        let v = verdict(&report);
        let mut code = EXIT_OK;
        let mut repair: Option<Result<RepairReport, String>> = None;
        let mut after: Option<CheckReport> = None;
        if v.needs_repair {
            let go = match self.mode {
                Mode::No => false,
                Mode::Yes | Mode::Preen => true,
                Mode::Ask => ask("Repair (rewrite damaged superblock copies, roll back to the newest consistent generation, rebuild free space)?"),
            };
            if !go {
                self.say(format!(
                    "\n{}: ********** ERRORS LEFT UNCORRECTED **********",
                    self.args.device
                ));
                code |= EXIT_UNCORRECTED;
            } else {
                let opts = CheckOptions {
                    generation: None,
                    verify_data: self.args.verify_data,
                    progress: None,
                    cache_bytes: None,
                };
                let policy = if self.mode == Mode::Preen {
                    repair::RepairPolicy::Lossless
                } else {
                    repair::RepairPolicy::Full
                };
                let res =
                    repair::repair_with(dev.clone(), &opts, policy).map_err(|e| e.to_string());
                match &res {
                    Ok(rep) => {
                        if !rep.actions.is_empty() {
                            code |= EXIT_CORRECTED;
                        }
                        let mut lines: Vec<String> =
                            rep.actions.iter().map(|a| format!("Repair: {a}")).collect();
                        for d in &rep.declined {
                            lines.push(format!(
                                "Not repaired in preen mode (run fsck.notafs -y): {d}"
                            ));
                        }
                        if !rep.declined.is_empty() {
                            code |= EXIT_UNCORRECTED;
                            if self.mode == Mode::Preen {
                                lines.push(format!(
                                    "{}: UNEXPECTED INCONSISTENCY; RUN fsck.notafs MANUALLY.",
                                    self.args.device
                                ));
                            }
                        }
                        self.say("");
                        for l in lines {
                            self.say(l);
                        }
                        // Check again, and report what the device looks like now.
                        match self.check(&dev) {
                            Ok(r2) => {
                                self.say("\nChecking again after repair");
                                self.print_report(&r2);
                                if verdict(&r2).needs_repair {
                                    code |= EXIT_UNCORRECTED;
                                }
                                after = Some(r2);
                            }
                            Err(e) => {
                                self.say(format!("re-check failed: {e}"));
                                code |= EXIT_UNCORRECTED;
                            }
                        }
                    }
                    Err(e) => {
                        let msg = format!("repair failed: {e}");
                        self.say(format!("\n{msg}"));
                        if self.mode == Mode::Preen {
                            self.say(format!(
                                "{}: UNEXPECTED INCONSISTENCY; RUN fsck.notafs MANUALLY.",
                                self.args.device
                            ));
                        }
                        if !self.args.json {
                            eprintln!("{PROG}: {}: {msg}", self.args.device);
                        }
                        code |= EXIT_UNCORRECTED;
                    }
                }
                repair = Some(res);
            }
        }
        let last = after.as_ref().unwrap_or(&report);
        self.say(summary(&self.args.device, last));
        if self.args.json {
            let j = json_report(
                &self.args.device,
                code,
                &report,
                repair.as_ref(),
                after.as_ref(),
            );
            let mut so = std::io::stdout();
            let _ = writeln!(so, "{j}");
        }
        let _ = self.out.flush();
        code
    }

    fn operational(&mut self, msg: &str) -> i32 {
        eprintln!("{PROG}: {msg}");
        if self.args.json {
            println!(
                "{{\"device\":{},\"exit_code\":{EXIT_OPERATIONAL},\"error\":{}}}",
                js(&self.args.device),
                js(msg)
            );
        }
        EXIT_OPERATIONAL
    }

    fn print_report(&mut self, r: &CheckReport) {
        let verbose = self.args.verbose > 0;
        let preen = self.mode == Mode::Preen;
        let dev = self.args.device.clone();
        let mut lines = Vec::new();
        for (n, title) in PASSES.iter().enumerate() {
            let pass = n + 1;
            if !preen {
                let t = if pass == 3 && self.args.verify_data {
                    "extent trees and data"
                } else {
                    title
                };
                lines.push(format!("Pass {pass}: {t}"));
            }
            for p in r.problems.iter().filter(|p| pass_of(p) == pass) {
                if p.severity == Severity::Info && !verbose {
                    continue;
                }
                if preen {
                    lines.push(format!("{dev}: {}: {}", sev(p.severity), p.message));
                } else {
                    lines.push(format!("  {}: [{}] {}", sev(p.severity), p.code, p.message));
                }
            }
        }
        if verbose {
            let s = &r.stats;
            if let Some(g) = r.newest {
                lines.push(format!("newest generation {g}; retained {:?}", r.retained));
            }
            lines.push(format!(
                "{} files ({} bytes), {} dirs, {} nodes, {} data blocks, {} free, {} pending, \
                 {} reserved, {} leaked blocks",
                s.files,
                s.file_bytes,
                s.dirs,
                s.nodes,
                s.data_blocks,
                s.free_blocks,
                s.pending_blocks,
                s.reserved_blocks,
                s.leaked_blocks
            ));
            if self.args.verify_data {
                lines.push(format!("{} bytes of data verified", s.verified_bytes));
            }
        }
        for l in lines {
            self.say(l);
        }
    }
}

const PASSES: [&str; 4] = [
    "superblocks and root slots",
    "file table",
    "extent trees",
    "free space and block accounting",
];

/// The pass a problem belongs to (the core checks everything in one walk;
/// this groups the findings the way e2fsck reports them).
fn pass_of(p: &Problem) -> usize {
    match p.code {
        "superblock" | "slot" | "root" => 1,
        "tree" | "orphan" | "name" => 2,
        "extent" | "size" | "data" | "claimed-twice" => 3,
        "count" if p.message.starts_with("inode") || p.message.contains("inodes") => 2,
        _ => 4,
    }
}

fn sev(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "WARNING",
        Severity::Error => "ERROR",
    }
}

fn sev_json(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}

/// "<device>: N files, M dirs, X/Y blocks used, generation G"
fn summary(device: &str, r: &CheckReport) -> String {
    let s = &r.stats;
    let total = r.superblock.as_ref().map(|sb| sb.block_count).unwrap_or(0);
    let used = total.saturating_sub(s.free_blocks + s.pending_blocks);
    let gen = match r.generation {
        Some(g) => g.to_string(),
        None => "none".to_string(),
    };
    format!(
        "{device}: {} files, {} dirs, {used}/{total} blocks used, generation {gen}",
        s.files, s.dirs
    )
}

fn ask(q: &str) -> bool {
    eprint!("{q} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
}

/// Logging: quiet (errors only: findings are the report's job) unless `-vv`
/// (info) or `-vvv` (debug); `RUST_LOG` wins.
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 | 1 => "error",
        2 => "info",
        _ => "debug",
    };
    notafs_tools_common::init_logging_at(default);
}

/// SIGINT: stop at once with exit code 32. Safe even during a repair: every
/// repair is a copy-on-write commit, so stopping anywhere leaves the previous
/// roots intact.
fn install_sigint() {
    extern "C" fn on_sigint(_: libc::c_int) {
        const MSG: &[u8] = b"\nfsck.notafs: cancelled\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(EXIT_CANCELLED);
        }
    }
    // SAFETY: installing a handler that only calls async-signal-safe functions.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn jopt(v: Option<u64>) -> String {
    v.map(|g| g.to_string()).unwrap_or_else(|| "null".into())
}

fn json_check(r: &CheckReport) -> String {
    let s = &r.stats;
    let problems: Vec<String> = r
        .problems
        .iter()
        .map(|p| {
            format!(
                "{{\"severity\":\"{}\",\"code\":{},\"pass\":{},\"message\":{}}}",
                sev_json(p.severity),
                js(p.code),
                pass_of(p),
                js(&p.message)
            )
        })
        .collect();
    let retained: Vec<String> = r.retained.iter().map(|g| g.to_string()).collect();
    let sb = match &r.superblock {
        Some(sb) => format!(
            "{{\"uuid\":\"{}\",\"label\":{},\"block_size\":{},\"node_size\":{},\"block_count\":{},\"root_slots\":{}}}",
            notafs_tools_common::format_uuid(&sb.uuid),
            js(&sb.label),
            sb.block_size,
            sb.node_size,
            sb.block_count,
            sb.ring_slots
        ),
        None => "null".into(),
    };
    let total = r.superblock.as_ref().map(|sb| sb.block_count).unwrap_or(0);
    format!(
        "{{\"clean\":{},\"generation\":{},\"newest\":{},\"retained\":[{}],\"superblock\":{sb},\
         \"stats\":{{\"files\":{},\"dirs\":{},\"file_bytes\":{},\"nodes\":{},\"data_blocks\":{},\
         \"free_blocks\":{},\"pending_blocks\":{},\"reserved_blocks\":{},\"leaked_blocks\":{},\
         \"verified_bytes\":{},\"total_blocks\":{total},\"used_blocks\":{}}},\"problems\":[{}]}}",
        !verdict(r).needs_repair,
        jopt(r.generation),
        jopt(r.newest),
        retained.join(","),
        s.files,
        s.dirs,
        s.file_bytes,
        s.nodes,
        s.data_blocks,
        s.free_blocks,
        s.pending_blocks,
        s.reserved_blocks,
        s.leaked_blocks,
        s.verified_bytes,
        total.saturating_sub(s.free_blocks + s.pending_blocks),
        problems.join(",")
    )
}

fn json_report(
    device: &str,
    code: i32,
    r: &CheckReport,
    repair: Option<&Result<RepairReport, String>>,
    after: Option<&CheckReport>,
) -> String {
    let rep = match repair {
        None => "null".to_string(),
        Some(Ok(rep)) => format!(
            "{{\"ok\":true,\"actions\":[{}],\"new_generation\":{}}}",
            rep.actions
                .iter()
                .map(|a| js(a))
                .collect::<Vec<_>>()
                .join(","),
            jopt(rep.new_generation)
        ),
        Some(Err(e)) => format!("{{\"ok\":false,\"error\":{}}}", js(e)),
    };
    let after = after.map(json_check).unwrap_or_else(|| "null".into());
    format!(
        "{{\"device\":{},\"exit_code\":{code},\"check\":{},\"repair\":{rep},\"after_repair\":{after}}}",
        js(device),
        json_check(r)
    )
}
