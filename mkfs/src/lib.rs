//! `mkfs.notafs`: create a notafs filesystem on an image file or a block
//! device, following mke2fs conventions (`-b`, `-L`, `-U`, `-F`, `-n`,
//! `-q`, discard by default; exit 0, 8 operational error, 16 usage error).
use std::sync::Arc;

use clap::{ArgAction, Parser};
use notafs_blockdev::{BlockDevice, Capabilities, Geometry};
use notafs_core::{FormatOptions, Fs, Superblock};
use notafs_tools_common::{
    self as common, format_uuid, human_bytes, CliError, CliResult, DeviceOptions,
};
use tracing::{info, warn};

pub mod detect;

/// Block size when `-b` is not given: image files always, block devices and
/// NBD exports whose sectors are smaller (as mke2fs); a device with larger
/// sectors keeps its own.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

const AFTER_HELP: &str = "\
Exit status: 0 success, 8 operational error (device missing or unreadable, \
an existing filesystem or partition table found without -F, ...), 16 usage error.

With -U and SOURCE_DATE_EPOCH set, two runs on equal devices produce \
byte-identical images.

Examples:
  mkfs.notafs -s 1G disk.img          create a sparse 1 GiB image and format it
  mkfs.notafs -n /dev/sdb             show what would be done, write nothing
  mkfs.notafs -F -L backups /dev/sdb  overwrite whatever /dev/sdb holds
  mkfs.notafs 'nbd+unix:///?socket=/run/nbd.sock'   format an NBD export
";

fn after_help() -> String {
    format!("{AFTER_HELP}\n{}", common::DEVICE_FORMS)
}

/// Create a notafs filesystem.
#[derive(Parser, Debug)]
#[command(name = "mkfs.notafs", version, about, after_help = after_help())]
pub struct Args {
    /// Image file, block device or NBD URI to format (see DEVICE below).
    #[arg(value_name = "DEVICE")]
    pub device: String,

    /// Create the image file with this size (sparse), or grow it to this
    /// size first (e.g. 512M, 1G, 10G).
    #[arg(short = 's', long, value_name = "SIZE", value_parser = common::parse_size)]
    pub size: Option<u64>,

    /// Block size in bytes: a power of two in 512..=65536 (default: 4096, or
    /// the device's logical block size when that is larger).
    #[arg(short = 'b', long, value_name = "BYTES", value_parser = parse_block_size)]
    pub block_size: Option<u32>,

    /// Volume label (at most 64 bytes of UTF-8).
    #[arg(short = 'L', long, value_name = "LABEL", default_value = "", value_parser = parse_label)]
    pub label: String,

    /// Filesystem UUID (random by default).
    #[arg(short = 'U', long, value_name = "UUID", value_parser = common::parse_uuid)]
    pub uuid: Option<[u8; 16]>,

    /// Number of root slots: how many committed generations are kept (2..=64).
    #[arg(short = 'N', long = "roots", value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(2..=64))]
    pub roots: u32,

    /// Print what would be done; write nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,

    /// Overwrite an existing filesystem or partition table.
    #[arg(short = 'F', long)]
    pub force: bool,

    /// Print nothing but errors.
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// More log output (repeat for more).
    #[arg(short = 'v', long, action = ArgAction::Count)]
    pub verbose: u8,

    /// Discard the whole device before formatting (default where supported).
    #[arg(long, overrides_with = "no_discard")]
    pub discard: bool,

    /// Do not discard the device.
    #[arg(long, overrides_with = "discard")]
    pub no_discard: bool,
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    let n = common::parse_size(s)?;
    let n = u32::try_from(n).map_err(|_| format!("block size {s} is too large"))?;
    if !Geometry::valid_block_size(n) {
        return Err(format!(
            "block size {n} is not a power of two in 512..=65536"
        ));
    }
    Ok(n)
}

fn parse_label(s: &str) -> Result<String, String> {
    if s.len() > notafs_core::superblock::LABEL_LEN {
        return Err(format!(
            "label is {} bytes long; at most {} are allowed",
            s.len(),
            notafs_core::superblock::LABEL_LEN
        ));
    }
    if s.contains('\0') {
        return Err("label contains NUL".into());
    }
    Ok(s.to_string())
}

/// A device that only has a shape: what `Fs::plan` needs for a dry run on
/// an image file that does not exist yet (or is to be grown). Any I/O fails.
struct ShapeOnly(Geometry);

impl BlockDevice for ShapeOnly {
    fn geometry(&self) -> Geometry {
        self.0
    }
    fn read(&self, _: u64, _: &mut [u8]) -> notafs_blockdev::Result<()> {
        Err(notafs_blockdev::BlockError::Unsupported { op: "read" })
    }
    fn write(&self, _: u64, _: &[u8]) -> notafs_blockdev::Result<()> {
        Err(notafs_blockdev::BlockError::Unsupported { op: "write" })
    }
    fn write_zeroes(&self, _: u64, _: u64) -> notafs_blockdev::Result<()> {
        Err(notafs_blockdev::BlockError::Unsupported { op: "write_zeroes" })
    }
    fn discard(&self, _: u64, _: u64) -> notafs_blockdev::Result<()> {
        Err(notafs_blockdev::BlockError::Unsupported { op: "discard" })
    }
    fn flush(&self) -> notafs_blockdev::Result<()> {
        Err(notafs_blockdev::BlockError::Unsupported { op: "flush" })
    }
}

/// What was (or would be) created, for the summary.
pub struct Outcome {
    pub superblock: Superblock,
    pub usable_blocks: u64,
    pub dry_run: bool,
    pub discarded: bool,
    pub wiped: Vec<detect::Signature>,
}

/// Run mkfs with parsed arguments; returns the outcome on success.
pub fn run(args: &Args) -> CliResult<Outcome> {
    // `path` names the device in messages; `local` is the local path, None
    // for an NBD URI (or memory:), which exists as far as mkfs can tell
    // until it is opened.
    let path = args.device.as_str();
    let local = common::local_path(path);
    let meta = match local {
        Some(p) => std::fs::metadata(p),
        None => {
            if args.size.is_some() {
                return Err(CliError::op(format!(
                    "{path}: --size applies to image files only, not to {}",
                    if path.starts_with("memory:") {
                        "memory devices (memory:SIZE gives the size)"
                    } else {
                        "network block devices"
                    }
                )));
            }
            Err(std::io::Error::other("not a local path"))
        }
    };
    let exists = meta.is_ok() || local.is_none();
    let is_file = meta.as_ref().map(|m| m.is_file()).unwrap_or(false);
    let is_image = is_file || !exists;

    if let Ok(m) = &meta {
        if m.is_dir() {
            return Err(CliError::op(format!("{path}: is a directory")));
        }
    }
    if !exists && args.size.is_none() {
        return Err(CliError::op(format!(
            "{path}: no such file or device (use -s SIZE to create an image file, e.g. -s 1G)"
        )));
    }
    if args.size.is_some() && !is_image {
        return Err(CliError::op(format!(
            "{path}: --size applies to image files only, not to block devices"
        )));
    }
    let block_size = args.block_size.or(if is_image {
        Some(DEFAULT_BLOCK_SIZE)
    } else {
        None
    });
    if let (Some(size), Some(bs)) = (args.size, block_size) {
        if size % bs as u64 != 0 {
            return Err(CliError::usage(format!(
                "--size {size} is not a multiple of the {bs}-byte block size"
            )));
        }
    }
    let cur_len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    if let Some(size) = args.size {
        if is_file && cur_len > size {
            return Err(CliError::op(format!(
                "{path} is already {cur_len} bytes, more than --size {size}; \
                 refusing to shrink it (truncate it yourself, or drop --size)"
            )));
        }
    }
    let grow = args.size.filter(|&s| !exists || s > cur_len);

    // Open (read-only for a dry run) and look at what the device holds.
    let mut signatures = Vec::new();
    // An image file smaller than one block holds nothing worth detecting
    // (and cannot be opened as a device until it is grown).
    let openable = !is_file || cur_len >= block_size.unwrap_or(DEFAULT_BLOCK_SIZE) as u64;
    let dev: Option<Arc<dyn BlockDevice>> = if exists && openable {
        let ro = |block_size| DeviceOptions {
            read_only: args.dry_run,
            block_size,
            ..Default::default()
        };
        let mut dev = common::open_device(path, &ro(block_size))?;
        if block_size.is_none() && dev.geometry().block_size < DEFAULT_BLOCK_SIZE {
            // A block device (or NBD export) with small sectors: present
            // 4096-byte blocks as mke2fs does, where the device allows it.
            let small = dev.geometry().block_size;
            drop(dev);
            dev = match common::open_device(path, &ro(Some(DEFAULT_BLOCK_SIZE))) {
                Ok(d) if d.geometry().block_count >= 2 => d,
                other => {
                    if let Err(e) = other {
                        info!(
                            "cannot present {DEFAULT_BLOCK_SIZE}-byte blocks ({e}); using {small}"
                        );
                    }
                    common::open_device(path, &ro(None))?
                }
            };
        }
        if let Some(bs) = args.block_size {
            let got = dev.geometry().block_size;
            if got != bs {
                return Err(CliError::op(format!(
                    "{path}: the device's block size is {got}; it cannot present {bs}-byte blocks"
                )));
            }
        }
        signatures = detect::scan(dev.as_ref())
            .map_err(|e| CliError::op(format!("{path}: reading the device: {e}")))?;
        Some(dev)
    } else {
        None
    };
    if !signatures.is_empty() && !args.force {
        let found: Vec<String> = signatures.iter().map(|s| s.what.clone()).collect();
        return Err(CliError::op(format!(
            "{path} contains {}; use -F to overwrite it",
            found.join(" and ")
        )));
    }

    let opts = FormatOptions {
        label: args.label.clone(),
        uuid: args.uuid,
        root_slots: args.roots,
        node_size: None,
        time: None,
    };
    let plan_geometry = |dev: Option<&Arc<dyn BlockDevice>>| -> Geometry {
        let bs = block_size
            .or(dev.map(|d| d.geometry().block_size))
            .unwrap_or(DEFAULT_BLOCK_SIZE);
        let bytes = grow.unwrap_or(cur_len);
        match (grow, dev) {
            (None, Some(d)) => d.geometry(),
            _ => Geometry {
                block_size: bs,
                block_count: bytes / bs as u64,
                atomic_unit: 0,
                preferred_io: 1 << 20,
                caps: Capabilities::default(),
            },
        }
    };

    if args.dry_run {
        let shape = ShapeOnly(plan_geometry(dev.as_ref()));
        let sb = Fs::plan(&shape, &opts).map_err(plan_error)?;
        return Ok(Outcome {
            usable_blocks: usable(&sb),
            superblock: sb,
            dry_run: true,
            discarded: false,
            wiped: signatures,
        });
    }

    // Check the parameters before touching the device.
    Fs::plan(&ShapeOnly(plan_geometry(dev.as_ref())), &opts).map_err(plan_error)?;

    let dev = match grow {
        Some(size) => {
            drop(dev);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(local.unwrap_or(path))
                .map_err(|e| CliError::op(format!("{path}: cannot create: {e}")))?;
            f.set_len(size)
                .map_err(|e| CliError::op(format!("{path}: cannot set size to {size}: {e}")))?;
            drop(f);
            info!(size, "image file sized");
            common::open_device(
                path,
                &DeviceOptions {
                    read_only: false,
                    block_size,
                    ..Default::default()
                },
            )?
        }
        None => dev.ok_or_else(|| CliError::op(format!("{path}: no such file")))?,
    };

    let geo = dev.geometry();
    // First make the device atomically "not a filesystem" (the erase mark
    // over block 0, flushed): a power cut during the discard, the wipe or
    // the format then leaves no half-destroyed old filesystem that its
    // backup superblock would bring back. Block 0 is left alone until the
    // format writes the new primary superblock last.
    Fs::erase(dev.as_ref()).map_err(|e| CliError::from(e).context(path))?;
    let want_discard = !args.no_discard;
    let mut discarded = false;
    if want_discard && geo.caps.discard && geo.block_count > 1 {
        match dev.discard(1, geo.block_count - 1) {
            Ok(()) => discarded = true,
            Err(e) => warn!("discard failed ({e}); continuing without it"),
        }
    } else if args.discard && !geo.caps.discard {
        warn!("{path} does not support discard");
    }
    // Erase foreign signatures (and stale notafs superblock copies) so no
    // tool mistakes the device for what it was.
    wipe(dev.as_ref(), &signatures)
        .map_err(|e| CliError::op(format!("{path}: erasing old signatures: {e}")))?;

    let fs = Fs::format(dev.clone(), &opts).map_err(|e| CliError::from(e).context(path))?;
    let inf = fs.info();
    let out = Outcome {
        superblock: fs.superblock().clone(),
        usable_blocks: inf.free_blocks,
        dry_run: false,
        discarded,
        wiped: signatures,
    };
    drop(fs);
    dev.flush()
        .map_err(|e| CliError::op(format!("{path}: flush: {e}")))?;
    Ok(out)
}

fn plan_error(e: notafs_core::Error) -> CliError {
    match e {
        notafs_core::Error::InvalidArgument(m) => CliError::op(m),
        e => CliError::from(e),
    }
    .context("cannot format")
}

/// Blocks free right after format: everything but the superblocks, the
/// ring and the first free-list node.
fn usable(sb: &Superblock) -> u64 {
    sb.block_count
        .saturating_sub(sb.reserved_blocks())
        .saturating_sub(sb.node_blocks())
}

/// Zero the blocks holding the signatures found.
fn wipe(dev: &dyn BlockDevice, sigs: &[detect::Signature]) -> notafs_blockdev::Result<()> {
    let geo = dev.geometry();
    let bs = geo.block_size as u64;
    let zero = vec![0u8; bs as usize];
    let mut done = std::collections::BTreeSet::new();
    for s in sigs {
        let b = s.offset / bs;
        // Block 0 holds the erase mark (it replaced whatever was there).
        if b > 0 && b < geo.block_count && done.insert(b) {
            dev.write(b, &zero)?;
        }
    }
    Ok(())
}

/// Print the summary of an outcome.
pub fn print_summary(path: &str, o: &Outcome) {
    let sb = &o.superblock;
    let bytes = sb.block_count * sb.block_size as u64;
    if o.dry_run {
        println!("Would create a notafs filesystem on {path} (dry run: nothing written)");
    } else {
        println!("Created a notafs filesystem on {path}");
    }
    for s in &o.wiped {
        println!(
            "  {} {}",
            if o.dry_run {
                "would overwrite"
            } else {
                "overwrote"
            },
            s.what
        );
    }
    println!("  size:         {} ({bytes} bytes)", human_bytes(bytes));
    println!(
        "  block size:   {} bytes ({} blocks)",
        sb.block_size, sb.block_count
    );
    println!("  node size:    {} bytes", sb.node_size);
    println!("  root slots:   {} (generations kept)", sb.ring_slots);
    println!(
        "  usable space: {} ({} blocks)",
        human_bytes(o.usable_blocks * sb.block_size as u64),
        o.usable_blocks
    );
    println!("  UUID:         {}", format_uuid(&sb.uuid));
    if !sb.label.is_empty() {
        println!("  label:        {}", sb.label);
    }
    println!(
        "  created:      {} UTC",
        common::format_time_ns(sb.created.saturating_mul(1_000_000_000))
    );
    if o.discarded {
        println!("  discarded:    whole device");
    }
}

/// The `mkfs.notafs` program.
pub fn main() -> ! {
    common::generate_docs_if_asked::<Args>("8");
    let args: Args = common::parse_args();
    common::init_logging(args.verbose, args.quiet);
    let r = run(&args).map(|o| {
        if !args.quiet {
            print_summary(&args.device, &o);
        }
    });
    common::exit_with("mkfs.notafs", r)
}
