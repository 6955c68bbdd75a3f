//! `notafs demo`: the first thing to run. Creates a sparse image, formats
//! it, writes a file set shaped like an Irmin pack store (the workload
//! notafs is for) over a few commits, shows the generations and the content
//! digest, then reopens the image and verifies everything.
use std::io::Write;

use notafs_core::{FormatOptions, Fs, OpenOptions};

use crate::common::{self, human_bytes, CliError, CliResult, DeviceOptions};

/// Image created when no path is given.
pub const DEFAULT_IMAGE: &str = "notafs-demo.img";
/// Label that marks an image as the demo's own (so re-running may reformat it).
pub const DEMO_LABEL: &str = "notafs-demo";
/// Size of the demo image.
pub const DEMO_SIZE: u64 = 256 << 20;
const BLOCK_SIZE: u32 = 4096;
const ROUNDS: u64 = 3;

/// Deterministic bytes (xorshift64*), so the demo can verify what it wrote.
struct Bytes(u64);

impl Bytes {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn suffix_chunk(round: u64) -> usize {
    // 1.5 MiB, 2 MiB, 2.5 MiB, ...: a few MiB in all, not block aligned.
    (3 << 19) + (round as usize) * (1 << 19) + 123
}

fn err(ctx: &str) -> impl Fn(notafs_core::Error) -> CliError + '_ {
    move |e| CliError::from(e).context(ctx)
}

/// Whether `image` may be (re)created: it does not exist, is empty, or is
/// an earlier demo image (notafs, labelled `notafs-demo`).
fn check_image(image: &str) -> CliResult<()> {
    let meta = match std::fs::metadata(image) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CliError::op(format!("{image}: {e}"))),
    };
    if !meta.is_file() {
        return Err(CliError::op(format!(
            "{image} exists and is not a regular file; the demo only creates image files \
             (give another name: notafs demo other.img)"
        )));
    }
    if meta.len() == 0 {
        return Ok(());
    }
    let refuse = |why: &str| {
        CliError::op(format!(
            "{image} exists and {why}; refusing to overwrite it \
             (delete it or give another name: notafs demo other.img)"
        ))
    };
    let dev =
        common::open_fs_device(image, true).map_err(|_| refuse("cannot be read as an image"))?;
    match Fs::read_superblock(dev.as_ref()) {
        Ok((sb, _)) if sb.label == DEMO_LABEL => Ok(()),
        Ok(_) => Err(refuse("holds a notafs filesystem that is not the demo's")),
        Err(_) => Err(refuse("is not a notafs demo image")),
    }
}

/// Run the demo on `image`, narrating to `out`.
pub fn run(image: &str, out: &mut dyn Write) -> CliResult<()> {
    let mut say = |s: String| -> CliResult<()> {
        writeln!(out, "{s}").map_err(|e| CliError::op(format!("writing output: {e}")))
    };
    check_image(image)?;
    let existed = std::fs::metadata(image)
        .map(|m| m.len() > 0)
        .unwrap_or(false);

    // 1. A sparse image file, recreated from scratch.
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(image)
            .map_err(|e| CliError::op(format!("{image}: cannot create: {e}")))?;
        f.set_len(DEMO_SIZE)
            .map_err(|e| CliError::op(format!("{image}: cannot size: {e}")))?;
    }
    say(format!(
        "{} {image}: a sparse {} image file",
        if existed { "Re-created" } else { "Created" },
        human_bytes(DEMO_SIZE)
    ))?;

    // 2. Format (what `mkfs.notafs -s 256M -L notafs-demo IMAGE` does).
    let dev = common::open_device(
        image,
        &DeviceOptions {
            read_only: false,
            block_size: Some(BLOCK_SIZE),
            ..Default::default()
        },
    )?;
    let fs = Fs::format(
        dev,
        &FormatOptions {
            label: DEMO_LABEL.into(),
            ..FormatOptions::default()
        },
    )
    .map_err(err("format"))?;
    let sb = fs.superblock().clone();
    say(format!(
        "Formatted it: block size {}, {} root slots (the last {} commits stay readable), UUID {}",
        sb.block_size,
        sb.ring_slots,
        sb.ring_slots,
        common::format_uuid(&sb.uuid)
    ))?;

    // 3. A pack-store-shaped workload, one commit per round.
    say("Writing a pack store (store.control, store.dict, store.0.suffix, index/data), one commit per round:".into())?;
    fs.create_dir("index").map_err(err("mkdir index"))?;
    let mut gen_data = Bytes(0x6e6f_7461_6673_0001);
    let mut suffix_len = 0u64;
    let mut dict_len = 0u64;
    let mut index_len = 0u64;
    let mut commits = Vec::new();
    for round in 0..ROUNDS {
        // The suffix grows by appends of a few MiB.
        let suffix = fs
            .open_file_with("store.0.suffix", true, false)
            .map_err(err("store.0.suffix"))?;
        let mut chunk = vec![0u8; suffix_chunk(round)];
        gen_data.fill(&mut chunk);
        suffix
            .append(&chunk)
            .map_err(err("append store.0.suffix"))?;
        suffix_len += chunk.len() as u64;
        // The dictionary grows by small appends.
        let dict = fs
            .open_file_with("store.dict", true, false)
            .map_err(err("store.dict"))?;
        for k in 0..10 {
            let entry = format!("path/segment-{round}-{k}\n");
            dict.append(entry.as_bytes())
                .map_err(err("append store.dict"))?;
            dict_len += entry.len() as u64;
        }
        // The index: fixed-size records.
        let index = fs
            .open_file_with("index/data", true, false)
            .map_err(err("index/data"))?;
        let mut records = Vec::new();
        for k in 0..256u64 {
            let off = round * 1_000_000 + k * 4096;
            records.extend_from_slice(&(round * 256 + k).to_le_bytes());
            records.extend_from_slice(&off.to_le_bytes());
            records.extend_from_slice(&64u64.to_le_bytes());
        }
        index.append(&records).map_err(err("append index/data"))?;
        index_len += records.len() as u64;
        // The control file is replaced atomically: write a temporary, rename.
        let control = format!(
            "version=3\ngeneration={}\nsuffix_end={suffix_len}\ndict_end={dict_len}\n",
            round + 1
        );
        let tmp = fs
            .open_file_with("store.control.tmp", true, true)
            .map_err(err("store.control.tmp"))?;
        tmp.write_at(0, control.as_bytes())
            .map_err(err("write store.control.tmp"))?;
        fs.rename("store.control.tmp", "store.control")
            .map_err(err("rename store.control"))?;
        let g = fs.commit().map_err(err("commit"))?;
        commits.push((g, suffix_len));
        say(format!(
            "  generation {g}: store.0.suffix +{}, store.dict +10 entries, index/data +256 records, \
             store.control replaced via tmp + rename",
            human_bytes(chunk.len() as u64)
        ))?;
    }

    // 4. What is there now.
    let snap = fs.snapshot();
    say(format!("Files at generation {}:", snap.generation()))?;
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        for e in snap.read_dir(&dir).map_err(err("read_dir"))? {
            let p = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            if e.meta.is_dir() {
                say(format!("  {:>10}  {p}/", ""))?;
                stack.push(p);
            } else {
                say(format!("  {:>10}  {p}", e.meta.size))?;
            }
        }
    }
    let digest = snap.digest().map_err(err("digest"))?;
    let newest = snap.generation();
    say(format!(
        "Content digest (BLAKE2b-256): {}",
        notafs_core::digest::hex(&digest)
    ))?;
    drop(snap);
    drop(fs);

    // 5. Reopen from the device and verify.
    let dev = common::open_fs_device(image, true)?;
    let fs = Fs::open(
        dev.clone(),
        &OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .map_err(err("reopen"))?;
    let snap = fs.snapshot();
    let check = |ok: bool, what: &str| -> CliResult<()> {
        if ok {
            Ok(())
        } else {
            Err(CliError::op(format!("demo verification failed: {what}")))
        }
    };
    // Closing seals a last commit made by the one-flush protocol with a
    // log-free slot naming the same trees (FORMAT.md, "Root ring"): one
    // generation more, same content (the digest check below).
    let sealed = u64::from(snap.generation() == newest + 1);
    check(
        snap.generation() == newest + sealed,
        "newest generation after reopen",
    )?;
    check(
        snap.digest().map_err(err("digest"))? == digest,
        "content digest after reopen",
    )?;
    let f = snap.open("store.0.suffix").map_err(err("store.0.suffix"))?;
    check(f.len() == suffix_len, "store.0.suffix length")?;
    let mut expect = Bytes(0x6e6f_7461_6673_0001);
    let mut off = 0u64;
    for round in 0..ROUNDS {
        let mut want = vec![0u8; suffix_chunk(round)];
        expect.fill(&mut want);
        let mut got = vec![0u8; want.len()];
        let n = f
            .read_at(off, &mut got)
            .map_err(err("read store.0.suffix"))?;
        check(n == got.len() && got == want, "store.0.suffix content")?;
        off += want.len() as u64;
    }
    let control = snap
        .read_to_vec("store.control")
        .map_err(err("store.control"))?;
    check(
        String::from_utf8_lossy(&control).contains(&format!("suffix_end={suffix_len}\n")),
        "store.control content",
    )?;
    check(
        snap.stat("index/data").map_err(err("index/data"))?.size == index_len
            && snap.stat("store.dict").map_err(err("store.dict"))?.size == dict_len,
        "index/data and store.dict sizes",
    )?;
    check(
        !fs.exists("store.control.tmp").unwrap_or(true),
        "no leftover temporary",
    )?;
    let seal = if sealed == 1 {
        format!(
            " (sealed on close as generation {}: same trees, no commit log)",
            newest + 1
        )
    } else {
        String::new()
    };
    say(format!(
        "Reopened {image} read-only: generation {newest}{seal}, digest matches, every byte of \
         store.0.suffix ({}) reads back as written.",
        human_bytes(suffix_len)
    ))?;
    say("Retained generations after reopening (newest first):".into())?;
    let gens = fs.generations();
    check(
        gens.len() as u64 == ROUNDS + 1 + sealed && gens[0].generation == newest + sealed,
        "every generation retained",
    )?;
    for g in gens {
        say(format!(
            "  generation {:>3}  {} UTC  {} files+dirs, {} used",
            g.generation,
            common::format_time_ns(g.time_ns),
            g.inodes,
            human_bytes(g.used_blocks * sb.block_size as u64)
        ))?;
    }
    drop(snap);
    drop(fs);
    let (g0, len0) = commits[0];
    let old = Fs::open(
        dev,
        &OpenOptions {
            read_only: true,
            generation: Some(g0),
            ..OpenOptions::default()
        },
    )
    .map_err(err("open older generation"))?;
    let old_len = old
        .snapshot()
        .stat("store.0.suffix")
        .map_err(err("store.0.suffix"))?
        .size;
    check(old_len == len0, "store.0.suffix at the oldest generation")?;
    say(format!(
        "Generation {g0} is still readable too: there store.0.suffix is {} ({old_len} bytes).",
        human_bytes(old_len)
    ))?;
    say(String::new())?;
    say("Try next:".into())?;
    for c in [
        format!("notafs ls -l {image}"),
        format!("notafs tree {image}"),
        format!("notafs cat {image} store.control"),
        format!("notafs ls -l --generation {g0} {image}"),
        format!("notafs info {image}"),
        format!("notafs dump {image}"),
        format!("fsck.notafs -n {image}"),
    ] {
        say(format!("  {c}"))?;
    }
    if !on_path("fsck.notafs") || !on_path("notafs") {
        say(String::new())?;
        say(
            "(Install the tools under these names with ./install.sh --prefix ~/.local, \
             then export PATH=~/.local/bin:~/.local/sbin:$PATH)"
                .into(),
        )?;
    }
    Ok(())
}

/// Whether an executable `name` is on PATH.
fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            std::fs::metadata(d.join(name))
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
    })
}
