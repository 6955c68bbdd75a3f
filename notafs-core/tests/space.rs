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
