//! The crash-simulating device: records every request, then rebuilds every
//! image a power cut could leave, as the crash-consistency harness needs.
//!
//! # Crash model (the [`BlockDevice`](crate::BlockDevice) contract)
//!
//! A *cut* `c` means ops `0..c` of the log were issued (and completed) when
//! power failed. The device then holds the image at the last flush before
//! `c` (the *durable base*) plus, for each later write, write-zeroes and
//! discard, block by block, the new content, the old content or garbage,
//! subject to the barrier rule: if anything issued after a barrier survives,
//! everything completed before it survives whole. The pending ops are split
//! by barriers into *epochs* `E_0..E_m`; every allowed image is "epochs
//! before `j` whole, some blocks of `E_j`, nothing after". A write larger
//! than the atomic unit may be torn at block boundaries; a discard may act
//! on any part of its range and reads as its [`DiscardFill`] (garbage by
//! default), zeros or garbage.
//!
//! # What is enumerated
//!
//! For every cut, for the epoch being cut (the one holding op `c - 1`):
//! * **subsets**: when it holds at most [`EnumOptions::max_exhaustive`] ops,
//!   every subset kept whole; otherwise everything, every all-but-one,
//!   only-one, and [`EnumOptions::random_subsets`] seeded random subsets;
//! * **tears** (`torn`): each tearable op of the epoch at each block
//!   boundary, new prefix + old suffix and old prefix + new suffix;
//! * **garbage** (`garbage`): each block of each op replaced by
//!   deterministic garbage (ignoring the atomic unit on purpose);
//! * **discard variants** (`discard_variants`): a kept discard reading the
//!   other fill (zeros instead of garbage or the reverse); "old" is the
//!   state that drops it;
//! * **exact mode** (`exact_blocks`): when the epoch holds at most that many
//!   blocks, instead the full per-block model: every combination of old /
//!   new / garbage (/ zeros for discards) for every block, atomic ops all
//!   old or none old. This is exactly the model's set of images for the
//!   epoch, for small workloads and for testing this module.
//!
//! A tear, garbage block or variant is applied on top of "everything kept"
//! and on top of "only this op kept" for the op just issued, and on top of
//! "everything kept" for every op of an epoch once the epoch is complete
//! (the next op is a barrier or flush, or the log ends). One modification
//! per state: combinations of several torn ops are left to exact mode.
//!
//! # Deduplication, and why it loses nothing
//!
//! A state is identified by its durable base and what it keeps of the
//! pending ops. For a fixed base, the states possible at cut `c` are those
//! possible at `c - 1` plus those that involve op `c - 1`: the barrier rule
//! only forbids keeping something *after* a dropped epoch, and adding op
//! `c - 1` at the end of the last epoch does not change what is allowed
//! before it. So each cut emits only the states that keep (some of) op
//! `c - 1`; a barrier emits nothing (it only opens an empty epoch); a flush
//! emits nothing (its only new state, nothing pending, is the image where
//! everything was kept, emitted when the last data op was issued).
//!
//! This is only sound because each state says for which cuts it stands:
//! `CrashState::cut..=CrashState::last_cut`. A state that drops or alters
//! something stays possible until the next flush makes that op durable
//! (`last_cut` = index of that flush: the cut just before the flush
//! completes); a state that keeps everything stays possible until a later
//! data op is issued *and* flushed (between the two it is "that op
//! dropped", or the flushed base itself). The harness's oracle bounds the
//! visible generation by the last commit that returned (grows with the cut)
//! and the last that started (grows too), so one check of the image
//! against the intersection of all its cuts, `returned(last_cut) ≤ g ≤
//! started(cut)`, is exactly the conjunction of checking it at every cut it
//! stands for. Checking it only at `cut` would miss a commit that returned
//! between `cut` and `last_cut` (a commit that flushes, then writes more
//! before returning); checking only at `last_cut` would miss a generation
//! that shows before its commit started. Nothing else is deduplicated: two
//! different choices that happen to produce equal bytes (overlapping
//! writes) are both emitted; hashing images would cost more than it saves.
//!
//! # Cost
//!
//! Images are copy-on-write arrays of reference-counted chunks of blocks;
//! flushes and barriers snapshot the image in pointer copies. A state is
//! built from the snapshot at the start of its epoch plus the blocks of the
//! kept ops of that epoch, so its cost is proportional to what it changes,
//! not to the device size.
mod block;
mod device;
mod image;
mod log;
mod states;

pub use device::CrashDevice;
pub use image::CrashImage;
pub use log::{DiscardFill, LoggedOp, OpKind};
pub use states::{CrashState, CrashStates, EnumOptions};
