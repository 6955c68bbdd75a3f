//! Enumeration of crash states: which images a power cut may leave, per the
//! crash model, relative to the log. The rules and the deduplication argument
//! are in the [module docs](super).
use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;

use super::block::{mix, Block, SplitMix};
use super::image::{CrashImage, Image};
use super::log::{DiscardFill, Log, Op};

/// Largest accepted `max_exhaustive`: 2^19 subsets per cut is already more
/// than a harness can check; larger values would also overflow the masks.
const MAX_EXHAUSTIVE_CAP: usize = 20;
/// Largest accepted `exact_blocks`: the full per-block model of 16 blocks is
/// up to 3^16 states per cut.
const EXACT_BLOCKS_CAP: usize = 16;

/// What to enumerate. `Default` follows issue 2: exhaustive subsets up to 10
/// pending writes per epoch, 16 random subsets beyond, tears, garbage and
/// discard variants on, no per-block exact mode, every tear point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnumOptions {
    /// An epoch with at most this many pending ops (so far, at the cut) gets
    /// every subset; a larger one gets all-but-one, only-one and random
    /// subsets. Capped at 20.
    pub max_exhaustive: usize,
    /// Seeded random subsets per cut of a large epoch.
    pub random_subsets: usize,
    /// Seed of the random subsets.
    pub seed: u64,
    /// Tear writes larger than the atomic unit (and discards, which may act
    /// on part of their range) at block boundaries. When false every op is
    /// treated as atomic.
    pub torn: bool,
    /// Replace one block of a kept op by garbage. This deliberately ignores
    /// the atomic unit: the filesystem must not rely on sector atomicity.
    pub garbage: bool,
    /// Discards may also read as the fill they were not given (zeros or
    /// garbage); "old" is the state that drops the discard.
    pub discard_variants: bool,
    /// When the epoch being cut holds at most this many blocks, enumerate
    /// the full per-block model instead (every block of every op old, new or
    /// garbage, every combination, atomic ops all-old or all-not-old). 0
    /// disables it; capped at 16.
    pub exact_blocks: usize,
    /// At most this many tear points and garbage blocks per op, evenly
    /// spread including both ends, for very large writes and discards.
    pub max_points: usize,
}

impl Default for EnumOptions {
    fn default() -> Self {
        EnumOptions {
            max_exhaustive: 10,
            random_subsets: 16,
            seed: 0,
            torn: true,
            garbage: true,
            discard_variants: true,
            exact_blocks: 0,
            max_points: usize::MAX,
        }
    }
}

/// Digits of the exact mode, one per block of the epoch's ops.
const OLD: u8 = 0;
const NEW: u8 = 1;
const GARBAGE: u8 = 2;
const ZEROS: u8 = 3;

/// Which ops of the cut epoch (positions `0..n`, `n - 1` being the op just
/// issued) a standard state keeps.
#[derive(Clone, Debug)]
enum Subset {
    Mask(u64),
    Full,
    AllBut(usize),
    Only,
    Bits(Arc<[u64]>),
}

impl Subset {
    fn contains(&self, pos: usize, n: usize) -> bool {
        match self {
            Subset::Mask(m) => m >> pos & 1 == 1,
            Subset::Full => true,
            Subset::AllBut(p) => pos != *p,
            Subset::Only => pos + 1 == n,
            Subset::Bits(b) => b[pos / 64] >> (pos % 64) & 1 == 1,
        }
    }

    fn is_full(&self, n: usize) -> bool {
        match self {
            Subset::Full => true,
            Subset::Mask(m) => m.count_ones() as usize == n,
            Subset::Only => n == 1,
            _ => false,
        }
    }
}

/// How the one modified op of a standard state deviates from "kept".
#[derive(Clone, Copy, Debug)]
enum Modif {
    None,
    /// Blocks `..at` new and the rest old (`new_prefix`), or the reverse.
    Torn {
        pos: usize,
        at: u64,
        new_prefix: bool,
    },
    /// Kept, except block `blk` of the op holds garbage.
    Garbage {
        pos: usize,
        blk: u64,
    },
    /// A discard that reads as `fill` instead of its own fill.
    Fill {
        pos: usize,
        fill: DiscardFill,
    },
}

#[derive(Clone, Debug)]
enum Kind {
    /// The initial image (cut 0).
    Initial,
    Standard(Subset, Modif),
    /// Per-block digits for the epoch's ops, in log order.
    Exact(Arc<[u8]>),
}

/// A state before it is dressed up: epoch `start..cut`, earlier epochs since
/// the durable base kept whole (they are in the snapshot at `start`).
#[derive(Clone, Debug)]
struct Choice {
    cut: usize,
    start: usize,
    kind: Kind,
}

/// One crash state: an image a power cut may leave.
#[derive(Clone)]
pub struct CrashState {
    /// First cut at which this image is possible: ops `0..cut` were issued.
    pub cut: usize,
    /// Last cut at which it is still possible (inclusive): the state is a
    /// crash image for every cut in `cut..=last_cut`, so an oracle must hold
    /// at all of them: newest commit returned by `last_cut` ≤ generation ≤
    /// newest commit started by `cut`.
    pub last_cut: usize,
    /// Index of the flush whose image is the durable base; `None`: the
    /// initial image.
    pub base_flush: Option<usize>,
    /// Which ops are kept, dropped, torn or garbage.
    pub desc: String,
    log: Arc<Log>,
    choice: Choice,
}

impl std::fmt::Debug for CrashState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.desc)
    }
}

impl CrashState {
    /// Build the image (the durable snapshot plus this state's blocks,
    /// copy-on-write).
    pub fn image(&self) -> CrashImage {
        CrashImage::new(self.log.geo, self.log.salt, build(&self.log, &self.choice))
    }

    /// Whether this image is a possible crash state at `cut`.
    pub fn covers(&self, cut: usize) -> bool {
        (self.cut..=self.last_cut).contains(&cut)
    }

    /// Whether every issued op survives whole (the image equals what the
    /// device read back at `cut`).
    pub fn all_kept(&self) -> bool {
        all_kept(&self.choice)
    }
}

fn all_kept(c: &Choice) -> bool {
    let n = c.cut - c.start;
    match &c.kind {
        Kind::Initial => true,
        Kind::Standard(s, Modif::None) => s.is_full(n),
        Kind::Standard(..) => false,
        Kind::Exact(d) => d.iter().all(|&x| x == NEW),
    }
}

/// The lazy iterator of [`CrashDevice::states`](super::CrashDevice::states).
pub struct CrashStates {
    log: Arc<Log>,
    opts: EnumOptions,
    /// `next_flush[i]`: first flush at index ≥ i (`len` if none); `len + 1` long.
    next_flush: Vec<usize>,
    /// `next_data[i]`: first data op at index ≥ i (`len` if none).
    next_data: Vec<usize>,
    /// `last_flush[c]`: last flush at index < c.
    last_flush: Vec<Option<usize>>,
    cut: usize,
    end: usize,
    segs: VecDeque<Segment>,
}

impl CrashStates {
    pub(crate) fn new(log: Arc<Log>, opts: &EnumOptions, cuts: Range<usize>) -> Self {
        let len = log.ops.len();
        let mut opts = opts.clone();
        opts.max_exhaustive = opts.max_exhaustive.min(MAX_EXHAUSTIVE_CAP);
        opts.exact_blocks = opts.exact_blocks.min(EXACT_BLOCKS_CAP);
        let mut next_flush = vec![len; len + 1];
        let mut next_data = vec![len; len + 1];
        for i in (0..len).rev() {
            let op = &log.ops[i];
            next_flush[i] = if matches!(op, Op::Flush { .. }) {
                i
            } else {
                next_flush[i + 1]
            };
            next_data[i] = if op.is_data() { i } else { next_data[i + 1] };
        }
        let mut last_flush = vec![None; len + 1];
        for i in 0..len {
            last_flush[i + 1] = if matches!(log.ops[i], Op::Flush { .. }) {
                Some(i)
            } else {
                last_flush[i]
            };
        }
        CrashStates {
            end: cuts.end.min(len + 1),
            cut: cuts.start,
            log,
            opts,
            next_flush,
            next_data,
            last_flush,
            segs: VecDeque::new(),
        }
    }

    fn next_choice(&mut self) -> Option<Choice> {
        loop {
            if let Some(seg) = self.segs.front_mut() {
                if let Some(c) = seg.next() {
                    return Some(c);
                }
                self.segs.pop_front();
                continue;
            }
            if self.cut >= self.end {
                return None;
            }
            self.expand(self.cut);
            self.cut += 1;
        }
    }

    /// Number of states still to come, without building them.
    pub fn count_remaining(mut self) -> u64 {
        let mut total = 0u64;
        loop {
            while let Some(seg) = self.segs.pop_front() {
                total = total.saturating_add(seg.remaining());
            }
            if self.cut >= self.end {
                return total;
            }
            self.expand(self.cut);
            self.cut += 1;
        }
    }

    /// Queue the states new at cut `c`: those involving op `c - 1`.
    fn expand(&mut self, c: usize) {
        if c == 0 {
            let initial = Choice {
                cut: 0,
                start: 0,
                kind: Kind::Initial,
            };
            self.segs
                .push_back(Segment::List(vec![initial].into_iter()));
            return;
        }
        let log = &*self.log;
        let o = c - 1;
        if !log.ops[o].is_data() {
            // A barrier adds no state; a flush's only new state (nothing
            // pending) is the all-kept image already emitted (module docs).
            return;
        }
        let start = log.epoch_start[o];
        let n = c - start;
        let blocks = log.block_prefix[c] - log.block_prefix[start];
        if self.opts.exact_blocks > 0 && blocks <= self.opts.exact_blocks as u64 {
            self.segs
                .push_back(Segment::Exact(ExactGen::new(log, &self.opts, start, c)));
            return;
        }
        let std = |s: Subset, m: Modif| Choice {
            cut: c,
            start,
            kind: Kind::Standard(s, m),
        };
        let mut list = Vec::new();
        if n <= self.opts.max_exhaustive {
            self.segs.push_back(Segment::Masks {
                cut: c,
                start,
                next: 0,
                end: 1u64 << (n - 1),
            });
        } else {
            list.push(std(Subset::Full, Modif::None));
            for p in 0..n - 1 {
                list.push(std(Subset::AllBut(p), Modif::None));
            }
            list.push(std(Subset::Only, Modif::None));
            self.random_subsets(c, n, &mut |s| list.push(std(s, Modif::None)));
        }
        // Modifications of the op just issued, on everything kept and on it
        // alone; when the epoch is complete, of every earlier op on
        // everything kept.
        let mut subsets = vec![Subset::Full];
        if n > 1 {
            subsets.push(Subset::Only);
        }
        for s in subsets {
            self.modifications(start + n - 1, n - 1, &mut |m| list.push(std(s.clone(), m)));
        }
        let epoch_complete = !matches!(log.ops.get(c), Some(next) if next.is_data());
        if epoch_complete {
            for p in 0..n - 1 {
                self.modifications(start + p, p, &mut |m| list.push(std(Subset::Full, m)));
            }
        }
        self.segs.push_back(Segment::List(list.into_iter()));
    }

    /// Seeded random subsets of positions `0..n` containing `n - 1`,
    /// excluding the structured ones (full, all-but-one, only-one) and
    /// repeats. Bounded attempts, so a small space cannot loop forever.
    fn random_subsets(&self, c: usize, n: usize, push: &mut dyn FnMut(Subset)) {
        let want = self.opts.random_subsets;
        let mut rng = SplitMix::new(mix(self.opts.seed) ^ mix(c as u64));
        let words = n.div_ceil(64);
        let mut seen: HashSet<Vec<u64>> = HashSet::new();
        let mut attempts = want.saturating_mul(4);
        while seen.len() < want && attempts > 0 {
            attempts -= 1;
            let mut bits: Vec<u64> = (0..words).map(|_| rng.next_u64()).collect();
            let tail = n % 64;
            if tail > 0 {
                bits[words - 1] &= (1u64 << tail) - 1;
            }
            bits[(n - 1) / 64] |= 1u64 << ((n - 1) % 64);
            let pop: usize = bits.iter().map(|w| w.count_ones() as usize).sum();
            if pop == n || pop + 1 == n || pop == 1 {
                continue;
            }
            if seen.insert(bits.clone()) {
                push(Subset::Bits(Arc::from(bits)));
            }
        }
    }

    /// The modifications of op `idx` (position `pos` in its epoch).
    fn modifications(&self, idx: usize, pos: usize, push: &mut dyn FnMut(Modif)) {
        let op = &self.log.ops[idx];
        let (_, k) = op.range(self.log.geo.block_size);
        let max = self.opts.max_points;
        if self.opts.torn && op.tearable() && k >= 2 {
            for at in points(1, k, max) {
                push(Modif::Torn {
                    pos,
                    at,
                    new_prefix: true,
                });
                push(Modif::Torn {
                    pos,
                    at,
                    new_prefix: false,
                });
            }
        }
        // A garbage block in a discard that already fills with garbage is
        // the kept discard itself: skip the duplicate.
        if self.opts.garbage && op.fill() != Some(DiscardFill::Garbage) {
            for blk in points(0, k, max) {
                push(Modif::Garbage { pos, blk });
            }
        }
        if self.opts.discard_variants {
            let other = match op.fill() {
                Some(DiscardFill::Zeros) => Some(DiscardFill::Garbage),
                Some(DiscardFill::Garbage) => Some(DiscardFill::Zeros),
                None => None,
            };
            if let Some(fill) = other {
                push(Modif::Fill { pos, fill });
            }
        }
    }

    fn dress(&self, choice: Choice) -> CrashState {
        let len = self.log.ops.len();
        let c = choice.cut;
        let last_cut = if all_kept(&choice) {
            // Nothing dropped: the image stays possible until a later data
            // op is issued and then flushed (module docs).
            let nd = self.next_data[c];
            if nd >= len {
                len
            } else {
                self.next_flush[nd + 1]
            }
        } else {
            self.next_flush[c]
        };
        let base_flush = self.last_flush[c];
        let desc = describe(&self.log, &choice, last_cut, base_flush);
        CrashState {
            cut: c,
            last_cut,
            base_flush,
            desc,
            log: self.log.clone(),
            choice,
        }
    }
}

impl Iterator for CrashStates {
    type Item = CrashState;

    fn next(&mut self) -> Option<CrashState> {
        let c = self.next_choice()?;
        Some(self.dress(c))
    }
}

/// Up to `max` points of `lo..hi`, evenly spread and including both ends.
fn points(lo: u64, hi: u64, max: usize) -> Vec<u64> {
    let span = hi.saturating_sub(lo);
    if span <= max as u64 {
        return (lo..hi).collect();
    }
    if max <= 1 {
        return (lo..hi).take(max).collect();
    }
    let last = (max - 1) as u128;
    let mut out: Vec<u64> = (0..=last)
        .map(|i| lo + (i * (span - 1) as u128 / last) as u64)
        .collect();
    out.dedup();
    out
}

/// A run of states of one cut.
enum Segment {
    /// Every subset of the epoch containing its last op: masks `next..end`
    /// with the top bit (position `n - 1`) added.
    Masks {
        cut: usize,
        start: usize,
        next: u64,
        end: u64,
    },
    List(std::vec::IntoIter<Choice>),
    Exact(ExactGen),
}

impl Segment {
    fn next(&mut self) -> Option<Choice> {
        match self {
            Segment::Masks {
                cut,
                start,
                next,
                end,
            } => {
                if *next >= *end {
                    return None;
                }
                let top = 1u64 << (*cut - *start - 1);
                let m = *next | top;
                *next += 1;
                Some(Choice {
                    cut: *cut,
                    start: *start,
                    kind: Kind::Standard(Subset::Mask(m), Modif::None),
                })
            }
            Segment::List(it) => it.next(),
            Segment::Exact(g) => g.next(),
        }
    }

    fn remaining(&self) -> u64 {
        match self {
            Segment::Masks { next, end, .. } => end - next,
            Segment::List(it) => it.len() as u64,
            Segment::Exact(g) => g.remaining,
        }
    }
}

/// One op of an exact-mode epoch: its pattern index runs over `lo..hi`.
struct ExactOp {
    blocks: usize,
    /// Allowed digits per block, `OLD` first.
    menu: Vec<u8>,
    atomic: bool,
    lo: u64,
    hi: u64,
}

impl ExactOp {
    /// Digits of pattern `i`. Tearable: `i` in base |menu|. Atomic: 0 is
    /// all old, `i ≥ 1` is `i - 1` in base |menu| - 1 over the non-old digits.
    fn pattern(&self, mut i: u64, out: &mut Vec<u8>) {
        if self.atomic {
            if i == 0 {
                out.resize(out.len() + self.blocks, OLD);
                return;
            }
            i -= 1;
            let base = (self.menu.len() - 1) as u64;
            for _ in 0..self.blocks {
                out.push(self.menu[1 + (i % base) as usize]);
                i /= base;
            }
        } else {
            let base = self.menu.len() as u64;
            for _ in 0..self.blocks {
                out.push(self.menu[(i % base) as usize]);
                i /= base;
            }
        }
    }
}

/// Odometer over the per-op patterns of an epoch: the full per-block model.
struct ExactGen {
    cut: usize,
    start: usize,
    ops: Vec<ExactOp>,
    idx: Vec<u64>,
    remaining: u64,
}

impl ExactGen {
    fn new(log: &Log, opts: &EnumOptions, start: usize, cut: usize) -> Self {
        let mut ops = Vec::with_capacity(cut - start);
        let mut remaining = 1u64;
        for i in start..cut {
            let op = &log.ops[i];
            let blocks = op.range(log.geo.block_size).1 as usize;
            let mut menu = vec![OLD, NEW];
            match op.fill() {
                None if opts.garbage => menu.push(GARBAGE),
                Some(DiscardFill::Zeros) if opts.garbage || opts.discard_variants => {
                    menu.push(GARBAGE)
                }
                Some(DiscardFill::Garbage) if opts.discard_variants => menu.push(ZEROS),
                _ => {}
            }
            let atomic = !(opts.torn && op.tearable());
            let m = menu.len() as u64;
            let count = if atomic {
                1 + (m - 1).pow(blocks as u32)
            } else {
                m.pow(blocks as u32)
            };
            // The op just issued must leave a trace: pattern 0 (all old) is
            // the same state as at the previous cut.
            let lo = u64::from(i + 1 == cut);
            remaining = remaining.saturating_mul(count - lo);
            ops.push(ExactOp {
                blocks,
                menu,
                atomic,
                lo,
                hi: count,
            });
        }
        let idx = ops.iter().map(|o| o.lo).collect();
        ExactGen {
            cut,
            start,
            ops,
            idx,
            remaining,
        }
    }

    fn next(&mut self) -> Option<Choice> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let mut digits = Vec::new();
        for (op, &i) in self.ops.iter().zip(&self.idx) {
            op.pattern(i, &mut digits);
        }
        for (op, i) in self.ops.iter().zip(self.idx.iter_mut()) {
            *i += 1;
            if *i < op.hi {
                break;
            }
            *i = op.lo;
        }
        Some(Choice {
            cut: self.cut,
            start: self.start,
            kind: Kind::Exact(Arc::from(digits)),
        })
    }
}

/// The image of a choice: the snapshot at the epoch start (durable base plus
/// earlier epochs, whole) plus the chosen blocks of the epoch, in log order.
fn build(log: &Log, c: &Choice) -> Image {
    let mut img = log.base_at(c.start).clone();
    let bs = log.geo.block_size;
    let n = c.cut - c.start;
    match &c.kind {
        Kind::Initial => {}
        Kind::Standard(s, m) => {
            for pos in 0..n {
                if !s.contains(pos, n) {
                    continue;
                }
                let idx = c.start + pos;
                let (b, k) = log.ops[idx].range(bs);
                match *m {
                    Modif::Torn {
                        pos: p,
                        at,
                        new_prefix,
                    } if p == pos => {
                        for i in 0..k {
                            if (i < at) == new_prefix {
                                img.set(b + i, log.new_block(idx, i));
                            }
                        }
                    }
                    Modif::Garbage { pos: p, blk } if p == pos => {
                        for i in 0..k {
                            let v = if i == blk {
                                log.garbage(idx, b + i)
                            } else {
                                log.new_block(idx, i)
                            };
                            img.set(b + i, v);
                        }
                    }
                    Modif::Fill { pos: p, fill } if p == pos => {
                        for i in 0..k {
                            let v = match fill {
                                DiscardFill::Zeros => Block::Zero,
                                DiscardFill::Garbage => log.garbage(idx, b + i),
                            };
                            img.set(b + i, v);
                        }
                    }
                    _ => {
                        for i in 0..k {
                            img.set(b + i, log.new_block(idx, i));
                        }
                    }
                }
            }
        }
        Kind::Exact(digits) => {
            let mut off = 0usize;
            for idx in c.start..c.cut {
                let (b, k) = log.ops[idx].range(bs);
                for i in 0..k {
                    let v = match digits.get(off + i as usize).copied().unwrap_or(OLD) {
                        NEW => log.new_block(idx, i),
                        GARBAGE => log.garbage(idx, b + i),
                        ZEROS => Block::Zero,
                        _ => continue,
                    };
                    img.set(b + i, v);
                }
                off += k as usize;
            }
        }
    }
    img
}

fn op_label(log: &Log, idx: usize) -> String {
    let op = &log.ops[idx];
    let (b, k) = op.range(log.geo.block_size);
    let what = match op {
        Op::Write { .. } => "write",
        Op::WriteZeroes { .. } => "zeroes",
        Op::Discard { .. } => "discard",
        Op::Flush { .. } => "flush",
        Op::Barrier { .. } => "barrier",
    };
    format!("#{idx} {what} {b}+{k}")
}

fn list(out: &mut String, idx: impl Iterator<Item = usize>) {
    let v: Vec<String> = idx.map(|i| format!("#{i}")).collect();
    let _ = write!(out, "[{}]", v.join(" "));
}

fn describe(log: &Log, c: &Choice, last_cut: usize, base_flush: Option<usize>) -> String {
    let mut s = format!("cut {}..={}, base ", c.cut, last_cut);
    match base_flush {
        Some(f) => {
            let _ = write!(s, "flush #{f}");
        }
        None => s.push_str("initial image"),
    }
    let n = c.cut - c.start;
    let first_pending = base_flush.map_or(0, |f| f + 1);
    if matches!(c.kind, Kind::Initial) {
        s.push_str(": nothing issued");
        return s;
    }
    if c.start > first_pending {
        let _ = write!(
            s,
            ", earlier epochs #{}..#{} kept",
            first_pending,
            c.start - 1
        );
    }
    let _ = write!(s, ", epoch #{}..#{}: ", c.start, c.cut - 1);
    match &c.kind {
        Kind::Initial => {}
        Kind::Standard(sub, m) => {
            let kept: Vec<usize> = (0..n).filter(|&p| sub.contains(p, n)).collect();
            if kept.len() == n {
                s.push_str("all kept");
            } else if kept.len() * 2 <= n {
                s.push_str("kept ");
                list(&mut s, kept.iter().map(|p| c.start + p));
                s.push_str(", rest dropped");
            } else {
                s.push_str("all kept except ");
                list(
                    &mut s,
                    (0..n).filter(|p| !sub.contains(*p, n)).map(|p| c.start + p),
                );
            }
            match *m {
                Modif::None => {}
                Modif::Torn {
                    pos,
                    at,
                    new_prefix,
                } => {
                    let (new, old) = if new_prefix {
                        ("new", "old")
                    } else {
                        ("old", "new")
                    };
                    let _ = write!(
                        s,
                        "; {} torn: blocks ..{at} {new}, {at}.. {old}",
                        op_label(log, c.start + pos)
                    );
                }
                Modif::Garbage { pos, blk } => {
                    let _ = write!(s, "; {} block {blk} garbage", op_label(log, c.start + pos));
                }
                Modif::Fill { pos, fill } => {
                    let _ = write!(
                        s,
                        "; {} reads {}",
                        op_label(log, c.start + pos),
                        match fill {
                            DiscardFill::Zeros => "zeros",
                            DiscardFill::Garbage => "garbage",
                        }
                    );
                }
            }
        }
        Kind::Exact(digits) => {
            s.push_str("per block (N new, O old, G garbage, Z zeros)");
            let mut off = 0usize;
            for idx in c.start..c.cut {
                let k = log.ops[idx].range(log.geo.block_size).1 as usize;
                let d: String = digits
                    .iter()
                    .skip(off)
                    .take(k)
                    .map(|&x| match x {
                        NEW => 'N',
                        GARBAGE => 'G',
                        ZEROS => 'Z',
                        _ => 'O',
                    })
                    .collect();
                let _ = write!(s, " #{idx}={d}");
                off += k;
            }
        }
    }
    s
}
