//! A bounded cache of node bytes, shared by the writer and all readers.
//!
//! Entries are keyed by block address *and* checked against the CRC the
//! caller expects: a block can be freed and reused by a later generation, and
//! a reader of an older generation must then miss, not get the new bytes.
//! Eviction is CLOCK (second chance): O(1) per access, no allocation per hit,
//! and the memory bound is exact: `capacity` nodes.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

struct Entry {
    block: u64,
    crc: u32,
    data: Arc<[u8]>,
    referenced: bool,
}

struct Inner {
    map: HashMap<u64, usize>,
    slots: Vec<Entry>,
    hand: usize,
    hits: u64,
    misses: u64,
}

/// The node cache.
pub struct NodeCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl NodeCache {
    /// A cache holding at most `capacity` nodes (at least 16).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(16);
        NodeCache {
            capacity,
            inner: Mutex::new(Inner {
                // Grown on demand: `capacity` comes from the caller's byte
                // budget and may be far more than will ever be used.
                map: HashMap::new(),
                slots: Vec::new(),
                hand: 0,
                hits: 0,
                misses: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached bytes of `block` if they have checksum `crc`.
    pub fn get(&self, block: u64, crc: u32) -> Option<Arc<[u8]>> {
        let mut g = self.lock();
        let idx = g.map.get(&block).copied();
        match idx {
            Some(i) if g.slots[i].crc == crc => {
                g.slots[i].referenced = true;
                g.hits += 1;
                Some(g.slots[i].data.clone())
            }
            _ => {
                g.misses += 1;
                None
            }
        }
    }

    /// Remember `data` (verified to have checksum `crc`) for `block`.
    pub fn put(&self, block: u64, crc: u32, data: Arc<[u8]>) {
        let mut g = self.lock();
        if let Some(&i) = g.map.get(&block) {
            g.slots[i] = Entry {
                block,
                crc,
                data,
                referenced: true,
            };
            return;
        }
        if g.slots.len() < self.capacity {
            let i = g.slots.len();
            g.slots.push(Entry {
                block,
                crc,
                data,
                referenced: false,
            });
            g.map.insert(block, i);
            return;
        }
        loop {
            let h = g.hand;
            g.hand = (h + 1) % self.capacity;
            if g.slots[h].referenced {
                g.slots[h].referenced = false;
                continue;
            }
            let old = g.slots[h].block;
            g.map.remove(&old);
            g.slots[h] = Entry {
                block,
                crc,
                data,
                referenced: false,
            };
            g.map.insert(block, h);
            return;
        }
    }

    /// (hits, misses) since creation.
    pub fn stats(&self) -> (u64, u64) {
        let g = self.lock();
        (g.hits, g.misses)
    }

    /// Drop everything (used after a device failure).
    pub fn clear(&self) {
        let mut g = self.lock();
        g.map.clear();
        g.slots.clear();
        g.hand = 0;
    }
}
