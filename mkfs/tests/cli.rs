//! Runs the real `mkfs-notafs` binary (installed as `mkfs.notafs`).
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UUID: &str = "0123abcd-0000-4000-8000-00000000beef";

fn mkfs() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mkfs-notafs"));
    c.env_remove("RUST_LOG");
    c
}

fn run(args: &[&str], img: &Path) -> Output {
    mkfs().args(args).arg(img).output().expect("spawn mkfs")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("killed by a signal")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn hash_file(p: &Path) -> Vec<u8> {
    // Content comparison is enough for "unchanged": keep the bytes' digest
    // cheap by hashing with the std hasher over 64 KiB chunks.
    use std::hash::{Hash, Hasher};
    let data = std::fs::read(p).unwrap();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    let mut v = h.finish().to_le_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u64).to_le_bytes());
    v
}

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

fn poke(p: &Path, off: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(bytes).unwrap();
}

fn magic_at(p: &Path, off: usize, m: &[u8]) -> bool {
    let d = std::fs::read(p).unwrap();
    d.get(off..off + m.len()) == Some(m)
}

#[test]
fn formats_a_sparse_image_and_prints_a_summary() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("a.img");
    let o = run(&["-s", "64M", "-L", "backups", "-U", UUID], &img);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);
    assert!(magic_at(&img, 0, b"NOTAFS\0\x01"));
    assert!(
        magic_at(&img, (64 << 20) - 4096, b"NOTAFS\0\x01"),
        "backup copy"
    );
    let s = stdout(&o);
    for want in [
        "64.00 MiB",
        "block size:   4096",
        "root slots:   8",
        "usable space:",
        UUID,
        "backups",
    ] {
        assert!(s.contains(want), "summary lacks {want:?}:\n{s}");
    }
    // Sparse: a 64 MiB image occupies a few blocks.
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&img).unwrap().blocks() * 512 < 1 << 20);
}

#[test]
fn quiet_prints_nothing_and_options_reach_the_superblock() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("q.img");
    let o = run(&["-q", "-s", "8M", "-b", "512", "-N", "3"], &img);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let data = std::fs::read(&img).unwrap();
    assert_eq!(&data[0..8], b"NOTAFS\0\x01");
    assert_eq!(u32::from_le_bytes(data[56..60].try_into().unwrap()), 512);
    assert_eq!(u32::from_le_bytes(data[88..92].try_into().unwrap()), 3);
    assert_eq!(
        u64::from_le_bytes(data[64..72].try_into().unwrap()),
        (8 << 20) / 512
    );
}

#[test]
fn dry_run_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path(), "dry.img", 16 << 20);
    poke(&img, 12345, b"precious");
    let before = hash_file(&img);
    let o = run(&["-n"], &img);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("dry run"), "{}", stdout(&o));
    assert!(stdout(&o).contains("16.00 MiB"), "{}", stdout(&o));
    assert_eq!(hash_file(&img), before);
    // With --size on a missing file: prints the plan, creates nothing.
    let missing = d.path().join("missing.img");
    let o = run(&["-n", "-s", "1G"], &missing);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("1.00 GiB"));
    assert!(!missing.exists());
    // Growing in a dry run does not grow.
    let o = run(&["-n", "-s", "32M"], &img);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(hash_file(&img), before);
}

#[test]
fn refuses_other_filesystems_without_force() {
    let d = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, u64, &[u8], &str)> = vec![
        ("ext4", 1080, &[0x53, 0xEF], "ext2/3/4"),
        ("gpt", 512, b"EFI PART", "GPT"),
        ("xfs", 0, b"XFSB", "XFS"),
        ("btrfs", 65600, b"_BHRfS_M", "btrfs"),
        ("swap", 4086, b"SWAPSPACE2", "swap"),
    ];
    for (name, off, magic, what) in cases {
        // (Image names must not contain the words looked for in messages.)
        let img = image(d.path(), &format!("case-{off}.img"), 16 << 20);
        poke(&img, off, magic);
        let before = hash_file(&img);
        let o = run(&[], &img);
        assert_eq!(code(&o), 8, "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains(what), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains("-F"), "{name}: {}", stderr(&o));
        assert_eq!(hash_file(&img), before, "{name}: refused but wrote");
        let o = run(&["-F", "-q"], &img);
        assert_eq!(code(&o), 0, "{name}: {}", stderr(&o));
        assert!(magic_at(&img, 0, b"NOTAFS\0\x01"));
        // The foreign signature is gone: a second run finds only notafs.
        let o = run(&[], &img);
        assert_eq!(code(&o), 8);
        assert!(stderr(&o).contains("notafs"), "{}", stderr(&o));
        assert!(
            !stderr(&o).contains(what),
            "{name} signature survived: {}",
            stderr(&o)
        );
    }
}

#[test]
fn refuses_mbr_and_fat_and_notafs_backup() {
    let d = tempfile::tempdir().unwrap();
    // MBR with one partition entry.
    let img = image(d.path(), "mbr.img", 8 << 20);
    let mut entry = [0u8; 16];
    entry[4] = 0x83;
    entry[8] = 0x00;
    entry[9] = 0x08;
    entry[12] = 0x00;
    entry[13] = 0x10;
    poke(&img, 446, &entry);
    poke(&img, 510, &[0x55, 0xAA]);
    let o = run(&[], &img);
    assert_eq!(code(&o), 8);
    assert!(stderr(&o).contains("MBR"), "{}", stderr(&o));
    // FAT32 boot sector.
    let img = image(d.path(), "fat.img", 8 << 20);
    poke(&img, 82, b"FAT32   ");
    poke(&img, 510, &[0x55, 0xAA]);
    let o = run(&[], &img);
    assert_eq!(code(&o), 8);
    assert!(stderr(&o).contains("FAT"), "{}", stderr(&o));
    // A notafs whose primary superblock was wiped: the backup in the last
    // block still counts.
    let img = d.path().join("nb.img");
    assert_eq!(code(&run(&["-q", "-s", "8M"], &img)), 0);
    poke(&img, 0, &[0u8; 4096]);
    let o = run(&[], &img);
    assert_eq!(code(&o), 8);
    assert!(stderr(&o).contains("notafs"), "{}", stderr(&o));
}

#[test]
fn refuses_an_existing_notafs_and_force_reformats() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("n.img");
    assert_eq!(code(&run(&["-q", "-s", "16M", "-U", UUID], &img)), 0);
    let o = run(&[], &img);
    assert_eq!(code(&o), 8);
    assert!(stderr(&o).contains("notafs filesystem"), "{}", stderr(&o));
    assert!(stderr(&o).contains(UUID), "{}", stderr(&o));
    let other = "11111111-2222-4333-8444-555555555555";
    let o = run(&["-F", "-U", other], &img);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains(other));
}

#[test]
fn reproducible_with_uuid_and_source_date_epoch() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.img");
    let b = d.path().join("b.img");
    for p in [&a, &b] {
        let o = mkfs()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["-q", "-s", "32M", "-L", "repro", "-U", UUID])
            .arg(p)
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "images differ"
    );
    // And reformatting over a used image gives the same bytes again.
    let o = mkfs()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["-q", "-F", "-L", "repro", "-U", UUID])
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "reformat differs"
    );
    // Without a fixed UUID the images differ (the UUID is random).
    let c = d.path().join("c.img");
    let o = mkfs()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["-q", "-s", "32M", "-L", "repro"])
        .arg(&c)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0);
    assert!(std::fs::read(&a).unwrap() != std::fs::read(&c).unwrap());
}

#[test]
fn usage_errors_exit_16() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("u.img");
    for args in [
        vec!["--bogus"],
        vec!["-b", "1000"],
        vec!["-b", "131072"],
        vec!["-N", "1"],
        vec!["-N", "65"],
        vec!["-U", "not-a-uuid"],
        vec!["-s", "12Q"],
        vec!["-L", &"x".repeat(65)],
    ] {
        let o = run(&args, &img);
        assert_eq!(code(&o), 16, "{args:?}: {}", stderr(&o));
        assert!(!img.exists(), "{args:?} created the image");
    }
    let o = mkfs().output().unwrap();
    assert_eq!(code(&o), 16, "no device");
    let o = mkfs().arg("--help").output().unwrap();
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("--dry-run"));
    // A size that is not a multiple of the block size.
    let o = run(&["-s", "1000"], &img);
    assert_eq!(code(&o), 16, "{}", stderr(&o));
}

#[test]
fn missing_file_without_size_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("nope.img");
    let o = run(&[], &img);
    assert_eq!(code(&o), 8);
    let e = stderr(&o);
    assert!(
        e.contains("nope.img") && e.contains("--size") || e.contains("-s SIZE"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(!img.exists());
}

#[test]
fn operational_errors_exit_8_never_101() {
    let d = tempfile::tempdir().unwrap();
    // Too small for a filesystem.
    let img = image(d.path(), "tiny.img", 8192);
    let o = run(&[], &img);
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    // A directory.
    let o = run(&[], d.path());
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    // Refuses to shrink.
    let img = image(d.path(), "big.img", 32 << 20);
    let o = run(&["-s", "16M"], &img);
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 32 << 20);
    // Growing an existing image works.
    let img = image(d.path(), "grow.img", 4 << 20);
    let o = run(&["-q", "-s", "16M"], &img);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
    // An empty file with --size.
    let img = image(d.path(), "empty.img", 0);
    let o = run(&["-q", "-s", "8M"], &img);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn no_discard_and_discard_flags() {
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path(), "disc.img", 16 << 20);
    // Data in what becomes the data area survives --no-discard (format does
    // not zero the data area) and is gone after a discard of the device.
    poke(&img, 8 << 20, b"old data");
    let o = run(&["-q", "--no-discard"], &img);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(magic_at(&img, 8 << 20, b"old data"));
    let o = run(&["-F", "--discard"], &img);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("discarded"), "{}", stdout(&o));
    assert!(
        !magic_at(&img, 8 << 20, b"old data"),
        "discard did not punch the data area"
    );
}
