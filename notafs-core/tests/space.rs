//! Space held for older generations is given back under pressure: after a
//! large file is removed and the removal committed, its space can be
//! written again at once (as on ext4), not N commits later. Only the newest
//! generation is kept then, and the dropped generations are no longer
//! offered (their slots are wiped before any of their blocks is reused).
use std::sync::Arc;

use notafs_blockdev::memory::MemoryDevice;
use notafs_core::check::{check, CheckOptions};
use notafs_core::{Error, FormatOptions, Fs, OpenOptions};

const BS: usize = 4096;

fn fill(fs: &Fs, name: &str, bytes: usize, seed: u8) -> Result<(), Error> {
    let f = fs.create(name)?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i as u8) ^ seed).collect();
    let mut off = 0usize;
    while off < bytes {
        let n = chunk.len().min(bytes - off);
        f.write_at(off as u64, &chunk[..n])?;
        off += n;
    }
    Ok(())
}

#[test]
fn removing_a_file_frees_its_space_at_the_next_commit() {
    let dev = Arc::new(MemoryDevice::new(BS as u32, 4096).unwrap()); // 16 MiB
    let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
    for i in 0..3 {
        fs.create(&format!("small{i}"))
            .unwrap()
            .write_at(0, b"x")
            .unwrap();
        fs.commit().unwrap();
    }
    fill(&fs, "big", 14 << 20, 1).unwrap();
    fs.commit().unwrap();
    let before = fs.generation();
    fs.remove("big").unwrap();
    fs.commit().unwrap();
    // The space of "big" is writable again right away.
    fill(&fs, "again", 13 << 20, 2).expect("space freed by the removal is reusable");
    fs.commit().unwrap();
    // Generations older than the removal's were dropped and are not offered.
    let gens: Vec<u64> = fs.generations().iter().map(|g| g.generation).collect();
    assert!(!gens.contains(&before), "{gens:?}");
    assert!(gens.len() >= 1);
    drop(fs);
    let r = check(
        dev.clone(),
        &CheckOptions {
            verify_data: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    // A reopen agrees: every retained generation opens and reads.
    let fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
    for g in fs.generations() {
        let old = Fs::open(
            dev.clone(),
            &OpenOptions {
                read_only: true,
                generation: Some(g.generation),
                ..OpenOptions::default()
            },
        )
        .unwrap();
        for e in old.read_dir("/").unwrap() {
            old.snapshot().read_to_vec(&e.name).unwrap();
        }
    }
    assert_eq!(fs.snapshot().read_to_vec("again").unwrap().len(), 13 << 20);
}

#[test]
fn plenty_of_space_keeps_every_generation() {
    let dev = Arc::new(MemoryDevice::new(BS as u32, 8192).unwrap());
    let fs = Fs::format(dev, &FormatOptions::default()).unwrap();
    for i in 0..12 {
        fs.create(&format!("f{i}"))
            .unwrap()
            .write_at(0, &[i as u8; 5000])
            .unwrap();
        fs.commit().unwrap();
    }
    fs.remove("f0").unwrap();
    fs.commit().unwrap();
    assert_eq!(fs.generations().len(), 8);
}

/// Scattered overwrites age the free space into small holes (data goes to
/// long free extents first, tree nodes fill holes), while a second file
/// grows until the device is full. A write may be refused with NoSpace; a
/// commit after writes that were accepted never is (it was, at round ~73:
/// the reserve did not count the extent leaves that blocks buffered until
/// the commit dirty there), and the image stays clean. Run with nodes of
/// one, two and four blocks: with nodes larger than a block, data
/// allocation used to take the last free extents a node fits in after the
/// reserve check had passed, and the commit then found no place for its
/// nodes.
fn aging_to_full(node_blocks: u32, write: usize) {
    let dev = Arc::new(MemoryDevice::new(BS as u32, 8192).unwrap()); // 32 MiB
    let opts = FormatOptions {
        node_size: Some(node_blocks * BS as u32),
        ..FormatOptions::default()
    };
    let fs = Fs::format(dev.clone(), &opts).unwrap();
    fill(&fs, "a", 12 << 20, 3).unwrap();
    fs.commit().unwrap();
    let a = fs.open_file("a").unwrap();
    let b = fs.create("b").unwrap();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut refused = 0;
    let mut grew = 0u64;
    for round in 0..120u64 {
        for _ in 0..256 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            match a.write_at((s % 3072) * BS as u64, &vec![round as u8; write]) {
                Ok(()) => {}
                Err(Error::NoSpace) => refused += 1,
                Err(e) => panic!("nodes of {node_blocks} blocks, round {round}: overwrite: {e}"),
            }
        }
        match b.append(&vec![round as u8; 256 << 10]) {
            Ok(_) => grew += 256 << 10,
            Err(Error::NoSpace) => refused += 1,
            Err(e) => panic!("nodes of {node_blocks} blocks, round {round}: append: {e}"),
        }
        if let Err(e) = fs.commit() {
            panic!(
                "nodes of {node_blocks} blocks, round {round}: commit after accepted writes \
                 failed: {e}"
            );
        }
    }
    assert!(
        refused > 0,
        "nodes of {node_blocks} blocks: the device never filled up ({grew} bytes appended)"
    );
    drop((a, b));
    drop(fs);
    let r = check(dev.clone(), &CheckOptions::default()).unwrap();
    assert!(
        r.is_clean(),
        "nodes of {node_blocks} blocks: {:?}",
        r.problems
    );
}

#[test]
fn aging_to_full_never_fails_a_commit() {
    aging_to_full(1, BS);
}

#[test]
fn aging_to_full_never_fails_a_commit_with_2_block_nodes() {
    aging_to_full(2, BS);
}

#[test]
fn aging_to_full_never_fails_a_commit_with_4_block_nodes() {
    aging_to_full(4, BS);
}

#[test]
fn aging_to_full_with_partial_blocks() {
    for nb in [1, 2, 4] {
        aging_to_full(nb, 512);
    }
}
