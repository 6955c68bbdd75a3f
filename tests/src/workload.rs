//! Workloads: operation sequences and the images they start from, and the
//! generators (exhaustive small, random long, pack-store shaped, recovery,
//! repair, near-full, lost-write).
use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One filesystem operation of a workload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Create(String),
    Mkdir(String),
    /// `write_at(off, pattern(seed, off..off+len))` through `open_file`.
    Write {
        path: String,
        off: u64,
        len: u32,
        seed: u32,
    },
    /// `append(pattern(seed, size..size+len))`.
    Append {
        path: String,
        len: u32,
        seed: u32,
    },
    SetLen {
        path: String,
        size: u64,
    },
    Rename {
        from: String,
        to: String,
    },
    Remove(String),
    Commit,
    Abort,
    /// Drop the handle and open the device again (uncommitted changes lost).
    Reopen,
    /// `check::repair` asked to roll back to generation `current - back`:
    /// a real repair commit, so crashes can land inside it.
    Repair {
        back: u32,
    },
    /// `Fs::trim`: discard every free block.
    Trim,
    /// Format the device as `mkfs.notafs` does: discard it whole (when
    /// `discard`), zero the old notafs primary superblock (when `wipe`,
    /// as mkfs erases a detected signature), then `Fs::format` with
    /// [`crate::exec::MKFS_UUID`] and `root_slots`.
    Format {
        root_slots: u32,
        discard: bool,
        wipe: bool,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create(p) => write!(f, "create({p:?})"),
            Op::Mkdir(p) => write!(f, "create_dir({p:?})"),
            Op::Write {
                path,
                off,
                len,
                seed,
            } => write!(f, "write_at({path:?}, off {off}, len {len}, seed {seed})"),
            Op::Append { path, len, seed } => write!(f, "append({path:?}, len {len}, seed {seed})"),
            Op::SetLen { path, size } => write!(f, "set_len({path:?}, {size})"),
            Op::Rename { from, to } => write!(f, "rename({from:?}, {to:?})"),
            Op::Remove(p) => write!(f, "remove({p:?})"),
            Op::Commit => write!(f, "commit()"),
            Op::Abort => write!(f, "abort()"),
            Op::Reopen => write!(f, "reopen()"),
            Op::Repair { back } => write!(f, "repair(roll back {back} generations)"),
            Op::Trim => write!(f, "trim()"),
            Op::Format {
                root_slots,
                discard,
                wipe,
            } => write!(
                f,
                "format({root_slots} root slots{}{})",
                if *discard { ", discard first" } else { "" },
                if *wipe { ", wipe old primary" } else { "" }
            ),
        }
    }
}

/// Which family a workload belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Exhaustive,
    Random,
    NearFull,
    Pack,
    Recovery,
    Repair,
    LostWrite,
    Mkfs,
    ReadError,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Exhaustive,
        Kind::Random,
        Kind::NearFull,
        Kind::Pack,
        Kind::Recovery,
        Kind::Repair,
        Kind::LostWrite,
        Kind::Mkfs,
        Kind::ReadError,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Exhaustive => "exhaustive",
            Kind::Random => "random",
            Kind::NearFull => "near-full",
            Kind::Pack => "pack-store",
            Kind::Recovery => "recovery",
            Kind::Repair => "repair",
            Kind::LostWrite => "lost-write",
            Kind::Mkfs => "mkfs",
            Kind::ReadError => "read-error",
        }
    }
}

/// The image a workload starts from.
#[derive(Clone, Debug)]
pub enum Base {
    /// A freshly formatted device with `setup` ops applied and committed
    /// (not logged: crashes start after it).
    Fresh {
        block_size: u32,
        blocks: u64,
        root_slots: u32,
        setup: Vec<Op>,
    },
    /// Crash state number `state` (modulo the count) of `parent`: the
    /// workload is the recovery after that crash.
    Crash { parent: Box<Workload>, state: u64 },
    /// A device that holds no filesystem: zeros, or deterministic garbage
    /// from `garbage` (Some(seed)). Only a `Format` op makes it usable.
    Blank {
        block_size: u32,
        blocks: u64,
        garbage: Option<u64>,
    },
}

/// A workload: a base image, the logged operations, and device options.
#[derive(Clone, Debug)]
pub struct Workload {
    pub kind: Kind,
    pub name: String,
    pub base: Base,
    pub ops: Vec<Op>,
    /// Atomic unit of the crash device (None: one block).
    pub atomic_unit: Option<u32>,
    /// At most this many crash states are checked (evenly spread).
    pub state_cap: u64,
    /// Open with `OpenOptions::discard` (released blocks are discarded).
    pub discard: bool,
}

impl Workload {
    pub fn describe(&self) -> String {
        let mut s = format!("{} [{}]", self.name, self.kind.name());
        match &self.base {
            Base::Fresh {
                block_size,
                blocks,
                root_slots,
                setup,
            } => {
                s += &format!(
                    "\n  base: fresh {blocks} blocks of {block_size} B, {root_slots} root slots, atomic unit {}",
                    self.atomic_unit.map_or("1 block".to_string(), |a| format!("{a} B"))
                );
                if self.discard {
                    s += ", discard on release";
                }
                if !setup.is_empty() {
                    s += "\n  setup (committed, not crashed):";
                    for op in setup {
                        s += &format!("\n    {op}");
                    }
                }
            }
            Base::Crash { parent, state } => {
                s += &format!(
                    "\n  base: crash state #{state} of parent workload:\n    {}",
                    parent.describe().replace('\n', "\n    ")
                );
            }
            Base::Blank {
                block_size,
                blocks,
                garbage,
            } => {
                s += &format!(
                    "\n  base: blank {blocks} blocks of {block_size} B, {}",
                    garbage.map_or("zeros".to_string(), |g| format!("garbage seed {g}"))
                );
            }
        }
        s += "\n  ops:";
        for op in &self.ops {
            s += &format!("\n    {op}");
        }
        s
    }

    pub fn block_size(&self) -> u32 {
        match &self.base {
            Base::Fresh { block_size, .. } => *block_size,
            Base::Crash { parent, .. } => parent.block_size(),
            Base::Blank { block_size, .. } => *block_size,
        }
    }
}

// ----- exhaustive small ----------------------------------------------------

const FILES: [&str; 3] = ["a", "b", "c"];

/// The alphabet of the exhaustive workloads, for block size `bs`: 25 ops on
/// three files; writes straddle block boundaries (a partial block, a whole
/// block, a partial block), appends cross one.
pub fn alphabet(bs: u64) -> Vec<Op> {
    let mut v = Vec::new();
    for (i, f) in FILES.iter().enumerate() {
        let f = f.to_string();
        let seed = 100 + i as u32;
        v.push(Op::Create(f.clone()));
        v.push(Op::Write {
            path: f.clone(),
            off: 100,
            len: 200,
            seed,
        });
        v.push(Op::Write {
            path: f.clone(),
            off: bs - 100,
            len: bs as u32 + 200,
            seed: seed + 10,
        });
        v.push(Op::Append {
            path: f.clone(),
            len: bs as u32 + 300,
            seed: seed + 20,
        });
        v.push(Op::SetLen {
            path: f.clone(),
            size: 10,
        });
        v.push(Op::Remove(f.clone()));
    }
    for a in FILES {
        for b in FILES {
            if a != b {
                v.push(Op::Rename {
                    from: a.into(),
                    to: b.into(),
                });
            }
        }
    }
    v.push(Op::Commit);
    v
}

/// The committed starting content of exhaustive workloads: `a` spans three
/// blocks, `b` is small, `c` does not exist.
pub fn exhaustive_setup(bs: u64) -> Vec<Op> {
    vec![
        Op::Create("a".into()),
        Op::Append {
            path: "a".into(),
            len: (2 * bs + 123) as u32,
            seed: 1,
        },
        Op::Create("b".into()),
        Op::Append {
            path: "b".into(),
            len: 77,
            seed: 2,
        },
        Op::Commit,
    ]
}

/// Every valid sequence of 1..=3 ops of the alphabet (each followed by a
/// final commit), in a fixed order. Sequences with an op the model rejects
/// are left out, as are sequences ending in a commit (the final commit
/// makes them duplicates of shorter ones).
pub fn exhaustive_list(bs: u64) -> Vec<Vec<Op>> {
    use crate::model::{Model, Tree};
    let alpha = alphabet(bs);
    let mut base = Model::new(1, Tree::default(), 4);
    for op in exhaustive_setup(bs) {
        if op == Op::Commit {
            base.commit(2, 0, 0, "commit");
        } else {
            base.apply(&op);
        }
    }
    let mut out = Vec::new();
    fn rec(
        m: &Model,
        alpha: &[Op],
        prefix: &mut Vec<Op>,
        out: &mut Vec<Vec<Op>>,
        depth: usize,
        gen: u64,
    ) {
        if !prefix.is_empty() && prefix.last() != Some(&Op::Commit) {
            let mut w = prefix.clone();
            w.push(Op::Commit);
            out.push(w);
        }
        if depth == 3 {
            return;
        }
        for op in alpha {
            if !m.valid(op) {
                continue;
            }
            let mut m2 = m.clone();
            let mut g = gen;
            if *op == Op::Commit {
                g += 1;
                m2.commit(g, 0, 0, "commit");
            } else {
                m2.apply(op);
            }
            prefix.push(op.clone());
            rec(&m2, alpha, prefix, out, depth + 1, g);
            prefix.pop();
        }
    }
    rec(&base, &alpha, &mut Vec::new(), &mut out, 0, 2);
    out
}

/// [`exhaustive_list`] for 4096-byte blocks, built once.
pub fn exhaustive_cached() -> &'static Vec<Vec<Op>> {
    static L: std::sync::OnceLock<Vec<Vec<Op>>> = std::sync::OnceLock::new();
    L.get_or_init(|| exhaustive_list(4096))
}

/// Device variants the exhaustive list is run on, pass by pass.
pub fn exhaustive_variant(pass: u64) -> (u32, u64, Option<u32>) {
    match pass % 3 {
        0 => (4096, 256, None),    // 1 MiB, one block = one node
        1 => (512, 2048, None),    // 1 MiB, a node is 8 tearable blocks
        _ => (4096, 256, Some(0)), // nothing atomic: garbage anywhere pending
    }
}

pub fn exhaustive(list: &[Vec<Op>], n: u64, state_cap: u64) -> Workload {
    let len = list.len() as u64;
    let (bs, blocks, atomic) = exhaustive_variant(n / len);
    let ops = list[(n % len) as usize].clone();
    let (bs_list, _, _) = exhaustive_variant(0);
    // The list is built for 4096-byte blocks; rescale offsets for others.
    let ops = if bs == bs_list {
        ops
    } else {
        let alpha_a = alphabet(bs_list as u64);
        let alpha_b = alphabet(bs as u64);
        ops.iter()
            .map(|o| {
                alpha_a
                    .iter()
                    .position(|x| x == o)
                    .map(|i| alpha_b[i].clone())
                    .unwrap_or_else(|| o.clone())
            })
            .collect()
    };
    Workload {
        kind: Kind::Exhaustive,
        name: format!("exhaustive #{} of {len} (pass {})", n % len, n / len),
        base: Base::Fresh {
            block_size: bs,
            blocks,
            root_slots: 4,
            setup: exhaustive_setup(bs as u64),
        },
        ops,
        atomic_unit: atomic,
        state_cap,
        discard: false,
    }
}

// ----- random long -----------------------------------------------------------

/// Near-full workload: a 1 MiB image filled past capacity with large
/// appends (NoSpace paths), then churn: remove a file and commit, write it
/// again, overwrite ranges of the others (copy-on-write needs free blocks),
/// so freed blocks are reused under pressure.
pub fn near_full(seed: u64, state_cap: u64) -> Workload {
    let mut r = StdRng::seed_from_u64(seed ^ 0xf011);
    let bs: u32 = if r.gen_bool(0.5) { 4096 } else { 512 };
    let dev = 1u32 << 20;
    let blocks = dev as u64 / bs as u64;
    let names = ["n0", "n1", "n2"];
    let mut ops = Vec::new();
    let mut s = seed as u32;
    let mut next = || {
        s = s.wrapping_add(1);
        s
    };
    for n in names {
        ops.push(Op::Create(n.into()));
    }
    // Fill: about 1.3 times the device, in large appends.
    for _ in 0..r.gen_range(8..16) {
        ops.push(Op::Append {
            path: names[r.gen_range(0..3)].into(),
            len: r.gen_range(dev / 16..dev / 8),
            seed: next(),
        });
        if r.gen_bool(0.5) {
            ops.push(Op::Commit);
        }
    }
    ops.push(Op::Commit);
    for _ in 0..r.gen_range(6..20) {
        let n = names[r.gen_range(0..3)];
        match r.gen_range(0..4) {
            0 => {
                ops.push(Op::Remove(n.into()));
                ops.push(Op::Commit);
                ops.push(Op::Create(n.into()));
                ops.push(Op::Append {
                    path: n.into(),
                    len: r.gen_range(dev / 8..dev / 3),
                    seed: next(),
                });
            }
            1 => ops.push(Op::Write {
                path: n.into(),
                off: r.gen_range(0..dev as u64 / 4),
                len: r.gen_range(bs..dev / 6),
                seed: next(),
            }),
            2 => ops.push(Op::SetLen {
                path: n.into(),
                size: r.gen_range(0..dev as u64 / 8),
            }),
            _ => ops.push(Op::Append {
                path: n.into(),
                len: r.gen_range(bs..dev / 5),
                seed: next(),
            }),
        }
        ops.push(Op::Commit);
    }
    Workload {
        kind: Kind::NearFull,
        name: format!("near-full seed {seed}"),
        base: Base::Fresh {
            block_size: bs,
            blocks,
            root_slots: r.gen_range(2..=4),
            setup: Vec::new(),
        },
        ops,
        atomic_unit: None,
        state_cap,
        discard: r.gen_bool(0.5),
    }
}

/// Seeded random workload: hundreds of ops over a few files with commits,
/// aborts, reopens and trims, multi-block files, on 1..16 MiB images.
pub fn random(seed: u64, near_full: bool, state_cap: u64) -> Workload {
    let mut r = StdRng::seed_from_u64(seed);
    let bs: u32 = if r.gen_bool(0.5) { 4096 } else { 512 };
    let mib: u64 = if near_full {
        1
    } else {
        *[1u64, 2, 4, 8, 16]
            .get(r.gen_range(0..5))
            .expect("in range")
    };
    let blocks = (mib << 20) / bs as u64;
    let slots = r.gen_range(2..=8);
    let nfiles = r.gen_range(2..=6);
    let names: Vec<String> = (0..nfiles).map(|i| format!("f{i}")).collect();
    let nops = r.gen_range(100..400);
    let mut ops = Vec::new();
    let mut sizes = vec![0u64; nfiles];
    let cap = if near_full {
        (blocks * bs as u64) / 3
    } else {
        (blocks * bs as u64) / (4 * nfiles as u64)
    };
    for i in 0..nops {
        let f = r.gen_range(0..nfiles);
        let p = names[f].clone();
        let s = (seed as u32).wrapping_add(i as u32);
        let op = match r.gen_range(0..100) {
            0..=9 => Op::Create(p),
            10..=29 => {
                let off = r.gen_range(0..=sizes[f].max(1));
                let len = if r.gen_bool(0.3) {
                    r.gen_range(1..=(8 * bs))
                } else {
                    r.gen_range(1..=300)
                };
                Op::Write {
                    path: p,
                    off,
                    len,
                    seed: s,
                }
            }
            30..=49 => Op::Append {
                path: p,
                len: if near_full {
                    r.gen_range(bs..=((blocks as u32 * bs) / 6))
                } else {
                    r.gen_range(1..=(4 * bs))
                },
                seed: s,
            },
            50..=56 => Op::SetLen {
                path: p,
                size: r.gen_range(0..=sizes[f] + 2 * bs as u64),
            },
            57..=63 => Op::Rename {
                from: p,
                to: names[r.gen_range(0..nfiles)].clone(),
            },
            64..=71 => Op::Remove(p),
            72..=92 => Op::Commit,
            93..=95 => Op::Abort,
            96..=98 => Op::Reopen,
            _ => Op::Trim,
        };
        if let Op::Write { off, len, .. } = &op {
            sizes[f] = sizes[f].max(off + *len as u64);
        }
        if let Op::Append { len, .. } = &op {
            sizes[f] += *len as u64;
        }
        if sizes[f] > cap {
            sizes[f] = 0;
            ops.push(Op::SetLen {
                path: names[f].clone(),
                size: 0,
            });
        }
        ops.push(op);
    }
    ops.push(Op::Commit);
    Workload {
        kind: if near_full {
            Kind::NearFull
        } else {
            Kind::Random
        },
        name: format!(
            "{} seed {seed}",
            if near_full { "near-full" } else { "random" }
        ),
        base: Base::Fresh {
            block_size: bs,
            blocks,
            root_slots: slots,
            setup: Vec::new(),
        },
        ops,
        atomic_unit: if r.gen_bool(0.25) { Some(0) } else { None },
        state_cap,
        discard: r.gen_bool(0.5),
    }
}

// ----- pack-store shaped --------------------------------------------------------

/// A pack store: appends to `store.0.suffix` and `store.dict`, the control
/// file replaced by writing `store.control.tmp` and renaming it over, the
/// index replaced by rename (`index/data.tmp` -> `index/data`), chunk files
/// created and later removed by a GC step, commit after each batch.
pub fn pack(seed: u64, state_cap: u64) -> Workload {
    let mut r = StdRng::seed_from_u64(seed ^ 0x9ac4);
    let bs: u32 = if r.gen_bool(0.5) { 4096 } else { 512 };
    let mib = *[1u64, 2, 4].get(r.gen_range(0..3)).expect("in range");
    let blocks = (mib << 20) / bs as u64;
    let setup = vec![
        Op::Create("store.0.suffix".into()),
        Op::Create("store.dict".into()),
        Op::Create("store.control".into()),
        Op::Mkdir("index".into()),
        Op::Create("index/data".into()),
        Op::Commit,
    ];
    let mut ops = Vec::new();
    let mut chunk = 0u32;
    let mut live_chunks: Vec<u32> = Vec::new();
    let rounds = r.gen_range(8..40);
    for round in 0..rounds {
        let s = (seed as u32)
            .wrapping_mul(31)
            .wrapping_add(round as u32 * 7);
        for k in 0..r.gen_range(1..6) {
            ops.push(Op::Append {
                path: "store.0.suffix".into(),
                len: r.gen_range(20..(3 * bs)),
                seed: s + k,
            });
        }
        if r.gen_bool(0.5) {
            ops.push(Op::Append {
                path: "store.dict".into(),
                len: r.gen_range(8..200),
                seed: s + 100,
            });
        }
        if r.gen_bool(0.4) {
            let name = format!("chunk.{chunk}");
            chunk += 1;
            ops.push(Op::Create(name.clone()));
            ops.push(Op::Append {
                path: name,
                len: r.gen_range(bs..(6 * bs)),
                seed: s + 200,
            });
            live_chunks.push(chunk - 1);
        }
        if live_chunks.len() > 2 && r.gen_bool(0.3) {
            // GC: drop the oldest chunks.
            for c in live_chunks.drain(..live_chunks.len() - 1) {
                ops.push(Op::Remove(format!("chunk.{c}")));
            }
        }
        if r.gen_bool(0.5) {
            ops.push(Op::Create("index/data.tmp".into()));
            ops.push(Op::Append {
                path: "index/data.tmp".into(),
                len: r.gen_range(100..(2 * bs)),
                seed: s + 300,
            });
            ops.push(Op::Rename {
                from: "index/data.tmp".into(),
                to: "index/data".into(),
            });
        }
        // Control file: write tmp, rename over.
        ops.push(Op::Create("store.control.tmp".into()));
        ops.push(Op::Write {
            path: "store.control.tmp".into(),
            off: 0,
            len: 64,
            seed: s + 400,
        });
        ops.push(Op::Rename {
            from: "store.control.tmp".into(),
            to: "store.control".into(),
        });
        ops.push(Op::Commit);
    }
    Workload {
        kind: Kind::Pack,
        name: format!("pack-store seed {seed}"),
        base: Base::Fresh {
            block_size: bs,
            blocks,
            root_slots: r.gen_range(2..=6),
            setup,
        },
        ops,
        atomic_unit: if r.gen_bool(0.25) { Some(0) } else { None },
        state_cap,
        discard: r.gen_bool(0.5),
    }
}

/// A short random tail of ops for recovery and repair workloads.
fn short_ops(r: &mut StdRng, names: &[&str], bs: u32, n: usize) -> Vec<Op> {
    let mut ops = Vec::new();
    for i in 0..n {
        let p = names[r.gen_range(0..names.len())].to_string();
        let s = r.gen::<u32>() ^ i as u32;
        ops.push(match r.gen_range(0..8) {
            0 => Op::Create(p),
            1 | 2 => Op::Append {
                path: p,
                len: r.gen_range(1..(3 * bs)),
                seed: s,
            },
            3 => Op::Write {
                path: p,
                off: r.gen_range(0..(2 * bs as u64)),
                len: r.gen_range(1..(2 * bs)),
                seed: s,
            },
            4 => Op::Remove(p),
            5 => Op::Rename {
                from: p,
                to: names[r.gen_range(0..names.len())].to_string(),
            },
            _ => Op::Commit,
        });
    }
    ops.push(Op::Commit);
    ops
}

/// A parent workload whose crash states recovery and repair start from.
fn parent_for(seed: u64, r: &mut StdRng) -> Workload {
    match r.gen_range(0..3) {
        0 => {
            let list = exhaustive_cached();
            let i = r.gen_range(0..list.len() as u64);
            exhaustive(list, i, 0)
        }
        1 => pack(seed, 0),
        _ => {
            let mut w = random(seed, false, 0);
            w.ops.truncate(r.gen_range(20..80));
            w.ops.push(Op::Commit);
            w
        }
    }
}

/// Crash during recovery: a crash state of a parent workload, then open,
/// write and commit on a new crash device started from it, and crash again.
pub fn recovery(seed: u64, state_cap: u64) -> Workload {
    let mut r = StdRng::seed_from_u64(seed ^ 0x7ec0);
    let parent = parent_for(seed, &mut r);
    let bs = parent.block_size();
    let n = r.gen_range(2..10);
    let ops = short_ops(&mut r, &["a", "b", "c", "f0", "f1", "store.dict"], bs, n);
    Workload {
        kind: Kind::Recovery,
        name: format!("recovery seed {seed}"),
        base: Base::Crash {
            parent: Box::new(parent),
            state: r.gen(),
        },
        ops,
        atomic_unit: None,
        state_cap,
        discard: false,
    }
}

/// Crash during repair: `check::repair` rolling back to an older retained
/// generation (a real repair commit), from a fresh history or from a crash
/// state; then a write and a commit.
pub fn repair(seed: u64, state_cap: u64) -> Workload {
    let mut r = StdRng::seed_from_u64(seed ^ 0x4e9a);
    let bs: u32 = if r.gen_bool(0.5) { 4096 } else { 512 };
    let back = r.gen_range(1..=2);
    let tail = vec![
        Op::Repair { back },
        Op::Create("after".into()),
        Op::Append {
            path: "after".into(),
            len: r.gen_range(1..(2 * bs)),
            seed: 9,
        },
        Op::Commit,
    ];
    if r.gen_bool(0.5) {
        let mut setup = Vec::new();
        for g in 0..r.gen_range(3..6) {
            let p = format!("r{}", g % 3);
            setup.push(Op::Create(p.clone()));
            setup.push(Op::Append {
                path: p,
                len: r.gen_range(1..(3 * bs)),
                seed: g,
            });
            setup.push(Op::Commit);
        }
        Workload {
            kind: Kind::Repair,
            name: format!("repair seed {seed}"),
            base: Base::Fresh {
                block_size: bs,
                blocks: (1 << 20) / bs as u64,
                root_slots: 4,
                setup,
            },
            ops: tail,
            atomic_unit: if r.gen_bool(0.3) { Some(0) } else { None },
            state_cap,
            discard: false,
        }
    } else {
        let parent = parent_for(seed, &mut r);
        Workload {
            kind: Kind::Repair,
            name: format!("repair-after-crash seed {seed}"),
            base: Base::Crash {
                parent: Box::new(parent),
                state: r.gen(),
            },
            ops: tail,
            atomic_unit: None,
            state_cap,
            discard: false,
        }
    }
}

/// Lost-write workload (beyond the crash model: a device that lies): a
/// short random history; its states are the post-commit images with one
/// block written by the commit reverted. Proves checksums are verified.
pub fn lost_write(seed: u64, state_cap: u64) -> Workload {
    let mut w = random(seed ^ 0x105e, false, state_cap);
    w.ops.truncate(60);
    w.ops.push(Op::Commit);
    if let Base::Fresh { blocks, .. } = &mut w.base {
        *blocks = (*blocks).min(1024);
    }
    w.kind = Kind::LostWrite;
    w.name = format!("lost-write seed {seed}");
    w.atomic_unit = None;
    w
}

// ----- mkfs ------------------------------------------------------------------

/// Crash during mkfs: format a device that holds nothing (zeros), garbage,
/// or an older notafs filesystem with a few generations (formatted with
/// the harness UUID, so the new one is told apart), as `mkfs.notafs` does
/// (optionally discarding the device and wiping the old primary
/// superblock first); then a first write and commit on the new filesystem.
/// Every state must be "not notafs", the old filesystem intact (only
/// before the format returned), or the new one, clean for fsck -n.
pub fn mkfs(seed: u64, state_cap: u64) -> Workload {
    let mut r = StdRng::seed_from_u64(seed ^ 0x3f5a);
    let bs: u32 = if r.gen_bool(0.5) { 4096 } else { 512 };
    let blocks = (1u64 << 20) / bs as u64;
    let old = r.gen_range(0..4);
    let base = match old {
        0 => Base::Blank {
            block_size: bs,
            blocks,
            garbage: None,
        },
        1 => Base::Blank {
            block_size: bs,
            blocks,
            garbage: Some(r.gen()),
        },
        _ => {
            let mut setup = Vec::new();
            for g in 0..r.gen_range(1..5) {
                let p = format!("old{}", g % 2);
                setup.push(Op::Create(p.clone()));
                setup.push(Op::Append {
                    path: p,
                    len: r.gen_range(1..(3 * bs)),
                    seed: g,
                });
                setup.push(Op::Commit);
            }
            Base::Fresh {
                block_size: bs,
                blocks,
                root_slots: r.gen_range(2..=8),
                setup,
            }
        }
    };
    let mut ops = vec![Op::Format {
        root_slots: r.gen_range(2..=8),
        discard: r.gen_bool(0.5),
        wipe: old >= 2 && r.gen_bool(0.5),
    }];
    if r.gen_bool(0.5) {
        ops.push(Op::Create("first".into()));
        ops.push(Op::Append {
            path: "first".into(),
            len: r.gen_range(1..(3 * bs)),
            seed: 5,
        });
        ops.push(Op::Commit);
    }
    Workload {
        kind: Kind::Mkfs,
        name: format!("mkfs seed {seed}"),
        base,
        ops,
        atomic_unit: if r.gen_bool(0.3) { Some(0) } else { None },
        state_cap,
        discard: false,
    }
}

/// Transient read errors at open: a committed history (fresh, or a crash
/// state of a parent workload); its "states" are, for every read the
/// writable open issues (and every read a repair issues), an EIO on that
/// read once, and on its blocks always. Open must fail with a device error
/// or open the newest generation; the newest generation must never be
/// overwritten or rolled back by the commit that follows, nor by repair.
pub fn read_error(seed: u64, state_cap: u64) -> Workload {
    let mut r = StdRng::seed_from_u64(seed ^ 0xe10e);
    if r.gen_bool(0.3) {
        let parent = parent_for(seed, &mut r);
        return Workload {
            kind: Kind::ReadError,
            name: format!("read-error-after-crash seed {seed}"),
            base: Base::Crash {
                parent: Box::new(parent),
                state: r.gen(),
            },
            ops: Vec::new(),
            atomic_unit: None,
            state_cap,
            discard: false,
        };
    }
    let bs: u32 = if r.gen_bool(0.5) { 4096 } else { 512 };
    let names = ["e0", "e1", "d/e2", "e3"];
    let mut setup = vec![Op::Mkdir("d".into())];
    for g in 0..r.gen_range(2..7) {
        for _ in 0..r.gen_range(1..4) {
            let p = names[r.gen_range(0..names.len())].to_string();
            setup.push(Op::Create(p.clone()));
            setup.push(Op::Append {
                path: p,
                len: r.gen_range(1..(4 * bs)),
                seed: g * 10 + r.gen_range(0..10),
            });
        }
        setup.push(Op::Commit);
    }
    Workload {
        kind: Kind::ReadError,
        name: format!("read-error seed {seed}"),
        base: Base::Fresh {
            block_size: bs,
            blocks: (1 << 20) / bs as u64,
            root_slots: r.gen_range(2..=8),
            setup,
        },
        ops: Vec::new(),
        atomic_unit: None,
        state_cap,
        discard: false,
    }
}
