//! The crash device against an independent brute-force statement of the
//! crash model: on small random logs, every state it yields is an image the
//! model allows at every cut it claims (soundness), and in exhaustive
//! settings it yields exactly the model's set of images (completeness).
//! Also: flushed writes are never lost, and the barrier rule always holds.
use std::collections::HashSet;

use notafs_blockdev::crash::{CrashDevice, DiscardFill, EnumOptions};
use notafs_blockdev::BlockDevice;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BS: usize = 512;

#[derive(Clone, Debug)]
enum TOp {
    Write(u64, Vec<u8>),
    Zeroes(u64, u64),
    Discard(u64, u64),
    Flush,
    Barrier,
}

impl TOp {
    fn is_data(&self) -> bool {
        !matches!(self, TOp::Flush | TOp::Barrier)
    }

    fn range(&self) -> (u64, u64) {
        match self {
            TOp::Write(b, d) => (*b, (d.len() / BS) as u64),
            TOp::Zeroes(b, n) | TOp::Discard(b, n) => (*b, *n),
            _ => (0, 0),
        }
    }
}

/// How the model is parameterised for one log.
#[derive(Clone, Copy, Debug)]
struct Model {
    blocks: u64,
    atomic_unit: u32,
    fill: DiscardFill,
    torn: bool,
    garbage: bool,
    variants: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Val {
    Old,
    New,
    Garbage,
    Zeros,
}

struct Case {
    ops: Vec<TOp>,
    model: Model,
    dev: CrashDevice,
}

/// A random log of at most `max_data` data ops over `blocks` blocks.
fn random_case(rng: &mut StdRng, max_data: usize, max_len: u64, model: Model) -> Case {
    let dev = CrashDevice::new(BS as u32, model.blocks).expect("device");
    dev.set_atomic_unit(model.atomic_unit);
    dev.set_discard_fill(model.fill);
    let mut ops = Vec::new();
    let n_data = rng.gen_range(1..=max_data);
    let mut data = 0;
    while data < n_data {
        let r = rng.gen_range(0..100);
        let op = if r < 12 {
            TOp::Flush
        } else if r < 27 {
            TOp::Barrier
        } else {
            data += 1;
            let len = rng.gen_range(1..=max_len.min(model.blocks));
            let b = rng.gen_range(0..=model.blocks - len);
            match rng.gen_range(0..10) {
                0 => TOp::Zeroes(b, len),
                1 => TOp::Discard(b, len),
                _ => {
                    // Never all zeros, so "new" differs from a fresh block.
                    let d: Vec<u8> = (0..len as usize * BS)
                        .map(|_| rng.gen_range(1..=255))
                        .collect();
                    TOp::Write(b, d)
                }
            }
        };
        match &op {
            TOp::Write(b, d) => dev.write(*b, d),
            TOp::Zeroes(b, n) => dev.write_zeroes(*b, *n),
            TOp::Discard(b, n) => dev.discard(*b, *n),
            TOp::Flush => dev.flush(),
            TOp::Barrier => dev.barrier(),
        }
        .expect("op");
        ops.push(op);
    }
    if rng.gen_bool(0.3) {
        dev.flush().expect("flush");
        ops.push(TOp::Flush);
    }
    Case { ops, model, dev }
}

impl Case {
    /// Content of block `i` of op `idx` for a per-block choice.
    fn content(&self, idx: usize, i: u64, v: Val) -> Vec<u8> {
        let (b, _) = self.ops[idx].range();
        let garbage = || self.dev.garbage_content(idx, b + i);
        match (v, &self.ops[idx]) {
            (Val::Garbage, _) => garbage(),
            (Val::Zeros, _) => vec![0; BS],
            (Val::New, TOp::Write(_, d)) => d[i as usize * BS..(i as usize + 1) * BS].to_vec(),
            (Val::New, TOp::Discard(..)) => match self.model.fill {
                DiscardFill::Zeros => vec![0; BS],
                DiscardFill::Garbage => garbage(),
            },
            (Val::New, _) => vec![0; BS],
            (Val::Old, _) => unreachable!("old is never written"),
        }
    }

    fn apply(&self, img: &mut [u8], idx: usize, vals: &[Val]) {
        let (b, _) = self.ops[idx].range();
        for (i, v) in vals.iter().enumerate() {
            if *v != Val::Old {
                let o = (b as usize + i) * BS;
                img[o..o + BS].copy_from_slice(&self.content(idx, i as u64, *v));
            }
        }
    }

    fn apply_whole(&self, img: &mut [u8], idx: usize) {
        let k = self.ops[idx].range().1 as usize;
        self.apply(img, idx, &vec![Val::New; k]);
    }

    /// Every per-block pattern the model allows for op `idx`.
    fn patterns(&self, idx: usize) -> Vec<Vec<Val>> {
        let m = self.model;
        let op = &self.ops[idx];
        let k = op.range().1 as usize;
        let mut menu = vec![Val::Old, Val::New];
        if m.garbage {
            menu.push(Val::Garbage);
        }
        let discard = matches!(op, TOp::Discard(..));
        if discard && m.variants {
            menu.push(Val::Zeros);
            menu.push(Val::Garbage);
        }
        let tearable = m.torn && (discard || k as u64 * BS as u64 > m.atomic_unit as u64);
        let product = |menu: &[Val]| {
            let mut out: Vec<Vec<Val>> = vec![vec![]];
            for _ in 0..k {
                out = out
                    .into_iter()
                    .flat_map(|p| {
                        menu.iter().map(move |v| {
                            let mut q = p.clone();
                            q.push(*v);
                            q
                        })
                    })
                    .collect();
            }
            out
        };
        if tearable {
            product(&menu)
        } else {
            let mut out = vec![vec![Val::Old; k]];
            out.extend(product(&menu[1..]));
            out
        }
    }

    /// The durable base at cut `c` and the pending data ops by epoch.
    fn base_and_epochs(&self, c: usize) -> (Vec<u8>, Vec<Vec<usize>>) {
        let f = self.ops[..c].iter().rposition(|o| matches!(o, TOp::Flush));
        let mut base = vec![0u8; self.model.blocks as usize * BS];
        let first = f.map_or(0, |f| f + 1);
        for idx in 0..first {
            if self.ops[idx].is_data() {
                self.apply_whole(&mut base, idx);
            }
        }
        let mut epochs: Vec<Vec<usize>> = vec![vec![]];
        for idx in first..c {
            match self.ops[idx] {
                TOp::Barrier => epochs.push(vec![]),
                _ => epochs.last_mut().expect("epoch").push(idx),
            }
        }
        epochs.retain(|e| !e.is_empty());
        (base, epochs)
    }

    /// Brute force: every image the model allows at cut `c`.
    fn model_images(&self, c: usize) -> HashSet<Vec<u8>> {
        let (base, epochs) = self.base_and_epochs(c);
        let mut out = HashSet::new();
        out.insert(base.clone());
        for j in 0..epochs.len() {
            let mut img0 = base.clone();
            for e in &epochs[..j] {
                for &idx in e {
                    self.apply_whole(&mut img0, idx);
                }
            }
            // Deduplicating after each op keeps this small: a handful of
            // blocks has few distinct contents, however many combinations.
            let mut imgs: HashSet<Vec<u8>> = HashSet::from([img0]);
            for &idx in &epochs[j] {
                let pats = self.patterns(idx);
                imgs = imgs
                    .iter()
                    .flat_map(|img| {
                        pats.iter().map(move |p| {
                            let mut img = img.clone();
                            self.apply(&mut img, idx, p);
                            img
                        })
                    })
                    .collect();
            }
            out.extend(imgs);
        }
        out
    }

    /// Soundness at every cut each state claims; returns, per cut, the
    /// distinct images the device yields there.
    fn check_sound(&self, opts: &EnumOptions) -> Vec<HashSet<Vec<u8>>> {
        let len = self.ops.len();
        let models: Vec<HashSet<Vec<u8>>> = (0..=len).map(|c| self.model_images(c)).collect();
        let mut got = vec![HashSet::new(); len + 1];
        let mut n = 0u64;
        for st in self.dev.states(opts) {
            n += 1;
            assert!(st.cut <= st.last_cut && st.last_cut <= len, "{st:?}");
            let img = st.image().to_vec();
            for c in st.cut..=st.last_cut {
                assert!(
                    models[c].contains(&img),
                    "state not allowed by the model at cut {c}: {st:?}\nlog {:?}\nmodel {:?}",
                    self.ops,
                    self.model
                );
                got[c].insert(img.clone());
            }
        }
        assert_eq!(n, self.dev.count_states(opts), "count_states");
        got
    }

    fn check_complete(&self, opts: &EnumOptions) {
        let got = self.check_sound(opts);
        for (c, imgs) in got.iter().enumerate() {
            let want = self.model_images(c);
            assert_eq!(
                imgs.len(),
                want.len(),
                "cut {c}: device yields {} distinct images, the model allows {}\nlog {:?}\nmodel {:?}",
                imgs.len(),
                want.len(),
                self.ops,
                self.model
            );
            assert!(imgs == &want, "cut {c}: different image sets");
        }
    }
}

fn random_model(rng: &mut StdRng) -> Model {
    Model {
        blocks: rng.gen_range(3..=5),
        atomic_unit: [0u32, 512, 1024, 4096][rng.gen_range(0..4)],
        fill: if rng.gen_bool(0.5) {
            DiscardFill::Zeros
        } else {
            DiscardFill::Garbage
        },
        torn: rng.gen_bool(0.7),
        garbage: rng.gen_bool(0.5),
        variants: rng.gen_bool(0.5),
    }
}

/// Exact mode is the model: same images at every cut, whatever the flags.
#[test]
fn exact_mode_equals_brute_force() {
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..250 {
        let model = random_model(&mut rng);
        let case = random_case(&mut rng, 4, 2, model);
        let opts = EnumOptions {
            exact_blocks: 16,
            torn: model.torn,
            garbage: model.garbage,
            discard_variants: model.variants,
            ..EnumOptions::default()
        };
        case.check_complete(&opts);
    }
}

/// With atomic ops and no garbage, the standard subsets are the whole model.
#[test]
fn exhaustive_subsets_equal_brute_force() {
    let mut rng = StdRng::seed_from_u64(2);
    for _ in 0..250 {
        let model = Model {
            torn: false,
            garbage: false,
            variants: false,
            ..random_model(&mut rng)
        };
        let case = random_case(&mut rng, 6, 3, model);
        let opts = EnumOptions {
            torn: false,
            garbage: false,
            discard_variants: false,
            ..EnumOptions::default()
        };
        case.check_complete(&opts);
    }
}

/// The default enumeration, and the sampled one for large epochs, only ever
/// yield allowed images; and it contains every single tear and garbage
/// block of every op on top of "everything issued kept".
#[test]
fn standard_mode_is_sound_and_covers_tears_and_garbage() {
    let mut rng = StdRng::seed_from_u64(3);
    for round in 0..250 {
        let model = Model {
            torn: true,
            garbage: true,
            variants: true,
            ..random_model(&mut rng)
        };
        let case = random_case(&mut rng, 6, 3, model);
        let opts = EnumOptions {
            // Exercise the sampled path (all-but-one, only-one, random).
            max_exhaustive: if round % 2 == 0 { 10 } else { 1 },
            random_subsets: 3,
            seed: round,
            ..EnumOptions::default()
        };
        let got = case.check_sound(&opts);
        for (idx, op) in case.ops.iter().enumerate() {
            if !op.is_data() {
                continue;
            }
            let c = idx + 1;
            let (base, epochs) = case.base_and_epochs(c);
            let mut before = base;
            for e in &epochs {
                for &i in e {
                    if i != idx {
                        case.apply_whole(&mut before, i);
                    }
                }
            }
            let k = op.range().1 as usize;
            let mut expect = Vec::new();
            let discard = matches!(op, TOp::Discard(..));
            if discard || k * BS > model.atomic_unit as usize {
                for at in 1..k {
                    for new_prefix in [true, false] {
                        let vals: Vec<Val> = (0..k)
                            .map(|i| {
                                if (i < at) == new_prefix {
                                    Val::New
                                } else {
                                    Val::Old
                                }
                            })
                            .collect();
                        expect.push(vals);
                    }
                }
            }
            if !(discard && model.fill == DiscardFill::Garbage) {
                for g in 0..k {
                    expect.push(
                        (0..k)
                            .map(|i| if i == g { Val::Garbage } else { Val::New })
                            .collect(),
                    );
                }
            }
            for vals in expect {
                let mut img = before.clone();
                case.apply(&mut img, idx, &vals);
                assert!(
                    got[c].contains(&img),
                    "missing modification of op {idx} at cut {c}: {:?}",
                    case.ops
                );
            }
        }
    }
}

/// An epoch too large for every subset still gets every all-but-one and
/// every only-one state, and the requested number of random ones.
#[test]
fn large_epoch_gets_one_missing_only_one_and_random() {
    let n = 14u64;
    let dev = CrashDevice::new(BS as u32, n).expect("device");
    let blocks: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8 + 1; BS]).collect();
    for (i, b) in blocks.iter().enumerate() {
        dev.write(i as u64, b).expect("write");
    }
    let opts = EnumOptions {
        max_exhaustive: 10,
        random_subsets: 5,
        torn: false,
        garbage: false,
        discard_variants: false,
        ..EnumOptions::default()
    };
    let last = n as usize;
    let states: Vec<_> = dev.states(&opts).filter(|s| s.covers(last)).collect();
    let imgs: HashSet<Vec<u8>> = states.iter().map(|s| s.image().to_vec()).collect();
    for skip in 0..n as usize {
        let mut img = Vec::new();
        let mut only = vec![0u8; n as usize * BS];
        for (i, b) in blocks.iter().enumerate() {
            img.extend(if i == skip { vec![0; BS] } else { b.clone() });
        }
        only[skip * BS..(skip + 1) * BS].copy_from_slice(&blocks[skip]);
        assert!(imgs.contains(&img), "all but #{skip} missing");
        assert!(imgs.contains(&only), "only #{skip} missing");
    }
    // Cut 14 itself: full, 13 all-but-one, only-one, 5 random.
    let at_last = states.iter().filter(|s| s.cut == last).count();
    assert_eq!(at_last, 1 + 13 + 1 + 5);
    // Cuts 1..=10 exhaustive: 2^10 - 1 non-empty subsets of the first ten,
    // plus the initial image.
    let early = dev.states_between(&opts, 0..11).count();
    assert_eq!(early, 1 << 10);
}

/// After a flush returns, no state loses a flushed write: every block that
/// no op pending at the cut touches holds the durable image.
#[test]
fn flushed_writes_are_never_lost() {
    let mut rng = StdRng::seed_from_u64(4);
    for round in 0..200 {
        let model = random_model(&mut rng);
        let case = random_case(&mut rng, 6, 3, model);
        let opts = EnumOptions {
            exact_blocks: if round % 2 == 0 { 6 } else { 0 },
            max_exhaustive: 3,
            ..EnumOptions::default()
        };
        for st in case.dev.states(&opts) {
            let img = st.image().to_vec();
            for c in st.cut..=st.last_cut {
                let (base, epochs) = case.base_and_epochs(c);
                let mut touched = vec![false; model.blocks as usize];
                for &idx in epochs.iter().flatten() {
                    let (b, k) = case.ops[idx].range();
                    for t in &mut touched[b as usize..(b + k) as usize] {
                        *t = true;
                    }
                }
                for (blk, t) in touched.iter().enumerate() {
                    let r = blk * BS..(blk + 1) * BS;
                    assert!(
                        *t || img[r.clone()] == base[r],
                        "block {blk} lost its flushed content at cut {c}: {st:?}"
                    );
                }
            }
        }
    }
}

/// The barrier rule on logs of non-overlapping writes, where each block
/// tells which op it came from: if any block of an op after a barrier is
/// not old, every op before the barrier is entirely new.
#[test]
fn barrier_rule_holds_in_every_state() {
    let mut rng = StdRng::seed_from_u64(5);
    for round in 0..200 {
        let blocks = 12u64;
        let dev = CrashDevice::new(BS as u32, blocks).expect("device");
        dev.set_atomic_unit([0u32, 512][round % 2]);
        let mut ops: Vec<TOp> = Vec::new();
        let mut next = 0u64;
        while next < blocks {
            match rng.gen_range(0..6) {
                0 => {
                    dev.barrier().expect("barrier");
                    ops.push(TOp::Barrier);
                }
                1 if rng.gen_bool(0.3) => {
                    dev.flush().expect("flush");
                    ops.push(TOp::Flush);
                }
                _ => {
                    let len = rng.gen_range(1..=3).min(blocks - next);
                    let d: Vec<u8> = (0..len as usize * BS)
                        .map(|_| rng.gen_range(1..=255))
                        .collect();
                    dev.write(next, &d).expect("write");
                    ops.push(TOp::Write(next, d));
                    next += len;
                }
            }
        }
        let opts = EnumOptions {
            max_exhaustive: [2, 10][round % 2],
            random_subsets: 4,
            exact_blocks: [0, 5][round / 2 % 2],
            ..EnumOptions::default()
        };
        for st in dev.states(&opts) {
            let img = st.image().to_vec();
            for c in [st.cut, st.last_cut] {
                let f = ops[..c].iter().rposition(|o| matches!(o, TOp::Flush));
                let mut epoch = 0;
                // Per pending op: (epoch, all blocks new, some block not old).
                let mut seen: Vec<(usize, bool, bool)> = Vec::new();
                for op in &ops[f.map_or(0, |f| f + 1)..c] {
                    match op {
                        TOp::Barrier => epoch += 1,
                        TOp::Write(b, d) => {
                            let o = *b as usize * BS;
                            let got = &img[o..o + d.len()];
                            let whole = got == &d[..];
                            let touched = got.chunks(BS).any(|blk| blk.iter().any(|&x| x != 0));
                            seen.push((epoch, whole, touched));
                        }
                        _ => {}
                    }
                }
                for &(e, _, touched) in &seen {
                    if touched {
                        for &(e2, whole2, _) in &seen {
                            assert!(e2 >= e || whole2, "barrier rule broken at cut {c}: {st:?}");
                        }
                    }
                }
            }
        }
    }
}
