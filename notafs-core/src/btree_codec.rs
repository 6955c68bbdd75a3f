//! Byte layout of B-tree nodes (see `node.rs` for the header): decode a
//! verified node into entries, encode entries into a node.
use crate::btree_node::{Child, Kind, Node};
use crate::codec::{Dec, Enc};
use crate::node::{self, Header, Layout, Ptr, NODE_HEADER};
use crate::{Error, Result};

pub(crate) fn decode_node<T: Kind>(data: &[u8], h: &Header, layout: &Layout) -> Result<Node<T>> {
    let what = node::kind_name(T::KIND);
    let mut d = Dec::new(&data[NODE_HEADER..], what);
    let count = h.count as usize;
    // Every entry takes at least 2 bytes, so a count beyond this is a lie.
    if count > layout.payload() / 2 {
        return Err(Error::corrupt(format!(
            "{what} node at {} claims {count} entries, more than fit",
            h.address
        )));
    }
    let node = if h.level == 0 {
        // Empty trees have a null root; an empty leaf on disk is never
        // written, so one can only be damage (or a trick to build DAGs).
        if count == 0 {
            return Err(Error::corrupt(format!(
                "{what} leaf at {} is empty",
                h.address
            )));
        }
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            let k = T::dec_key(&mut d)?;
            let val = T::dec_val(&mut d, layout)?;
            v.push((k, val));
        }
        Node::Leaf(v)
    } else {
        if count == 0 {
            return Err(Error::corrupt(format!(
                "{what} branch at {} is empty",
                h.address
            )));
        }
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            let k = T::dec_key(&mut d)?;
            let p = Ptr {
                block: d.u64()?,
                crc: d.u32()?,
            };
            if !layout.node_in_range(p.block) {
                return Err(Error::corrupt(format!(
                    "{what} branch at {} points to block {} outside the data area",
                    h.address, p.block
                )));
            }
            v.push((k, Child::Disk(p)));
        }
        Node::Branch(v)
    };
    let ordered = match &node {
        Node::Leaf(e) => e.windows(2).all(|w| w[0].0 < w[1].0),
        Node::Branch(e) => e.windows(2).all(|w| w[0].0 < w[1].0),
    };
    if !ordered {
        return Err(Error::corrupt(format!(
            "{what} node at {}: keys out of order or duplicated",
            h.address
        )));
    }
    Ok(node)
}

pub(crate) fn encode_node<T: Kind>(
    node: &Node<T>,
    h: &Header,
    node_size: usize,
) -> Result<Vec<u8>> {
    let mut e = Enc::with_capacity(node_size);
    e.bytes(&[0u8; NODE_HEADER]);
    match node {
        Node::Leaf(v) => {
            for (k, val) in v {
                T::enc_key(k, &mut e);
                T::enc_val(val, &mut e);
            }
        }
        Node::Branch(v) => {
            for (k, c) in v {
                T::enc_key(k, &mut e);
                match c {
                    Child::Disk(p) => {
                        e.u64(p.block);
                        e.u32(p.crc);
                    }
                    Child::Mem(_) => {
                        return Err(Error::Internal("unwritten child at encode".into()));
                    }
                }
            }
        }
    }
    if e.len() > node_size {
        return Err(Error::Internal("node overflow at encode".into()));
    }
    let mut buf = e.buf;
    buf.resize(node_size, 0);
    node::write_header(&mut buf, h);
    Ok(buf)
}
