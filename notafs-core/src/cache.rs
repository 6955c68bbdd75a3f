//! Bounded caches of verified blocks, shared by the writer and all readers:
//! node bytes, file-data bytes and decoded nodes ([`BlockCache`] over the
//! value each holds).
//!
//! Entries are keyed by block address *and* checked against the CRC the
//! caller expects: a block can be freed and reused by a later generation, and
//! a reader of an older generation must then miss, not get the new bytes.
//! Eviction is CLOCK (second chance): O(1) per access, no allocation per hit,
//! and the memory bound is exact: `capacity` nodes.
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Hashes block numbers for the cache maps: one multiply-xorshift round
/// instead of SipHash (profiled: SipHash was a visible part of each 4 KiB
/// read, which does several lookups). Keys are block numbers of the
/// device; a crafted image can at worst make one shard's lookups slower,
/// and a shard holds a bounded number of entries.
#[derive(Default)]
struct BlockHasher(u64);

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        // splitmix64's finaliser: every input bit reaches the top bits
        // (the map's control bytes) and the bottom ones (its buckets).
        let mut z = n ^ self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        self.0 = z ^ (z >> 31);
    }
}

type BlockMap = HashMap<u64, usize, BuildHasherDefault<BlockHasher>>;

struct Entry<V> {
    block: u64,
    crc: u32,
    data: V,
    /// Set by hits under the shared lock; CLOCK clears it.
    referenced: AtomicBool,
}

struct Inner<V> {
    map: BlockMap,
    slots: Vec<Entry<V>>,
    hand: usize,
}

/// One CLOCK over a part of the keys. Lookups share the lock (a hit only
/// sets its entry's reference bit), so concurrent readers of the same hot
/// nodes (every read of a file goes through its extent-tree root) do not
/// queue; inserts take it exclusively.
struct Shard<V> {
    capacity: usize,
    inner: RwLock<Inner<V>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A cache of verified blocks: at most `capacity` values of type `V`,
/// split by block number into shards with their own lock and clock, so
/// that concurrent readers do not queue on one mutex (measured: 16 random
/// readers on one lock reached 0.59x raw O_DIRECT IOPS).
pub struct BlockCache<V> {
    shards: Vec<Shard<V>>,
    admission: Admission,
}

/// Admission of blocks that were just missed (see [`BlockCache::admit`]).
struct Admission {
    /// The cache's capacity, and how many of its slots are still unused
    /// (kept by the inserts; only a hint under concurrent `clear`).
    capacity: usize,
    free: AtomicUsize,
    /// (lookups, hits) at the last review.
    seen: Mutex<(u64, u64)>,
    /// Admit only one miss in `SAMPLE`.
    sampling: AtomicBool,
}

/// `admit` reviews the hit rate every this many calls (of one thread).
const REVIEW_EVERY: u64 = 1024;
/// Below one hit in this many lookups since the last review, misses are
/// sampled. Uniform random reads over N times the cache's size hit 1/N of
/// the time whichever blocks it holds, so sampling loses them no hits; a
/// skewed workload still gets its hot blocks in (each miss of one has its
/// chance) and stops being sampled once they are hit.
const LOW_HIT_RATE: u64 = 8;
/// While sampling, one miss in this many is admitted.
const SAMPLE: u64 = 8;

/// Most shards of one cache (each keeps at least 16 entries).
const MAX_SHARDS: usize = 64;

impl<V: Clone> BlockCache<V> {
    /// A cache holding at most `capacity` values (at least 16).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(16);
        let n = (capacity / 16).clamp(1, MAX_SHARDS);
        BlockCache {
            shards: (0..n)
                .map(|i| Shard::new(capacity / n + usize::from(i < capacity % n)))
                .collect(),
            admission: Admission {
                capacity,
                free: AtomicUsize::new(capacity),
                seen: Mutex::new((0, 0)),
                sampling: AtomicBool::new(false),
            },
        }
    }

    /// The most values the cache holds.
    pub fn capacity(&self) -> usize {
        self.admission.capacity
    }

    /// Whether a block just missed should be inserted. Normally yes. When
    /// the cache has been hit less than once in [`LOW_HIT_RATE`] lookups
    /// since the last review (random reads over far more data than it
    /// holds), only one miss in [`SAMPLE`] is: inserting every one would
    /// cost a 4 KiB copy and an eviction per read (profiled: a third of
    /// the CPU notafs adds to a random 4 KiB read) for entries evicted
    /// before any reuse. Blocks read again still get in (each re-read has
    /// its chance), hits then raise the rate and every miss is admitted
    /// again at the next review.
    pub fn admit(&self) -> bool {
        thread_local! {
            // Counted per thread: one shared counter would be a cache line
            // every reader writes on every miss.
            static CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        }
        let n = CALLS.with(|c| {
            let n = c.get();
            c.set(n.wrapping_add(1));
            n
        });
        let a = &self.admission;
        // While there is room, an insert evicts nothing: take every block
        // (the memory is allocated once either way; sampling would only
        // spread the cost of filling over more reads).
        if a.free.load(Ordering::Relaxed) > 0 {
            return true;
        }
        if n % REVIEW_EVERY == REVIEW_EVERY - 1 {
            let (hits, misses) = self.stats();
            let lookups = hits + misses;
            let mut seen = a.seen.lock().unwrap_or_else(|e| e.into_inner());
            let (dl, dh) = (lookups.saturating_sub(seen.0), hits.saturating_sub(seen.1));
            // Too few lookups since another thread's review to judge.
            if dl >= REVIEW_EVERY {
                *seen = (lookups, hits);
                a.sampling.store(dh * LOW_HIT_RATE < dl, Ordering::Relaxed);
            }
        }
        !a.sampling.load(Ordering::Relaxed) || n.is_multiple_of(SAMPLE)
    }

    fn shard(&self, block: u64) -> &Shard<V> {
        // Neighbouring blocks go to different shards.
        // Scaled by a multiply, not a division (a `div` on every lookup):
        // `h < 2^32` and at most `MAX_SHARDS` shards, so this is in range.
        let h = block.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        &self.shards[((h * self.shards.len() as u64) >> 32) as usize]
    }

    /// The cached value of `block` if it was stored with checksum `crc`.
    pub fn get(&self, block: u64, crc: u32) -> Option<V> {
        self.shard(block).get(block, crc)
    }

    /// Remember `data` (verified to have checksum `crc`) for `block`.
    pub fn put(&self, block: u64, crc: u32, data: V) {
        let grew = self.shard(block).put_with(block, crc, |_| false, || data);
        self.note_growth(grew);
    }

    /// Count a slot taken into use.
    fn note_growth(&self, grew: bool) {
        if grew {
            let _ = self
                .admission
                .free
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                    Some(f.saturating_sub(1))
                });
        }
    }

    /// (hits, misses) since creation.
    pub fn stats(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(h, m), s| {
            let (a, b) = s.stats();
            (h + a, m + b)
        })
    }

    /// Drop everything (used after a device failure).
    pub fn clear(&self) {
        for s in &self.shards {
            s.clear();
        }
        self.admission
            .free
            .store(self.admission.capacity, Ordering::Relaxed);
    }

    /// Entries held now (at most the capacity).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().slots.len()).sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Raw node (or data block) bytes.
pub type NodeCache = BlockCache<Arc<[u8]>>;

impl BlockCache<Arc<[u8]>> {
    /// Remember a copy of `bytes` (verified to have checksum `crc`) for
    /// `block`. Once the cache is full, the buffer of the entry it replaces
    /// is overwritten in place when no reader still holds it: a stream of
    /// misses then costs a copy per block, not an allocation and a free.
    pub fn put_copy(&self, block: u64, crc: u32, bytes: &[u8]) {
        let grew = self.shard(block).put_with(
            block,
            crc,
            |old| match Arc::get_mut(old) {
                Some(b) if b.len() == bytes.len() => {
                    b.copy_from_slice(bytes);
                    true
                }
                _ => false,
            },
            || Arc::from(bytes),
        );
        self.note_growth(grew);
    }
}

/// Decoded nodes (`Arc<Node<T>>` of whichever tree kind), so that a node
/// read again is neither re-verified nor re-decoded.
pub type DecodedCache = BlockCache<Arc<dyn std::any::Any + Send + Sync>>;

impl<V: Clone> Shard<V> {
    fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Shard {
            capacity,
            inner: RwLock::new(Inner {
                // Grown on demand: `capacity` comes from the caller's byte
                // budget and may be far more than will ever be used.
                map: BlockMap::default(),
                slots: Vec::new(),
                hand: 0,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner<V>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner<V>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, block: u64, crc: u32) -> Option<V> {
        let g = self.read();
        match g.map.get(&block).map(|&i| &g.slots[i]) {
            Some(e) if e.crc == crc => {
                // Only written when clear: a hot entry's line is not
                // written by every reader.
                if !e.referenced.load(Ordering::Relaxed) {
                    e.referenced.store(true, Ordering::Relaxed);
                }
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(e.data.clone())
            }
            _ => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Store a value for `block` under `crc`: `reuse` may overwrite the
    /// value of the slot it goes to (the same block's old value, or the one
    /// it evicts) and return true; otherwise `make` builds a new one.
    /// Returns whether an unused slot was taken.
    fn put_with(
        &self,
        block: u64,
        crc: u32,
        reuse: impl FnOnce(&mut V) -> bool,
        make: impl FnOnce() -> V,
    ) -> bool {
        let mut g = self.write();
        let i = match g.map.get(&block) {
            Some(&i) => i,
            None if g.slots.len() < self.capacity => {
                let i = g.slots.len();
                g.slots.push(Entry {
                    block,
                    crc,
                    data: make(),
                    referenced: AtomicBool::new(false),
                });
                g.map.insert(block, i);
                return true;
            }
            None => {
                // CLOCK: the first slot not referenced since the hand last
                // passed it.
                let h = loop {
                    let h = g.hand;
                    g.hand = (h + 1) % self.capacity;
                    if !*g.slots[h].referenced.get_mut() {
                        break h;
                    }
                    *g.slots[h].referenced.get_mut() = false;
                };
                let old = g.slots[h].block;
                g.map.remove(&old);
                g.map.insert(block, h);
                // A new entry earns its reference bit by being hit.
                *g.slots[h].referenced.get_mut() = false;
                h
            }
        };
        let replacing = g.slots[i].block == block;
        let slot = &mut g.slots[i];
        if !reuse(&mut slot.data) {
            slot.data = make();
        }
        slot.block = block;
        slot.crc = crc;
        if replacing {
            // The same block again (a newer generation's bytes): keep it
            // around as if it had been hit.
            *slot.referenced.get_mut() = true;
        }
        false
    }

    fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn clear(&self) {
        let mut g = self.write();
        g.map.clear();
        g.slots.clear();
        g.hand = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn bounded_and_keyed_by_block_and_crc() {
        for cap in [1usize, 16, 17, 100, 1000] {
            let c: BlockCache<u64> = BlockCache::new(cap);
            let cap = cap.max(16);
            let mut model: HashMap<u64, (u32, u64)> = HashMap::new();
            let mut s = 0x1234_5678u64;
            for i in 0..20_000u64 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let block = s % 3000;
                let crc = (s >> 40) as u32 % 3;
                if i % 3 == 0 {
                    c.put(block, crc, i);
                    model.insert(block, (crc, i));
                } else if let Some(v) = c.get(block, crc) {
                    // A hit is the latest value stored for exactly this key.
                    assert_eq!(
                        model.get(&block),
                        Some(&(crc, v)),
                        "cap {cap} block {block}"
                    );
                }
                assert!(c.len() <= cap, "cap {cap}: {} entries", c.len());
            }
            // The most recent put is always there.
            c.put(7, 9, 42);
            assert_eq!(c.get(7, 9), Some(42));
            assert_eq!(c.get(7, 8), None, "another CRC must miss");
            c.clear();
            assert!(c.is_empty());
        }
    }

    #[test]
    fn put_copy_reuses_the_evicted_buffer_unless_a_reader_holds_it() {
        let c = NodeCache::new(16);
        let block = |i: u64| vec![i as u8; 4096];
        for i in 0..16 {
            c.put_copy(i, i as u32, &block(i));
        }
        let ptrs: Vec<*const u8> = (0..16)
            .map(|i| c.get(i, i as u32).unwrap().as_ptr())
            .collect();
        // Full: the next block takes a slot and, nobody holding its old
        // buffer, its memory.
        c.put_copy(100, 7, &block(100));
        let got = c.get(100, 7).unwrap();
        assert_eq!(&got[..], &block(100)[..]);
        assert!(ptrs.contains(&got.as_ptr()), "a fresh buffer was allocated");
        assert_eq!(c.len(), 16);
        // A reader holding every old buffer: the next insert must not write
        // into any of them.
        let held: Vec<Arc<[u8]>> = (0..16).filter_map(|i| c.get(i, i as u32)).collect();
        let before: Vec<Vec<u8>> = held.iter().map(|b| b.to_vec()).collect();
        c.put_copy(101, 8, &block(101));
        assert_eq!(&c.get(101, 8).unwrap()[..], &block(101)[..]);
        for (h, b) in held.iter().zip(&before) {
            assert_eq!(&h[..], &b[..], "a held buffer was overwritten");
        }
        // Same block, new CRC: replaced in place, the old key misses.
        c.put_copy(101, 9, &block(5));
        assert_eq!(c.get(101, 8), None);
        assert_eq!(&c.get(101, 9).unwrap()[..], &block(5)[..]);
    }

    #[test]
    fn lookups_do_not_exclude_each_other() {
        let c: BlockCache<u64> = BlockCache::new(16);
        c.put(3, 1, 33);
        // A lookup in progress elsewhere (its guard held) must not stop
        // another thread's lookup of the same block: every read of a file
        // looks up its extent-tree root.
        let held = c.shard(3).read();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| tx.send(c.get(3, 1)).unwrap());
            let got = rx.recv_timeout(std::time::Duration::from_secs(10));
            drop(held);
            assert_eq!(got, Ok(Some(33)), "a lookup waited for another one");
        });
    }

    #[test]
    fn misses_are_sampled_while_the_cache_is_not_hit() {
        let c: BlockCache<u64> = BlockCache::new(64);
        // A fresh cache admits every miss.
        assert!((0..100).all(|_| c.admit()));
        // Random reads over far more blocks than it holds: a long run of
        // misses, each admitted block evicted before it is read again.
        let mut admitted = 0;
        for b in 0..20_000u64 {
            assert_eq!(c.get(1_000_000 + b, 0), None);
            if c.admit() {
                admitted += 1;
                c.put(1_000_000 + b, 0, b);
            }
        }
        assert!(
            admitted < 20_000 / 4,
            "{admitted} of 20000 misses inserted while nothing was hit"
        );
        // A hot set read over and over gets in and, once hit, turns full
        // admission back on.
        for round in 0..200u64 {
            for b in 0..32u64 {
                if c.get(b, 0).is_none() && c.admit() {
                    c.put(b, 0, round);
                }
            }
        }
        assert!(
            (0..32u64).all(|b| c.get(b, 0).is_some()),
            "hot set not cached"
        );
        // Misses amid those hits: the next review sees the hits and admits
        // every miss again.
        for b in 0..2 * REVIEW_EVERY {
            if c.get(b % 32, 0).is_none() && c.admit() {
                c.put(b % 32, 0, b);
            }
            if c.get(5_000_000 + b, 0).is_none() && c.admit() {
                c.put(5_000_000 + b, 0, b);
            }
        }
        assert!(!c.admission.sampling.load(Ordering::Relaxed));
        assert!(c.admit());
    }

    #[test]
    fn misses_are_all_admitted_while_there_is_room() {
        let c: BlockCache<u64> = BlockCache::new(4096);
        // Nothing is ever hit, but nothing needs evicting either.
        for b in 0..4000u64 {
            assert_eq!(c.get(b, 0), None);
            assert!(c.admit(), "miss {b} refused with free slots");
            c.put(b, 0, b);
        }
        assert_eq!(c.len(), 4000);
        for b in 4000..6000u64 {
            if c.admit() {
                c.put(b, 0, b);
            }
        }
        assert_eq!(c.len(), 4096);
        // Full and never hit: sampled.
        assert!((0..64).filter(|_| c.admit()).count() < 32);
        c.clear();
        assert!((0..64).all(|_| c.admit()), "a cleared cache has room");
    }
}
