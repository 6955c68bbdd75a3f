//! Runs the real `notafs` binary against images made by the real mkfs
//! (through the library: the mkfs crate depends on this one, so its binary
//! cannot be named here; `notafs_core::Fs::format` is what it calls).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

fn notafs() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_notafs"));
    c.env_remove("RUST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    notafs().args(args).output().expect("spawn notafs")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("killed by a signal")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert_eq!(code(&o), 0, "notafs {args:?} failed: {}", err(&o));
    out(&o)
}

/// A fresh formatted image of `mib` MiB.
fn fresh(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(mib << 20).unwrap();
    drop(f);
    let dev = notafs_blockdev::open(
        p.to_str().unwrap(),
        &notafs_blockdev::OpenOptions::default(),
    )
    .unwrap();
    notafs_core::Fs::format(Arc::from(dev), &notafs_core::FormatOptions::default()).unwrap();
    p
}

fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn put_stdin(img: &str, path: &str, bytes: &[u8]) -> Output {
    let mut child = notafs()
        .args(["put", img, "-", path])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        // Odd-sized writes: the tool must cope with short reads.
        for c in bytes.chunks(777_777) {
            stdin.write_all(c).unwrap();
        }
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    o
}

#[test]
fn put_get_round_trip_through_pipes() {
    let d = tempfile::tempdir().unwrap();
    let img = fresh(d.path(), "a.img", 64);
    let img = img.to_str().unwrap();
    let content = data(5 * 1024 * 1024 + 4321, 7);
    let o = put_stdin(img, "backup.tar", &content);
    assert_eq!(code(&o), 0, "{}", err(&o));
    // get to stdout.
    let o = run(&["get", img, "backup.tar", "-"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(o.stdout == content, "content differs after round trip");
    // cat gives the same.
    let o = run(&["cat", img, "backup.tar"]);
    assert!(o.stdout == content);
    // get to a local file, put from a local file.
    let local = d.path().join("out.bin");
    ok(&["get", img, "backup.tar", local.to_str().unwrap()]);
    assert!(std::fs::read(&local).unwrap() == content);
    ok(&["mkdir", img, "copies"]);
    ok(&["put", img, local.to_str().unwrap(), "copies"]);
    let o = run(&["get", img, "copies/out.bin", "-"]);
    assert!(o.stdout == content);
    // Replacing with shorter content truncates.
    let o = put_stdin(img, "backup.tar", b"short");
    assert_eq!(code(&o), 0);
    assert_eq!(run(&["cat", img, "backup.tar"]).stdout, b"short");
    // Empty stdin makes an empty file.
    let o = put_stdin(img, "empty", b"");
    assert_eq!(code(&o), 0);
    assert!(ok(&["ls", "-l", img]).contains(" 0  "));
}

#[test]
fn get_into_a_closed_pipe_is_not_a_crash() {
    let d = tempfile::tempdir().unwrap();
    let img = fresh(d.path(), "p.img", 32);
    let img = img.to_str().unwrap();
    assert_eq!(code(&put_stdin(img, "f", &data(4 << 20, 3))), 0);
    let mut child = notafs()
        .args(["get", img, "f", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away (as `| head -c1`)
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", err(&o));
}

#[test]
fn ls_mv_rm_mkdir_touch_cp() {
    let d = tempfile::tempdir().unwrap();
    let img = fresh(d.path(), "b.img", 32);
    let img = img.to_str().unwrap();
    ok(&["mkdir", "-p", img, "a/b/c"]);
    ok(&["touch", img, "a/one", "a/b/two"]);
    assert_eq!(code(&put_stdin(img, "a/data", &data(10_000, 1))), 0);
    let l = ok(&["ls", "-l", img, "a"]);
    let lines: Vec<&str> = l.lines().collect();
    assert_eq!(lines.len(), 3, "{l}");
    assert!(lines[0].starts_with('d') && lines[0].ends_with("b/"), "{l}");
    assert!(
        lines[1].contains("10000") && lines[1].ends_with("data"),
        "{l}"
    );
    assert!(
        lines[2].starts_with('-') && lines[2].ends_with("one"),
        "{l}"
    );
    // ls -l prints an mtime.
    assert!(lines[1].contains(':'), "{l}");
    let r = ok(&["ls", "-R", img]);
    assert_eq!(r, "a/\na/b/\na/b/c/\na/b/two\na/data\na/one\n");
    let t = ok(&["tree", img]);
    assert!(
        t.contains("`-- one") && t.contains("3 directories, 3 files"),
        "{t}"
    );
    // list and remove are aliases.
    assert_eq!(ok(&["list", img, "a"]), "b/\ndata\none\n");
    ok(&["mv", img, "a/data", "moved"]);
    assert_eq!(ok(&["ls", img]), "a/\nmoved\n");
    ok(&["rename", img, "moved", "a/b"]); // into a directory
    assert_eq!(ok(&["ls", img, "a/b"]), "c/\nmoved\ntwo\n");
    ok(&["cp", img, "a/b/moved", "copy"]);
    assert_eq!(
        ok(&["hash", img, "copy"]).split_whitespace().next(),
        ok(&["hash", img, "a/b/moved"]).split_whitespace().next()
    );
    ok(&["copy", img, "copy", "copy2"]);
    // rm of a non-empty directory needs -r; exit 1.
    let o = run(&["rm", img, "a"]);
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert!(err(&o).contains("not empty"), "{}", err(&o));
    ok(&["rm", img, "copy2"]);
    ok(&["rm", "-r", img, "a"]);
    ok(&["remove", img, "copy"]);
    assert_eq!(ok(&["ls", img]), "");
    // Not found: exit 1, one line.
    for args in [
        vec!["cat", img, "nope"],
        vec!["rm", img, "nope"],
        vec!["mv", img, "nope", "x"],
        vec!["stat", img, "nope"],
        vec!["ls", img, "nope"],
        vec!["get", img, "nope", "-"],
        vec!["mkdir", img, "x/y"],
    ] {
        let o = run(&args);
        assert_eq!(code(&o), 1, "{args:?}: {}", err(&o));
        assert_eq!(err(&o).lines().count(), 1, "{args:?}: {}", err(&o));
    }
    ok(&["rm", "-f", img, "nope"]);
    // Already exists.
    ok(&["mkdir", img, "x"]);
    assert_eq!(code(&run(&["mkdir", img, "x"])), 1);
    ok(&["mkdir", "-p", img, "x"]);
}

#[test]
fn hash_equal_for_equal_content() {
    let d = tempfile::tempdir().unwrap();
    let a = fresh(d.path(), "a.img", 32);
    let b = fresh(d.path(), "b.img", 48);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let x = data(3 << 20, 11);
    // Same files, different history and image size.
    assert_eq!(code(&put_stdin(a, "junk", b"junk")), 0);
    ok(&["mkdir", a, "d"]);
    assert_eq!(code(&put_stdin(a, "d/x", &x)), 0);
    ok(&["rm", a, "junk"]);
    ok(&["mkdir", b, "d"]);
    assert_eq!(code(&put_stdin(b, "d/x", &x)), 0);
    let ha = ok(&["hash", a]);
    let hb = ok(&["hash", b]);
    let digest = |s: &str| s.split_whitespace().next().unwrap().to_string();
    assert_eq!(digest(&ha).len(), 64);
    assert_eq!(digest(&ha), digest(&hb));
    assert_eq!(
        digest(&ok(&["hash", a, "d/x"])),
        digest(&ok(&["hash", b, "d/x"]))
    );
    // One byte different: digests differ.
    let mut y = x.clone();
    y[12345] ^= 1;
    assert_eq!(code(&put_stdin(b, "d/x", &y)), 0);
    assert_ne!(digest(&ok(&["hash", a])), digest(&ok(&["hash", b])));
}

#[test]
fn generation_option_reads_older_content() {
    let d = tempfile::tempdir().unwrap();
    let img = fresh(d.path(), "g.img", 32);
    let img = img.to_str().unwrap();
    assert_eq!(code(&put_stdin(img, "f", b"version one")), 0); // generation 2
    assert_eq!(code(&put_stdin(img, "f", b"version two!")), 0); // generation 3
    ok(&["touch", img, "later"]); // generation 4
    assert_eq!(run(&["cat", img, "f"]).stdout, b"version two!");
    assert_eq!(
        run(&["cat", "--generation", "2", img, "f"]).stdout,
        b"version one"
    );
    assert_eq!(
        run(&["get", "-g", "3", img, "f", "-"]).stdout,
        b"version two!"
    );
    assert_eq!(ok(&["ls", "-g", "3", img]), "f\n");
    assert_eq!(ok(&["ls", img]), "f\nlater\n");
    let g = ok(&["generations", img]);
    let gens: Vec<&str> = g
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(gens, ["4", "3", "2", "1"], "{g}");
    assert_ne!(
        ok(&["hash", "-g", "2", img]),
        ok(&["hash", img]),
        "older generation hashes the same"
    );
    // A generation that is not retained: exit 1.
    let o = run(&["cat", "--generation", "99", img, "f"]);
    assert_eq!(code(&o), 1, "{}", err(&o));
    // Write commands do not take --generation: usage error.
    let o = run(&["rm", "--generation", "2", img, "f"]);
    assert_eq!(code(&o), 16, "{}", err(&o));
}

#[test]
fn read_commands_do_not_modify_the_image() {
    let d = tempfile::tempdir().unwrap();
    let img = fresh(d.path(), "r.img", 16);
    let imgs = img.to_str().unwrap();
    assert_eq!(code(&put_stdin(imgs, "f", &data(100_000, 5))), 0);
    let before = std::fs::read(&img).unwrap();
    for args in [
        vec!["info", imgs],
        vec!["stats", imgs],
        vec!["ls", "-l", "-R", imgs],
        vec!["tree", imgs],
        vec!["stat", imgs, "f"],
        vec!["cat", imgs, "f"],
        vec!["hash", imgs],
        vec!["generations", imgs],
        vec!["dump", imgs],
    ] {
        ok(&args);
    }
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a read command wrote"
    );
    // A failing write command leaves the image alone too.
    assert_eq!(code(&run(&["mv", imgs, "f", "no/such/dir"])), 1);
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a failed command wrote"
    );
}

#[test]
fn info_stat_dump_trim_output() {
    let d = tempfile::tempdir().unwrap();
    let img = fresh(d.path(), "i.img", 16);
    let img = img.to_str().unwrap();
    assert_eq!(code(&put_stdin(img, "f", &data(300_000, 9))), 0);
    let i = ok(&["info", img]);
    for want in [
        "block size:     4096",
        "generation:     2",
        "root slots:     8",
        "slot  2:",
    ] {
        assert!(i.contains(want), "info lacks {want:?}:\n{i}");
    }
    let s = ok(&["stat", img, "f"]);
    assert!(
        s.contains("size: 300000") && s.contains("type: file"),
        "{s}"
    );
    let dump = ok(&["dump", img]);
    for want in [
        "superblock (primary",
        "slot 2: generation 2",
        "file ino",
        "/f size 300000",
        "device blocks",
        "free-space list",
    ] {
        assert!(dump.contains(want), "dump lacks {want:?}:\n{dump}");
    }
    let t = ok(&["trim", img]);
    assert!(t.contains("discarded"), "{t}");
    assert_eq!(run(&["cat", img, "f"]).stdout, data(300_000, 9));
}

#[test]
fn garbage_and_foreign_images_give_errors_not_panics() {
    let d = tempfile::tempdir().unwrap();
    let zeros = d.path().join("zeros.img");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    let junk = d.path().join("junk.img");
    std::fs::write(&junk, data(1 << 20, 99)).unwrap();
    let tiny = d.path().join("tiny.img");
    std::fs::write(&tiny, b"x").unwrap();
    let missing = d.path().join("missing.img");
    // A real image with its ring smashed.
    let smashed = fresh(d.path(), "smashed.img", 8);
    {
        let mut b = std::fs::read(&smashed).unwrap();
        b[4096..4096 * 9].fill(0xAB);
        std::fs::write(&smashed, b).unwrap();
    }
    for img in [&zeros, &junk, &tiny, &missing, &smashed] {
        let s = img.to_str().unwrap();
        for args in [
            vec!["info", s],
            vec!["ls", s],
            vec!["cat", s, "f"],
            vec!["hash", s],
            vec!["dump", s],
            vec!["put", s, "-", "f"],
        ] {
            let o = notafs().args(&args).stdin(Stdio::null()).output().unwrap();
            assert_eq!(code(&o), 8, "{args:?}: {}", err(&o));
            assert_eq!(err(&o).lines().count(), 1, "{args:?}: {}", err(&o));
        }
    }
}

#[test]
fn usage_errors_exit_16_and_help_documents_exit_codes() {
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["ls"],
        vec!["put", "x"],
        vec!["ls", "--bogus", "x"],
    ] {
        let o = run(&args);
        assert_eq!(code(&o), 16, "{args:?}: {}", err(&o));
    }
    let o = run(&["--help"]);
    assert_eq!(code(&o), 0);
    let h = out(&o);
    assert!(h.contains("Exit status") && h.contains("16 usage"), "{h}");
    for c in [
        "info",
        "ls",
        "stat",
        "cat",
        "get",
        "put",
        "rm",
        "mv",
        "touch",
        "mkdir",
        "generations",
        "hash",
        "trim",
        "dump",
        "demo",
        "tree",
        "cp",
    ] {
        assert!(h.contains(c), "help lacks {c}");
    }
}

#[test]
fn demo_runs_is_idempotent_and_refuses_foreign_files() {
    let d = tempfile::tempdir().unwrap();
    let o = notafs().arg("demo").current_dir(d.path()).output().unwrap();
    assert_eq!(code(&o), 0, "{}", err(&o));
    let s = out(&o);
    assert!(s.contains("Content digest"), "{s}");
    assert!(s.contains("generation 4"), "{s}");
    let img = d.path().join("notafs-demo.img");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 256 << 20);
    let imgs = img.to_str().unwrap();
    assert_eq!(
        ok(&["ls", imgs]),
        "index/\nstore.0.suffix\nstore.control\nstore.dict\n"
    );
    assert!(
        String::from_utf8_lossy(&run(&["cat", imgs, "store.control"]).stdout)
            .contains("generation=3")
    );
    // Again: reformats its own image.
    let o = notafs().arg("demo").current_dir(d.path()).output().unwrap();
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(out(&o).contains("Re-created"));
    // A file that is not a demo image is refused and left alone.
    let other = d.path().join("precious.img");
    std::fs::write(&other, b"my thesis").unwrap();
    let o = run(&["demo", other.to_str().unwrap()]);
    assert_eq!(code(&o), 8, "{}", err(&o));
    assert!(err(&o).contains("refusing"), "{}", err(&o));
    assert_eq!(std::fs::read(&other).unwrap(), b"my thesis");
    // So is a notafs image with another label.
    let fs_img = fresh(d.path(), "fs.img", 8);
    let before = std::fs::read(&fs_img).unwrap();
    let o = run(&["demo", fs_img.to_str().unwrap()]);
    assert_eq!(code(&o), 8, "{}", err(&o));
    assert!(std::fs::read(&fs_img).unwrap() == before);
}

#[test]
fn odd_block_sizes_open_without_options() {
    // An image formatted with 512-byte and with 16 KiB blocks: the tool
    // reads the block size from the superblock.
    let d = tempfile::tempdir().unwrap();
    for bs in [512u32, 16384] {
        let p = d.path().join(format!("bs{bs}.img"));
        std::fs::File::create(&p)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let dev = notafs_blockdev::open(
            p.to_str().unwrap(),
            &notafs_blockdev::OpenOptions {
                block_size: Some(bs),
                ..Default::default()
            },
        )
        .unwrap();
        notafs_core::Fs::format(Arc::from(dev), &notafs_core::FormatOptions::default()).unwrap();
        let s = p.to_str().unwrap();
        assert_eq!(code(&put_stdin(s, "f", &data(70_000, 2))), 0);
        assert_eq!(run(&["cat", s, "f"]).stdout, data(70_000, 2));
        assert!(ok(&["info", s]).contains(&format!("block size:     {bs}")));
    }
}

/// Generation number `notafs info` reports.
fn generation(img: &str) -> u64 {
    let info = ok(&["info", img]);
    info.lines()
        .find_map(|l| l.strip_prefix("generation:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no generation in {info}"))
}

#[test]
fn put_dash_p_creates_parents() {
    let d = tempfile::tempdir().unwrap();
    let img = fresh(d.path(), "p.img", 32);
    let img = img.to_str().unwrap();
    let local = d.path().join("big.tar");
    let content = data(300_000, 11);
    std::fs::write(&local, &content).unwrap();
    let local = local.to_str().unwrap();
    // Without -p: a clear error that names the way out, and no commit.
    let g0 = generation(img);
    let o = run(&["put", img, local, "backup/big.tar"]);
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert!(err(&o).contains("use -p"), "{}", err(&o));
    assert_eq!(generation(img), g0);
    // With -p (and --parents), from a file and from stdin, several levels.
    ok(&["put", "-p", img, local, "backup/big.tar"]);
    assert_eq!(run(&["cat", img, "backup/big.tar"]).stdout, content);
    let mut child = notafs()
        .args(["put", "--parents", img, "-", "/a/b/c/dir.tar"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(run(&["cat", img, "a/b/c/dir.tar"]).stdout, b"from stdin");
    // -p with parents that exist already, and into the root.
    ok(&["put", "-p", img, local, "backup/again.tar"]);
    ok(&["put", "-p", img, local, "top.tar"]);
    assert_eq!(ok(&["ls", img, "backup"]), "again.tar\nbig.tar\n");
    // A parent that is a file: refused, nothing committed.
    let g1 = generation(img);
    let o = run(&["put", "-p", img, local, "top.tar/x"]);
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert_eq!(generation(img), g1);
    // A trailing slash names a directory (as cp): never a file of that name.
    let o = run(&["put", img, local, "newdir/"]);
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert!(err(&o).contains("use -p"), "{}", err(&o));
    let o = run(&["put", img, local, "top.tar/"]);
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert_eq!(generation(img), g1);
    ok(&["put", "-p", img, local, "x/y/"]);
    assert_eq!(run(&["cat", img, "x/y/big.tar"]).stdout, content);
    // A missing local file: nothing created, nothing committed.
    let g2 = generation(img);
    let o = run(&["put", "-p", img, "/nonexistent/file", "z/w"]);
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert_eq!(generation(img), g2);
}

#[test]
fn put_refuses_an_empty_path() {
    let d = tempfile::tempdir().unwrap();
    let img = fresh(d.path(), "e.img", 32);
    let img = img.to_str().unwrap();
    let local = d.path().join("f");
    std::fs::write(&local, b"x").unwrap();
    let g0 = generation(img);
    for args in [
        vec!["put", img, local.to_str().unwrap(), ""],
        vec!["put", img, "", "f"],
    ] {
        let o = run(&args);
        assert_eq!(code(&o), 16, "{args:?}: {}", err(&o));
        assert!(err(&o).contains("is empty"), "{}", err(&o));
    }
    assert_eq!(generation(img), g0, "a refused put committed");
    assert_eq!(ok(&["ls", img]), "");
}

#[test]
fn get_to_devices_and_directories() {
    let d = tempfile::tempdir().unwrap();
    let img = fresh(d.path(), "g.img", 32);
    let img = img.to_str().unwrap();
    let content = data(2 << 20, 5);
    assert_eq!(code(&put_stdin(img, "f.bin", &content)), 0);
    // /dev/null: no fsync (EINVAL) and exit 0.
    let o = run(&["get", img, "f.bin", "/dev/null"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    // /dev/stdout into a pipe.
    let o = run(&["get", img, "f.bin", "/dev/stdout"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(o.stdout == content);
    // An existing directory receives the file under its name.
    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    ok(&["get", img, "f.bin", sub.to_str().unwrap()]);
    assert!(std::fs::read(sub.join("f.bin")).unwrap() == content);
    // Replacing an existing file keeps its permission bits.
    use std::os::unix::fs::PermissionsExt;
    let tgt = d.path().join("old");
    std::fs::write(&tgt, b"old").unwrap();
    std::fs::set_permissions(&tgt, std::fs::Permissions::from_mode(0o640)).unwrap();
    ok(&["get", img, "f.bin", tgt.to_str().unwrap()]);
    assert!(std::fs::read(&tgt).unwrap() == content);
    let mode = std::fs::metadata(&tgt).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

/// Device blocks holding the data of `path`, from `notafs dump`.
fn data_blocks(img: &str, path: &str) -> Vec<u64> {
    let dump = ok(&["dump", img]);
    let mut mine = false;
    let mut v = Vec::new();
    for l in dump.lines() {
        let t = l.trim();
        if t.starts_with("file ino") || t.starts_with("dir  ino") {
            mine = t.contains(&format!(" {path} "));
            continue;
        }
        if mine {
            if let Some((_, r)) = t.split_once("-> device blocks ") {
                let (a, b) = r.split_once("..").unwrap();
                let (a, b): (u64, u64) = (a.parse().unwrap(), b.trim().parse().unwrap());
                v.extend(a..b);
            }
        }
    }
    assert!(!v.is_empty(), "no extents for {path} in\n{dump}");
    v
}

#[test]
fn get_of_a_damaged_file_leaves_no_partial_file() {
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    let img = fresh(d.path(), "bad.img", 32);
    let img = img.to_str().unwrap();
    assert_eq!(code(&put_stdin(img, "f.bin", &data(3 << 20, 9))), 0);
    // Damage a block well inside the file (after the first 1 MiB chunk has
    // been written out).
    let blocks = data_blocks(img, "/f.bin");
    let b = blocks[blocks.len() * 2 / 3];
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_at(b"garbage!", b * 4096 + 100).unwrap();
    drop(f);
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    // A new name: nothing is left behind.
    let new = out_dir.join("new.bin");
    let o = run(&["get", img, "f.bin", new.to_str().unwrap()]);
    assert_eq!(code(&o), 8, "{}", err(&o));
    assert!(!new.exists(), "partial file left behind");
    // An existing file keeps its content.
    let old = out_dir.join("old.bin");
    std::fs::write(&old, b"previous content").unwrap();
    let o = run(&["get", img, "f.bin", old.to_str().unwrap()]);
    assert_eq!(code(&o), 8, "{}", err(&o));
    assert_eq!(std::fs::read(&old).unwrap(), b"previous content");
    // And no temporary remains.
    let names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["old.bin".to_string()]);
}

#[test]
fn help_lists_the_device_forms() {
    let o = run(&["--help"]);
    assert_eq!(code(&o), 0);
    for form in ["nbd://", "nbd+unix://", "nbds://", "file:PATH", "/dev/"] {
        assert!(out(&o).contains(form), "--help lacks {form}:\n{}", out(&o));
    }
}

#[test]
fn interrupted_get_leaves_no_temporary() {
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let img = fresh(d.path(), "big.img", 512);
    let img = img.to_str().unwrap();
    assert_eq!(code(&put_stdin(img, "f.bin", &data(256 << 20, 13))), 0);
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let dest = out_dir.join("f.bin");
    let names = || -> Vec<String> {
        std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let mut interrupted = 0;
    for _ in 0..5 {
        let mut child = notafs()
            .args(["get", img, "f.bin", dest.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the temporary to appear, then interrupt.
        let t0 = std::time::Instant::now();
        while names().is_empty() && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        let st = child.wait().unwrap();
        if st.signal() == Some(libc::SIGINT) {
            interrupted += 1;
            assert!(names().is_empty(), "left behind: {:?}", names());
        } else {
            // The copy won the race: it completed, whole.
            assert!(st.success(), "{st:?}");
            assert_eq!(names(), vec!["f.bin".to_string()]);
            std::fs::remove_file(&dest).unwrap();
        }
    }
    assert!(interrupted > 0, "never interrupted mid-copy");
}

/// Collect `child`'s output, waiting at most `secs` seconds (a hang fails
/// the test instead of blocking the run).
fn wait_bounded(child: std::process::Child, secs: u64) -> Output {
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(o) => o,
        Err(_) => {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            panic!("notafs still running after {secs} s");
        }
    }
}

/// 40 MiB and a bit: three 16 MiB chunks, read ahead on two threads
/// (notafs-cli/src/readahead.rs) and written out in order.
const MULTI_CHUNK: usize = (40 << 20) + 12345;

#[test]
fn multi_chunk_get_and_cat_give_the_same_bytes() {
    let d = tempfile::tempdir().unwrap();
    let img = fresh(d.path(), "m.img", 128);
    let img = img.to_str().unwrap();
    // Non-repeating content: a chunk written twice or out of order shows.
    let content = data(MULTI_CHUNK, 21);
    assert_eq!(code(&put_stdin(img, "f.bin", &content)), 0);
    let o = run(&["get", img, "f.bin", "-"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(o.stdout == content, "get - differs");
    let local = d.path().join("out.bin");
    ok(&["get", img, "f.bin", local.to_str().unwrap()]);
    assert!(
        std::fs::read(&local).unwrap() == content,
        "get FILE differs"
    );
    // cat of two files: each whole, one after the other.
    assert_eq!(code(&put_stdin(img, "small", b"tail")), 0);
    let o = run(&["cat", img, "f.bin", "small"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(o.stdout.len() == MULTI_CHUNK + 4 && o.stdout[..MULTI_CHUNK] == content[..]);
    assert_eq!(&o.stdout[MULTI_CHUNK..], b"tail");
}

#[test]
fn multi_chunk_get_of_a_damaged_file_fails_and_leaves_nothing() {
    use std::os::unix::fs::FileExt;
    let content = data(MULTI_CHUNK, 23);
    // Damage in the second chunk (read by the second reader thread) and in
    // the third (the first reader's second chunk, read while the second
    // chunk is written out).
    for chunk in [1usize, 2] {
        let d = tempfile::tempdir().unwrap();
        let img = fresh(d.path(), "bad.img", 128);
        let img = img.to_str().unwrap();
        assert_eq!(code(&put_stdin(img, "f.bin", &content)), 0);
        let blocks = data_blocks(img, "/f.bin");
        assert_eq!(blocks.len(), MULTI_CHUNK.div_ceil(4096));
        let b = blocks[(chunk * (16 << 20) + (3 << 20)) / 4096];
        let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
        f.write_at(b"garbage!", b * 4096 + 100).unwrap();
        drop(f);
        // To stdout: the chunks before the damaged one, then a clear error.
        let child = notafs()
            .args(["get", img, "f.bin", "-"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let o = wait_bounded(child, 60);
        assert_eq!(code(&o), 8, "chunk {chunk}: {}", err(&o));
        assert!(err(&o).contains("reading f.bin"), "{}", err(&o));
        assert_eq!(o.stdout.len(), chunk * (16 << 20), "chunk {chunk}");
        assert!(o.stdout[..] == content[..o.stdout.len()]);
        // To a file: no partial file, an existing one untouched, no temporary.
        let out_dir = d.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let new = out_dir.join("new.bin");
        let o = run(&["get", img, "f.bin", new.to_str().unwrap()]);
        assert_eq!(code(&o), 8, "{}", err(&o));
        assert!(err(&o).contains("reading f.bin"), "{}", err(&o));
        assert!(!new.exists(), "partial file left behind");
        let old = out_dir.join("old.bin");
        std::fs::write(&old, b"previous content").unwrap();
        let o = run(&["get", img, "f.bin", old.to_str().unwrap()]);
        assert_eq!(code(&o), 8, "{}", err(&o));
        assert_eq!(std::fs::read(&old).unwrap(), b"previous content");
        let names: Vec<String> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["old.bin".to_string()]);
    }
}

#[test]
fn multi_chunk_get_to_a_full_device_fails_without_hanging() {
    let d = tempfile::tempdir().unwrap();
    let img = fresh(d.path(), "full.img", 128);
    let img = img.to_str().unwrap();
    assert_eq!(code(&put_stdin(img, "f.bin", &data(MULTI_CHUNK, 25))), 0);
    // The first write fails: the readers must stop and the error come out.
    let child = notafs()
        .args(["get", img, "f.bin", "/dev/full"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = wait_bounded(child, 60);
    assert_eq!(code(&o), 8, "{}", err(&o));
    assert!(
        err(&o).contains("/dev/full") && err(&o).contains("No space left"),
        "{}",
        err(&o)
    );
}
