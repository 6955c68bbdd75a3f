//! Cached, verified node reads: the only way tree nodes and free-list
//! nodes come off the device. A node is read, its CRC-32C checked against
//! the pointer that led to it, its header checked (kind, level, owner,
//! generation bounds), and only then cached.
use std::sync::Arc;

use notafs_blockdev::BlockDevice;

use crate::btree_codec::decode_node;
use crate::btree_node::{Kind, Node};
use crate::cache::{DecodedCache, NodeCache};
use crate::node::{self, Header, Layout, Ptr};
use crate::{Error, Result};

/// A decoded node shared with the decoded cache, with its header.
pub type Shared<T> = Arc<(Header, Node<T>)>;

/// Reads nodes through the cache, verifying everything.
#[derive(Clone)]
pub struct NodeIo {
    pub dev: Arc<dyn BlockDevice>,
    pub cache: Arc<NodeCache>,
    /// Verified file-data blocks, keyed like nodes by (block, CRC): shared
    /// by the transaction and every snapshot (data.rs decides what goes in).
    pub data_cache: Arc<NodeCache>,
    /// Decoded nodes, keyed like the raw ones.
    pub decoded: Arc<DecodedCache>,
    pub layout: Layout,
}

impl NodeIo {
    /// Read and verify the raw bytes of the node at `ptr`.
    pub fn read_raw(
        &self,
        ptr: Ptr,
        kind: u8,
        level: Option<u8>,
        owner: u64,
    ) -> Result<(Header, Arc<[u8]>)> {
        if !self.layout.node_in_range(ptr.block) {
            return Err(Error::corrupt(format!(
                "{} pointer to block {} outside the data area {}..{}",
                node::kind_name(kind),
                ptr.block,
                self.layout.data_start,
                self.layout.data_end
            )));
        }
        let data = match self.cache.get(ptr.block, ptr.crc) {
            Some(d) => d,
            None => {
                let mut buf = vec![0u8; self.layout.node_size as usize];
                self.dev
                    .read(ptr.block, &mut buf)
                    .map_err(|source| Error::Io {
                        what: node::kind_name(kind),
                        block: ptr.block,
                        source,
                    })?;
                if crate::faults::current_faults().skip_verify {
                    let p = Ptr {
                        block: ptr.block,
                        crc: crate::checksum::crc(&buf),
                    };
                    let h = node::verify(&buf, p, kind, level, owner)?;
                    return Ok((h, Arc::from(buf)));
                }
                let h = node::verify(&buf, ptr, kind, level, owner)?;
                let data: Arc<[u8]> = Arc::from(buf);
                self.cache.put(ptr.block, ptr.crc, data.clone());
                return Ok((h, data));
            }
        };
        // Cached bytes passed the CRC when they went in (the key includes
        // it): only the pointer's own expectations remain to check.
        let h = node::verify_header(&data, ptr, kind, level, owner)?;
        Ok((h, data))
    }

    /// Read the nodes at `ptrs` that are not cached in one batch, and cache
    /// those that verify (as `read_raw` would). Best effort for read-ahead:
    /// nothing is reported; a node that failed here is read again, and its
    /// error reported, by whoever needs it.
    pub fn prefetch(&self, ptrs: &[Ptr], kind: u8, level: u8, owner: u64) {
        if crate::faults::current_faults().skip_verify {
            return;
        }
        let ptrs: Vec<Ptr> = ptrs
            .iter()
            .filter(|p| self.layout.node_in_range(p.block))
            .filter(|p| self.cache.get(p.block, p.crc).is_none())
            .copied()
            .collect();
        if ptrs.is_empty() {
            return;
        }
        let ns = self.layout.node_size as usize;
        let mut bufs = vec![0u8; ns * ptrs.len()];
        {
            let mut reqs: Vec<(u64, &mut [u8])> = ptrs
                .iter()
                .zip(bufs.chunks_mut(ns))
                .map(|(p, b)| (p.block, b))
                .collect();
            if self.dev.read_batch(&mut reqs).is_err() {
                return;
            }
        }
        for (p, buf) in ptrs.iter().zip(bufs.chunks(ns)) {
            if node::verify(buf, *p, kind, Some(level), owner).is_ok() {
                self.cache.put(p.block, p.crc, Arc::from(buf));
            }
        }
    }

    /// The decoded node at `ptr`, shared: from the decoded cache when it
    /// was read before (the bytes behind it were verified then, and the
    /// header is checked again against this pointer's expectations), else
    /// read, verified, decoded and remembered. For readers; writers that
    /// modify a node take a copy.
    pub fn load_shared<T: Kind>(&self, ptr: Ptr, level: u8, owner: u64) -> Result<Shared<T>> {
        if let Some(any) = self.decoded.get(ptr.block, ptr.crc) {
            if let Ok(n) = any.downcast::<(Header, Node<T>)>() {
                node::check_header(&n.0, ptr, T::KIND, Some(level), owner)?;
                return Ok(n);
            }
        }
        let (h, data) = self.read_raw(ptr, T::KIND, Some(level), owner)?;
        let n = Arc::new((h, decode_node::<T>(&data, &h, &self.layout)?));
        if !crate::faults::current_faults().skip_verify {
            self.decoded.put(ptr.block, ptr.crc, n.clone());
        }
        Ok(n)
    }

    /// Read, verify and decode the node at `ptr`, which must be at `level`.
    pub fn load<T: Kind>(&self, ptr: Ptr, level: u8, owner: u64) -> Result<Node<T>> {
        let (h, data) = self.read_raw(ptr, T::KIND, Some(level), owner)?;
        decode_node::<T>(&data, &h, &self.layout)
    }
}
