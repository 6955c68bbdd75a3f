//! Model-based property test: random operation sequences against an
//! in-memory model; after every step the filesystem's contents and listings
//! match the model, every commit checks clean, and older generations keep
//! their contents.
use std::collections::BTreeMap;
use std::sync::Arc;

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::BlockDevice;
use notafs_core::check::{check, CheckOptions};
use notafs_core::{Error, FormatOptions, Fs, OpenOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Model = BTreeMap<String, Vec<u8>>;

const NAMES: &[&str] = &["a", "b", "dir/c", "dir/d", "e"];

fn compare(fs: &Fs, m: &Model, ctx: &str) {
    let s = fs.snapshot();
    let mut seen = BTreeMap::new();
    for name in NAMES {
        match s.read_to_vec(name) {
            Ok(v) => {
                seen.insert(name.to_string(), v);
            }
            Err(Error::NotFound(_)) => {}
            Err(e) => panic!("{ctx}: read {name}: {e}"),
        }
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        m.keys().collect::<Vec<_>>(),
        "{ctx}: names"
    );
    for (k, v) in m {
        assert!(
            seen[k] == *v,
            "{ctx}: content of {k} differs (len {} vs {})",
            seen[k].len(),
            v.len()
        );
    }
}

fn compare_txn(fs: &Fs, m: &Model, ctx: &str) {
    for name in NAMES {
        match (fs.open_file(name), m.get(*name)) {
            (Ok(f), Some(v)) => {
                let mut buf = vec![0u8; v.len() + 10];
                let n = f.read_at(0, &mut buf).unwrap();
                assert_eq!(n, v.len(), "{ctx}: txn size of {name}");
                if buf[..n] != v[..] {
                    let i = (0..n).find(|&i| buf[i] != v[i]).unwrap();
                    panic!(
                        "{ctx}: txn content of {name} differs at {i} of {n}: fs {} model {}",
                        buf[i], v[i]
                    );
                }
            }
            (Err(Error::NotFound(_)), None) => {}
            (r, m) => panic!(
                "{ctx}: {name}: fs {:?} model {:?}",
                r.map(|_| ()),
                m.map(|v| v.len())
            ),
        }
    }
}

fn run(seed: u64, steps: usize, blocks: u64, bs: u32) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dev: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::new(bs, blocks).unwrap());
    let mut fs = Fs::format(
        dev.clone(),
        &FormatOptions {
            root_slots: 4,
            ..Default::default()
        },
    )
    .unwrap();
    fs.create_dir("dir").unwrap();
    fs.commit().unwrap();
    let mut committed: Model = Model::new();
    let mut txn: Model = Model::new();
    let mut history: Vec<(u64, Model)> =
        vec![(1, Model::new()), (fs.generation(), committed.clone())];
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        let name = NAMES[rng.gen_range(0..NAMES.len())];
        let op = rng.gen_range(0..100);
        let max_len = if rng.gen_bool(0.2) { 200_000 } else { 9000 };
        if std::env::var("MODEL_TRACE").is_ok() {
            eprintln!(
                "{ctx}: op {op} on {name} (len {:?})",
                txn.get(name).map(|v| v.len())
            );
        }
        match op {
            0..=24 => {
                // write_at
                let off = rng.gen_range(0..(txn.get(name).map_or(0, |v| v.len()) + 5000)) as u64;
                let len = rng.gen_range(1..max_len);
                let byte: u8 = rng.gen();
                let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                let f = match fs.open_file_with(name, true, false) {
                    Ok(f) => f,
                    Err(Error::NoSpace) => continue,
                    Err(e) => panic!("{ctx}: open {name}: {e}"),
                };
                txn.entry(name.to_string()).or_default();
                match f.write_at(off, &data) {
                    Ok(()) => {
                        if std::env::var("MODEL_TRACE").is_ok() {
                            eprintln!("  write {off}+{len} ok");
                        }
                        let v = txn.get_mut(name).unwrap();
                        let end = off as usize + len;
                        if v.len() < end {
                            v.resize(end, 0);
                        }
                        v[off as usize..end].copy_from_slice(&data);
                    }
                    Err(Error::NoSpace) => {
                        if std::env::var("MODEL_TRACE").is_ok() {
                            eprintln!("  write {off}+{len} -> NoSpace");
                        }
                        // A failed write may have written part: resync the
                        // model from the filesystem for this file only.
                        let mut buf = vec![0u8; f.len().unwrap() as usize];
                        f.read_at(0, &mut buf).unwrap();
                        txn.insert(name.to_string(), buf);
                    }
                    Err(e) => panic!("{ctx}: write: {e}"),
                }
            }
            25..=39 => {
                let data = vec![rng.gen::<u8>(); rng.gen_range(1..max_len)];
                if let Ok(f) = fs.open_file_with(name, true, false) {
                    txn.entry(name.to_string()).or_default();
                    match f.append(&data) {
                        Ok(_) => txn.get_mut(name).unwrap().extend_from_slice(&data),
                        Err(Error::NoSpace) => {
                            let mut buf = vec![0u8; f.len().unwrap() as usize];
                            f.read_at(0, &mut buf).unwrap();
                            txn.insert(name.to_string(), buf);
                        }
                        Err(e) => panic!("{ctx}: append: {e}"),
                    }
                }
            }
            40..=49 => {
                if let Some(v) = txn.get_mut(name) {
                    let new = rng.gen_range(0..v.len() + 20_000);
                    match fs.open_file(name).unwrap().set_len(new as u64) {
                        Ok(()) => v.resize(new, 0),
                        Err(Error::NoSpace) => {}
                        Err(e) => panic!("{ctx}: set_len: {e}"),
                    }
                }
            }
            50..=57 => {
                let to = NAMES[rng.gen_range(0..NAMES.len())];
                if txn.contains_key(name) {
                    match fs.rename(name, to) {
                        Ok(()) => {
                            let v = txn.remove(name).unwrap();
                            txn.insert(to.to_string(), v);
                        }
                        Err(Error::NoSpace) => {}
                        Err(e) => panic!("{ctx}: rename {name} {to}: {e}"),
                    }
                }
            }
            58..=64 => {
                if txn.contains_key(name) {
                    fs.remove(name).unwrap();
                    txn.remove(name);
                }
            }
            65..=84 => match fs.commit() {
                Ok(g) => {
                    committed = txn.clone();
                    history.push((g, committed.clone()));
                    compare(&fs, &committed, &ctx);
                }
                Err(Error::NoSpace) => {
                    fs.abort().unwrap();
                    txn = committed.clone();
                }
                Err(e) => panic!("{ctx}: commit: {e}"),
            },
            85..=89 => {
                fs.abort().unwrap();
                txn = committed.clone();
            }
            90..=95 => {
                fs.abort().unwrap();
                txn = committed.clone();
                // Closing seals a one-flush commit with a log-free slot: a
                // new generation holding the same state.
                fs.close().unwrap();
                let g = fs.generation();
                if history.last().map(|h| h.0) != Some(g) {
                    history.push((g, committed.clone()));
                }
                drop(fs);
                fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
                compare(&fs, &committed, &ctx);
                let r = check(
                    dev.clone(),
                    &CheckOptions {
                        verify_data: true,
                        ..Default::default()
                    },
                )
                .unwrap();
                assert!(r.is_clean(), "{ctx}: check: {:#?}", r.problems);
            }
            _ => {
                // Open every retained older generation and compare.
                let gens = fs.generations();
                for g in gens {
                    let Some((_, m)) = history.iter().find(|(hg, _)| *hg == g.generation) else {
                        panic!(
                            "{ctx}: generation {} retained but never committed",
                            g.generation
                        )
                    };
                    let old = Fs::open(
                        dev.clone(),
                        &OpenOptions {
                            generation: Some(g.generation),
                            ..Default::default()
                        },
                    )
                    .unwrap_or_else(|e| panic!("{ctx}: open generation {}: {e}", g.generation));
                    compare(&old, m, &format!("{ctx} gen {}", g.generation));
                }
            }
        }
        compare_txn(&fs, &txn, &ctx);
    }
    let r = check(
        dev.clone(),
        &CheckOptions {
            verify_data: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.is_clean(), "seed {seed} final check: {:#?}", r.problems);
}

#[test]
fn model_roomy() {
    for seed in 0..12 {
        run(seed, 300, 4096, 4096);
    }
}

#[test]
fn model_near_full() {
    for seed in 100..112 {
        run(seed, 300, 200, 4096);
    }
}

#[test]
fn model_small_blocks() {
    for seed in 200..206 {
        run(seed, 250, 8192, 512);
    }
}
