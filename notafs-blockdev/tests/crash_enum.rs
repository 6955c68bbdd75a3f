//! Properties of the enumeration itself: determinism from the seed, lazy
//! splitting by cut, counts, the cut ranges each state stands for, and the
//! per-op caps.
use notafs_blockdev::crash::{CrashDevice, EnumOptions, OpKind};
use notafs_blockdev::BlockDevice;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BS: usize = 512;

/// A random log over 16 blocks; returns the device and the live image after
/// each prefix (index = cut).
fn random_log(seed: u64, ops: usize) -> (CrashDevice, Vec<Vec<u8>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dev = CrashDevice::new(BS as u32, 16).expect("device");
    dev.set_atomic_unit(0);
    let mut live = vec![dev.snapshot().to_vec()];
    for _ in 0..ops {
        let len = rng.gen_range(1..=4u64);
        let b = rng.gen_range(0..=16 - len);
        match rng.gen_range(0..12) {
            0 => dev.flush(),
            1 | 2 => dev.barrier(),
            3 => dev.discard(b, len),
            4 => dev.write_zeroes(b, len),
            _ => dev.write(b, &vec![rng.gen_range(1..=255u8); len as usize * BS]),
        }
        .expect("op");
        live.push(dev.snapshot().to_vec());
    }
    (dev, live)
}

fn is_data(k: &OpKind) -> bool {
    !matches!(k, OpKind::Flush | OpKind::Barrier)
}

fn descs(dev: &CrashDevice, opts: &EnumOptions) -> Vec<String> {
    dev.states(opts).map(|s| s.desc).collect()
}

#[test]
fn same_log_and_seed_give_same_states() {
    let opts = EnumOptions {
        max_exhaustive: 3,
        random_subsets: 8,
        seed: 42,
        ..EnumOptions::default()
    };
    let (a, _) = random_log(1, 60);
    let (b, _) = random_log(1, 60);
    assert_eq!(descs(&a, &opts), descs(&b, &opts));
    let ia: Vec<Vec<u8>> = a.states(&opts).map(|s| s.image().to_vec()).collect();
    let ib: Vec<Vec<u8>> = b.states(&opts).map(|s| s.image().to_vec()).collect();
    assert_eq!(ia, ib);
    // Another seed draws other random subsets.
    let other = EnumOptions {
        seed: 43,
        ..opts.clone()
    };
    assert_ne!(descs(&a, &opts), descs(&a, &other));
}

#[test]
fn splitting_by_cut_and_counting_agree() {
    let (dev, live) = random_log(2, 80);
    for opts in [
        EnumOptions::default(),
        EnumOptions {
            max_exhaustive: 2,
            random_subsets: 5,
            ..EnumOptions::default()
        },
        EnumOptions {
            exact_blocks: 6,
            ..EnumOptions::default()
        },
    ] {
        let all = descs(&dev, &opts);
        assert_eq!(all.len() as u64, dev.count_states(&opts));
        let len = live.len();
        let mut joined = Vec::new();
        for k in (0..len).step_by(7) {
            joined.extend(dev.states_between(&opts, k..k + 7).map(|s| s.desc));
        }
        assert_eq!(joined, all);
        for st in dev.states_between(&opts, 10..20) {
            assert!((10..20).contains(&st.cut));
        }
    }
}

/// Every cut is covered, by the image that keeps everything at least; no
/// state starts right after a barrier or flush (they add none); ranges
/// never run past the flush that makes a dropped op durable.
#[test]
fn cut_ranges_are_exact() {
    let (dev, live) = random_log(3, 120);
    let log = dev.log();
    let opts = EnumOptions {
        max_exhaustive: 4,
        ..EnumOptions::default()
    };
    let mut covered = vec![false; live.len()];
    for st in dev.states(&opts) {
        assert!(st.cut <= st.last_cut && st.last_cut < live.len());
        if st.cut > 0 {
            assert!(is_data(&log[st.cut - 1].kind), "{st:?}");
        }
        if st.all_kept() {
            // It is the live image until the next data op is issued; after
            // that it stands as "that op dropped" (checked against the
            // model in crash_model.rs).
            let img = st.image().to_vec();
            for c in st.cut..=st.last_cut {
                if c > st.cut && is_data(&log[c - 1].kind) {
                    break;
                }
                assert!(img == live[c], "all-kept state differs from live at {c}");
                covered[c] = true;
            }
        } else {
            // Something is dropped or altered: no flush inside the range.
            for op in &log[st.cut..st.last_cut] {
                assert!(!matches!(op.kind, OpKind::Flush));
            }
            let ends_at_flush = matches!(
                log.get(st.last_cut).map(|o| &o.kind),
                Some(OpKind::Flush) | None
            );
            assert!(ends_at_flush, "{st:?}");
        }
    }
    assert!(covered.iter().all(|c| *c), "some cut has no all-kept state");
}

/// Very large writes get at most `max_points` tear points and garbage
/// blocks; by default every block boundary.
#[test]
fn max_points_caps_large_writes() {
    let dev = CrashDevice::new(BS as u32, 300).expect("device");
    dev.write(0, &vec![1u8; 256 * BS]).expect("write");
    let only =
        |opts: &EnumOptions, what: &str| dev.states(opts).filter(|s| s.desc.contains(what)).count();
    let all = EnumOptions::default();
    assert_eq!(only(&all, "torn"), 2 * 255);
    assert_eq!(only(&all, "garbage"), 256);
    let capped = EnumOptions {
        max_points: 8,
        ..EnumOptions::default()
    };
    assert_eq!(only(&capped, "torn"), 2 * 8);
    assert_eq!(only(&capped, "garbage"), 8);
    // Ends are kept: a tear after the first and before the last block.
    assert!(dev
        .states(&capped)
        .any(|s| s.desc.contains("blocks ..1 new")));
    assert!(dev
        .states(&capped)
        .any(|s| s.desc.contains("blocks ..255 new")));
}

/// The description names what each state does.
#[test]
fn descriptions_say_what_survived() {
    let dev = CrashDevice::new(BS as u32, 8).expect("device");
    dev.set_atomic_unit(0);
    dev.write(0, &[1u8; 2 * BS]).expect("write");
    dev.write(2, &[2u8; BS]).expect("write");
    dev.barrier().expect("barrier");
    dev.discard(4, 2).expect("discard");
    let d = descs(&dev, &EnumOptions::default());
    let has = |s: &str| d.iter().any(|x| x.contains(s));
    assert!(has("nothing issued"));
    assert!(has("kept [#1], rest dropped"), "{d:#?}");
    assert!(has("#0 write 0+2 torn: blocks ..1 new, 1.. old"));
    assert!(has("#2 write 2+1 block 0 garbage") || has("#1 write 2+1 block 0 garbage"));
    assert!(has("earlier epochs #0..#2 kept"));
    assert!(has("#3 discard 4+2 reads zeros"));
    let exact = descs(
        &dev,
        &EnumOptions {
            exact_blocks: 4,
            ..EnumOptions::default()
        },
    );
    assert!(exact.iter().any(|x| x.contains("#0=NG #1=N")), "{exact:#?}");
}
