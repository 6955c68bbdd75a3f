//! The command line: flags, exit codes, output, and that `-n` (and the
//! default on a non-terminal stdin) never writes a byte.
mod common;

use std::time::Duration;

use common::*;

const LIM: Duration = Duration::from_secs(30);

fn damaged_superblock() -> Vec<u8> {
    let mut i = Img::new(good_image());
    i.block_mut(0)[110] ^= 1;
    i.b
}

fn damaged_tree() -> Vec<u8> {
    let mut i = Img::new(good_image());
    i.edit_entries(|es| es.swap(0, 1));
    i.b
}

fn all_slots_bad() -> Vec<u8> {
    let mut i = Img::new(good_image());
    for s in 0..SLOTS {
        i.block_mut(1 + s as u64)[40] ^= 0xFF;
    }
    i.b
}

#[test]
fn usage_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_image(dir.path(), "g.img", &good_image());
    let p = p.to_str().unwrap();
    assert_eq!(run_fsck(&["--help"], LIM).code, 0);
    let v = run_fsck(&["--version"], LIM);
    assert_eq!(v.code, 0);
    assert!(v.stdout.contains("fsck.notafs"));
    for bad in [
        vec!["-n", "-y", p],
        vec!["-n", "-p", p],
        vec!["-y", "-p", p],
        vec![],
        vec!["--bogus", p],
        vec!["--generation", "x", p],
        vec!["-y", "--generation", "3", p],
        vec![p, "extra"],
    ] {
        let r = run_fsck(&bad, LIM);
        assert_eq!(r.code, 16, "{bad:?}: {}{}", r.stdout, r.stderr);
    }
    // -f and -a are accepted.
    assert_eq!(run_fsck(&["-f", "-n", p], LIM).code, 0);
    assert_eq!(run_fsck(&["-a", p], LIM).code, 0);
}

#[test]
fn operational_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.img");
    let r = run_fsck(&["-n", missing.to_str().unwrap()], LIM);
    assert_eq!(r.code, 8);
    assert!(r.stderr.contains("no such file"), "{}", r.stderr);
    let r = run_fsck(&["-n", dir.path().to_str().unwrap()], LIM);
    assert_eq!(r.code, 8);
    assert!(r.stderr.contains("directory"), "{}", r.stderr);
    let z = write_image(dir.path(), "z.img", &vec![0u8; 1 << 20]);
    let r = run_fsck(&["-n", z.to_str().unwrap()], LIM);
    assert_eq!(r.code, 8);
    assert!(r.stderr.contains("not a notafs"), "{}", r.stderr);
    let r = run_fsck(&["--json", "-n", z.to_str().unwrap()], LIM);
    assert_eq!(r.code, 8);
    assert!(r.stdout.starts_with("{\"device\":"), "{}", r.stdout);
    assert!(r.stdout.contains("\"exit_code\":8"));
}

#[test]
fn clean_image_output() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_image(dir.path(), "g.img", &good_image());
    let p = p.to_str().unwrap();
    let r = run_fsck(&["-n", "-f", p], LIM);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for s in [
        "Pass 1: superblocks and root slots",
        "Pass 2: file table",
        "Pass 3: extent trees",
        "Pass 4: free space and block accounting",
    ] {
        assert!(r.stdout.contains(s), "{}", r.stdout);
    }
    let last = r.stdout.lines().last().unwrap();
    assert!(
        last.starts_with(&format!("{p}: 5 files, 1 dirs, "))
            && last.ends_with("/1024 blocks used, generation 5"),
        "{last}"
    );
    let r = run_fsck(&["-n", "--verify-data", p], LIM);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("Pass 3: extent trees and data"));
    // An older retained generation.
    let r = run_fsck(&["--generation", "3", p], LIM);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("generation 3"), "{}", r.stdout);
    // One not retained: an operational error that says so (cli_devices.rs).
    let r = run_fsck(&["--generation", "99", p], LIM);
    assert_eq!(r.code, 8, "{}{}", r.stdout, r.stderr);
    // JSON.
    let r = run_fsck(&["-n", "--json", p], LIM);
    assert_eq!(r.code, 0);
    let j = r.stdout.trim();
    assert!(j.starts_with('{') && j.ends_with('}'), "{j}");
    assert!(
        j.contains("\"clean\":true") && j.contains("\"generation\":5"),
        "{j}"
    );
    assert!(
        j.contains("\"files\":5") && j.contains("\"repair\":null"),
        "{j}"
    );
    assert_eq!(j.lines().count(), 1);
}

#[test]
fn no_never_writes() {
    let dir = tempfile::tempdir().unwrap();
    for (k, img) in [damaged_superblock(), damaged_tree(), all_slots_bad()]
        .into_iter()
        .enumerate()
    {
        let p = write_image(dir.path(), &format!("d{k}.img"), &img);
        let ps = p.to_str().unwrap();
        let before = hash(&img);
        for args in [
            vec!["-n", ps],
            vec!["-n", "-f", "--verify-data", ps],
            vec!["-n", "--json", ps],
            // No mode flag on a non-terminal stdin behaves as -n.
            vec![ps],
            vec!["--generation", "4", ps],
        ] {
            let r = run_fsck(&args, LIM);
            // Generation 4 is intact in the damaged-tree image.
            let want = if k == 1 && args.contains(&"--generation") {
                0
            } else {
                4
            };
            assert_eq!(r.code, want, "{args:?}: {}{}", r.stdout, r.stderr);
            assert!(
                r.stdout.contains("ERRORS LEFT UNCORRECTED")
                    || args.contains(&"--json")
                    || want == 0,
                "{args:?}: {}",
                r.stdout
            );
            assert_eq!(
                hash(&std::fs::read(&p).unwrap()),
                before,
                "{args:?} wrote to the image"
            );
        }
        // Read-only image file: -n works without write permission.
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        perm.set_readonly(true);
        std::fs::set_permissions(&p, perm).unwrap();
        let r = run_fsck(&["-n", ps], LIM);
        assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    }
}

#[test]
fn repair_then_clean() {
    let dir = tempfile::tempdir().unwrap();
    for (k, img) in [damaged_superblock(), damaged_tree()]
        .into_iter()
        .enumerate()
    {
        for mode in ["-y", "-p"] {
            let p = write_image(dir.path(), &format!("r{k}{mode}.img"), &img);
            let ps = p.to_str().unwrap();
            let r = run_fsck(&[mode, ps], LIM);
            if k == 1 && mode == "-p" {
                // A damaged file-table node can only be repaired by rolling
                // back, which loses the newer generations: preen declines.
                assert_eq!(r.code, 4, "{mode} {k}: {}{}", r.stdout, r.stderr);
                assert!(
                    r.stdout.contains("RUN fsck.notafs MANUALLY"),
                    "{}",
                    r.stdout
                );
                let r = run_fsck(&["-y", ps], LIM);
                assert_eq!(r.code, 1, "-y after -p {k}: {}{}", r.stdout, r.stderr);
            } else {
                assert_eq!(r.code, 1, "{mode} {k}: {}{}", r.stdout, r.stderr);
            }
            if mode == "-y" {
                assert!(r.stdout.contains("Repair: "), "{}", r.stdout);
                assert!(
                    r.stdout.contains("Checking again after repair"),
                    "{}",
                    r.stdout
                );
            }
            let r2 = run_fsck(&["-n", ps], LIM);
            assert_eq!(
                r2.code, 0,
                "second run {mode} {k}: {}{}",
                r2.stdout, r2.stderr
            );
            let r3 = run_fsck(&["-y", ps], LIM);
            assert_eq!(
                r3.code, 0,
                "third run {mode} {k}: {}{}",
                r3.stdout, r3.stderr
            );
        }
    }
    // JSON of a repair.
    let p = write_image(dir.path(), "j.img", &damaged_tree());
    let r = run_fsck(&["-y", "--json", p.to_str().unwrap()], LIM);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout
            .contains("\"repair\":{\"ok\":true,\"actions\":[\"rolled back"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("\"after_repair\":{\"clean\":true"),
        "{}",
        r.stdout
    );
}

#[test]
fn unrepairable_needs_a_human() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_image(dir.path(), "u.img", &all_slots_bad());
    let ps = p.to_str().unwrap();
    let r = run_fsck(&["-p", ps], LIM);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("RUN fsck.notafs MANUALLY"),
        "{}",
        r.stdout
    );
    let r = run_fsck(&["-y", ps], LIM);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("repair failed"), "{}", r.stderr);
}
