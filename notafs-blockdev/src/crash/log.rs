//! The operation log of a crash device: every completed request, in
//! completion order, with what enumeration needs to rebuild any crash state.
use std::sync::Arc;

use super::block::{garbage_seed, Block};
use super::image::Image;
use crate::Geometry;

/// What a discard leaves behind when it takes effect (on the live device,
/// in a flushed image, and in a crash state that keeps the discard).
/// Crash states also explore the other behaviours when
/// [`EnumOptions::discard_variants`](super::EnumOptions::discard_variants) is set;
/// "old content" is the state that drops the discard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiscardFill {
    /// The range reads zeros.
    Zeros,
    /// The range reads deterministic garbage: the adversarial default, so a
    /// filesystem that reads a block it discarded sees nonsense.
    #[default]
    Garbage,
}

/// One logged request.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Write {
        block: u64,
        data: Arc<[u8]>,
        /// Larger than the atomic unit when issued: may be torn.
        tearable: bool,
    },
    WriteZeroes {
        block: u64,
        count: u64,
        tearable: bool,
    },
    Discard {
        block: u64,
        count: u64,
        fill: DiscardFill,
    },
    /// `snap`: the image once every earlier op is applied, i.e. the durable
    /// image after this flush.
    Flush { snap: Image },
    /// `snap`: the image once every earlier op is applied, i.e. the base of
    /// every crash state that keeps something issued after this barrier.
    Barrier { snap: Image },
}

impl Op {
    pub(crate) fn is_data(&self) -> bool {
        !matches!(self, Op::Flush { .. } | Op::Barrier { .. })
    }

    /// First block and block count of a data op; (0, 0) for flush/barrier.
    pub(crate) fn range(&self, block_size: u32) -> (u64, u64) {
        match self {
            Op::Write { block, data, .. } => (*block, (data.len() / block_size as usize) as u64),
            Op::WriteZeroes { block, count, .. } | Op::Discard { block, count, .. } => {
                (*block, *count)
            }
            Op::Flush { .. } | Op::Barrier { .. } => (0, 0),
        }
    }

    /// May persist only in part. A discard always may (it is a hint that
    /// may act on any part of its range).
    pub(crate) fn tearable(&self) -> bool {
        match self {
            Op::Write { tearable, .. } | Op::WriteZeroes { tearable, .. } => *tearable,
            Op::Discard { .. } => true,
            Op::Flush { .. } | Op::Barrier { .. } => false,
        }
    }

    pub(crate) fn fill(&self) -> Option<DiscardFill> {
        match self {
            Op::Discard { fill, .. } => Some(*fill),
            _ => None,
        }
    }
}

/// The log plus the device's initial image. Shared (`Arc`) with enumerators
/// and crash states, so they need no lock and outlive borrows.
#[derive(Clone, Debug)]
pub(crate) struct Log {
    pub(crate) geo: Geometry,
    pub(crate) salt: u64,
    pub(crate) initial: Image,
    pub(crate) ops: Vec<Op>,
    /// For each op: index of the first op of its barrier epoch (one past the
    /// last flush or barrier before it).
    pub(crate) epoch_start: Vec<usize>,
    /// `block_prefix[i]`: blocks touched by data ops `0..i` (for epoch sizes).
    pub(crate) block_prefix: Vec<u64>,
}

impl Log {
    pub(crate) fn new(geo: Geometry, salt: u64, initial: Image) -> Self {
        Log {
            geo,
            salt,
            initial,
            ops: Vec::new(),
            epoch_start: Vec::new(),
            block_prefix: vec![0],
        }
    }

    pub(crate) fn push(&mut self, op: Op) {
        let i = self.ops.len();
        let start = match self.ops.last() {
            None => 0,
            Some(prev) if !prev.is_data() => i,
            Some(_) => self.epoch_start[i - 1],
        };
        let blocks = op.range(self.geo.block_size).1;
        let total = self.block_prefix[i].saturating_add(blocks);
        self.epoch_start.push(start);
        self.block_prefix.push(total);
        self.ops.push(op);
    }

    /// The image every crash state whose epoch starts at op `start` builds
    /// on: the snapshot taken by the flush or barrier just before it.
    pub(crate) fn base_at(&self, start: usize) -> &Image {
        match start.checked_sub(1).and_then(|i| self.ops.get(i)) {
            Some(Op::Flush { snap }) | Some(Op::Barrier { snap }) => snap,
            _ => &self.initial,
        }
    }

    /// Content of block `i` of data op `op` when the op takes effect.
    pub(crate) fn new_block(&self, op: usize, i: u64) -> Block {
        match &self.ops[op] {
            Op::Write { data, .. } => Block::Data {
                buf: data.clone(),
                index: i as u32,
            },
            Op::Discard {
                block,
                fill: DiscardFill::Garbage,
                ..
            } => self.garbage(op, block + i),
            _ => Block::Zero,
        }
    }

    /// The garbage op `op` may leave in device block `block`.
    pub(crate) fn garbage(&self, op: usize, block: u64) -> Block {
        Block::Garbage(garbage_seed(self.salt, op, block))
    }
}

/// A logged request, as reported by [`CrashDevice::log`](super::CrashDevice::log).
#[derive(Clone, Debug)]
pub enum OpKind {
    Write { block: u64, data: Arc<[u8]> },
    WriteZeroes { block: u64, count: u64 },
    Discard { block: u64, count: u64 },
    Flush,
    Barrier,
}

/// One entry of the log with its position in the ordering structure.
#[derive(Clone, Debug)]
pub struct LoggedOp {
    /// Position in the log (the value of `ops()` before it was issued).
    pub index: usize,
    /// Number of flushes and barriers before it: ops of one epoch are
    /// unordered among themselves.
    pub epoch: usize,
    /// Number of flushes before it.
    pub flush_epoch: usize,
    pub kind: OpKind,
}

impl Log {
    pub(crate) fn public(&self) -> Vec<LoggedOp> {
        let (mut epoch, mut flush_epoch) = (0, 0);
        let mut out = Vec::with_capacity(self.ops.len());
        for (index, op) in self.ops.iter().enumerate() {
            let kind = match op {
                Op::Write { block, data, .. } => OpKind::Write {
                    block: *block,
                    data: data.clone(),
                },
                Op::WriteZeroes { block, count, .. } => OpKind::WriteZeroes {
                    block: *block,
                    count: *count,
                },
                Op::Discard { block, count, .. } => OpKind::Discard {
                    block: *block,
                    count: *count,
                },
                Op::Flush { .. } => OpKind::Flush,
                Op::Barrier { .. } => OpKind::Barrier,
            };
            out.push(LoggedOp {
                index,
                epoch,
                flush_epoch,
                kind,
            });
            match op {
                Op::Flush { .. } => {
                    epoch += 1;
                    flush_epoch += 1;
                }
                Op::Barrier { .. } => epoch += 1,
                _ => {}
            }
        }
        out
    }
}
