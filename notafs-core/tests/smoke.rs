use std::sync::Arc;

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::BlockDevice;
use notafs_core::{FormatOptions, Fs, OpenOptions};

fn dev(blocks: u64) -> Arc<dyn BlockDevice> {
    Arc::new(MemoryDevice::new(4096, blocks).unwrap())
}

#[test]
fn write_commit_reopen() {
    let d = dev(8192);
    let fs = Fs::format(d.clone(), &FormatOptions::default()).unwrap();
    assert_eq!(fs.generation(), 1);
    fs.create_dir("index").unwrap();
    let f = fs.create("index/data").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    f.write_at(0, &big).unwrap();
    f.append(b"tail").unwrap();
    let g = fs.commit().unwrap();
    assert_eq!(g, 2);
    let fs2 = Fs::open(d.clone(), &OpenOptions::default()).unwrap();
    let s = fs2.snapshot();
    let v = s.read_to_vec("index/data").unwrap();
    assert_eq!(v.len(), big.len() + 4);
    assert_eq!(&v[..big.len()], &big[..]);
    assert_eq!(&v[big.len()..], b"tail");
    // overwrite in the middle, shrink, rename
    let f = fs2.open_file("index/data").unwrap();
    f.write_at(100, b"XYZ").unwrap();
    f.set_len(5000).unwrap();
    fs2.rename("index/data", "data2").unwrap();
    fs2.commit().unwrap();
    let fs3 = Fs::open(d.clone(), &OpenOptions::default()).unwrap();
    let v = fs3.snapshot().read_to_vec("data2").unwrap();
    assert_eq!(v.len(), 5000);
    assert_eq!(&v[100..103], b"XYZ");
    assert_eq!(&v[..100], &big[..100]);
    assert_eq!(&v[103..5000], &big[103..5000]);
    assert!(fs3.snapshot().read_dir("index").unwrap().is_empty());
    // older generation still readable
    let old = Fs::open(
        d.clone(),
        &OpenOptions {
            generation: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        old.snapshot().read_to_vec("index/data").unwrap().len(),
        big.len() + 4
    );
    // many commits: space must not leak
    let info0 = fs3.info();
    for i in 0..50 {
        let f = fs3.open_file("data2").unwrap();
        f.write_at(0, &vec![i as u8; 9000]).unwrap();
        fs3.commit().unwrap();
    }
    let info1 = fs3.info();
    assert!(
        info1.free_blocks + info1.pending_blocks + 64 >= info0.free_blocks + info0.pending_blocks,
        "{info0:?} {info1:?}"
    );
}

#[test]
fn check_clean_and_detects_leak_then_repairs() {
    use notafs_core::check::{check, CheckOptions};
    use notafs_core::repair::repair;
    let d = dev(4096);
    let fs = Fs::format(d.clone(), &FormatOptions::default()).unwrap();
    for i in 0..5 {
        let f = fs.create(&format!("f{i}")).unwrap();
        f.write_at(0, &vec![i as u8; 100_000]).unwrap();
        fs.commit().unwrap();
    }
    fs.remove("f2").unwrap();
    fs.commit().unwrap();
    drop(fs);
    let opts = CheckOptions {
        verify_data: true,
        ..Default::default()
    };
    let r = check(d.clone(), &opts).unwrap();
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert_eq!(r.stats.files, 4);
    assert!(r.stats.verified_bytes >= 400_000);
    // Rebuilding from the newest generation keeps it clean and the content.
    let before = Fs::open(d.clone(), &OpenOptions::default())
        .unwrap()
        .snapshot()
        .digest()
        .unwrap();
    let rep = notafs_core::repair::rebuild_from(d.clone(), r.generation.unwrap()).unwrap();
    assert!(rep.new_generation.is_some());
    let r2 = check(d.clone(), &opts).unwrap();
    assert!(r2.is_clean(), "{:#?}", r2.problems);
    let after = Fs::open(d.clone(), &OpenOptions::default())
        .unwrap()
        .snapshot()
        .digest()
        .unwrap();
    assert_eq!(before, after);
    let rep = repair(d.clone(), &opts).unwrap();
    assert!(rep.actions.is_empty(), "{:?}", rep.actions);
}

#[test]
fn discard_on_release_keeps_retained_generations_readable() {
    // MemoryDevice zeroes discarded blocks: discarding anything a retained
    // generation still references would break the reads below.
    let d = dev(1024);
    Fs::format(
        d.clone(),
        &FormatOptions {
            root_slots: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let fs = Fs::open(
        d.clone(),
        &OpenOptions {
            discard: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut contents = Vec::new();
    for i in 0..12u8 {
        let f = fs.open_file_with("f", true, false).unwrap();
        f.write_at(0, &vec![i; 50_000 + i as usize * 1000]).unwrap();
        let g = fs.commit().unwrap();
        contents.push((g, i));
        for (g, b) in &contents {
            if *g + 3 <= fs.generation() {
                continue;
            }
            let old = Fs::open(
                d.clone(),
                &OpenOptions {
                    generation: Some(*g),
                    ..Default::default()
                },
            )
            .unwrap();
            let v = old.snapshot().read_to_vec("f").unwrap();
            assert!(v.iter().all(|x| x == b), "generation {g} damaged");
        }
    }
    let r = notafs_core::check::check(d.clone(), &Default::default()).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
}

#[test]
fn handles_are_refcounted_and_mtime_settable() {
    let fs = Fs::format(dev(1024), &FormatOptions::default()).unwrap();
    let f = fs.create("a").unwrap();
    f.write_at(0, b"abc").unwrap();
    let g = f.clone();
    let h = fs.open_file("a").unwrap();
    drop(f);
    drop(h);
    // The last remaining handle still works across a commit and a rename.
    fs.commit().unwrap();
    fs.rename("a", "b").unwrap();
    let mut buf = [0u8; 3];
    assert_eq!(g.read_at(0, &mut buf).unwrap(), 3);
    assert_eq!(&buf, b"abc");
    g.set_mtime(1_234_000_000_000).unwrap();
    assert_eq!(fs.stat("b").unwrap().mtime_ns, 1_234_000_000_000);
    fs.commit().unwrap();
    assert_eq!(fs.snapshot().stat("b").unwrap().mtime_ns, 1_234_000_000_000);
    // Many short-lived handles do not break anything.
    for _ in 0..1000 {
        let _ = fs.open_file("b").unwrap();
    }
    drop(g);
    assert!(matches!(
        fs.open_file("a"),
        Err(notafs_core::Error::NotFound(_))
    ));
}
