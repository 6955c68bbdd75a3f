//! The recursive algorithms of the B-tree (lookup, floor, scan, insert
//! with splits, remove with merges, write-out, walk), each bounded by the
//! height recorded in the parent.
use std::sync::Arc;

use crate::btree_codec::encode_node;
use crate::btree_node::*;
use crate::node::{Header, Ptr, NODE_HEADER};
use crate::node_io::NodeIo;
use crate::{Error, Result};

pub(crate) fn get_rec<T: Kind>(
    io: &NodeIo,
    c: &Child<T>,
    level: u8,
    owner: u64,
    k: &T::K,
) -> Result<Option<T::V>> {
    let node = get_node(io, c, level, owner)?;
    match &*node {
        Node::Leaf(e) => Ok(e
            .binary_search_by(|(x, _)| x.cmp(k))
            .ok()
            .map(|i| e[i].1.clone())),
        Node::Branch(e) => {
            if level == 0 {
                return Err(Error::corrupt("branch node at level 0"));
            }
            get_rec(io, &e[child_index(e, k)].1, level - 1, owner, k)
        }
    }
}

pub(crate) fn floor_rec<T: Kind>(
    io: &NodeIo,
    c: &Child<T>,
    level: u8,
    owner: u64,
    k: &T::K,
) -> Result<Option<(T::K, T::V)>> {
    let node = get_node(io, c, level, owner)?;
    match &*node {
        Node::Leaf(e) => {
            let i = match e.binary_search_by(|(x, _)| x.cmp(k)) {
                Ok(i) => i + 1,
                Err(i) => i,
            };
            Ok(if i == 0 { None } else { Some(e[i - 1].clone()) })
        }
        Node::Branch(e) => {
            let mut i = child_index(e, k) + 1;
            // Separators are lower bounds: if child i holds nothing <= k, the
            // answer is the maximum of an earlier child.
            while i > 0 {
                i -= 1;
                if e[i].0 > *k && i > 0 {
                    continue;
                }
                if let Some(r) = floor_rec(io, &e[i].1, level - 1, owner, k)? {
                    return Ok(Some(r));
                }
            }
            Ok(None)
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn scan_rec<T: Kind>(
    io: &NodeIo,
    c: &Child<T>,
    level: u8,
    owner: u64,
    start: Option<&T::K>,
    lo: Option<&T::K>,
    hi: Option<&T::K>,
    f: &mut dyn FnMut(&T::K, &T::V) -> Result<bool>,
) -> Result<bool> {
    let node = get_node(io, c, level, owner)?;
    check_bounds(&node, lo, hi)?;
    match &*node {
        Node::Leaf(e) => {
            let from = match start {
                None => 0,
                Some(s) => e.partition_point(|(k, _)| k < s),
            };
            for (k, v) in &e[from..] {
                if !f(k, v)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Node::Branch(e) => {
            let from = match start {
                None => 0,
                Some(s) => child_index(e, s),
            };
            for i in from..e.len() {
                let next_hi = e.get(i + 1).map(|x| &x.0).or(hi);
                if !scan_rec(
                    io,
                    &e[i].1,
                    level - 1,
                    owner,
                    start,
                    Some(&e[i].0),
                    next_hi,
                    f,
                )? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn insert_rec<T: Kind>(
    io: &NodeIo,
    c: &mut Child<T>,
    level: u8,
    owner: u64,
    k: T::K,
    v: T::V,
    payload: usize,
    freed: &mut Vec<u64>,
    dirty: &mut usize,
) -> Result<(Option<T::V>, Option<(T::K, Child<T>)>)> {
    let node = make_mut::<T>(io, c, level, owner, freed, dirty)?;
    let old = match node {
        Node::Leaf(e) => match e.binary_search_by(|(x, _)| x.cmp(&k)) {
            Ok(i) => Some(std::mem::replace(&mut e[i].1, v)),
            Err(i) => {
                e.insert(i, (k, v));
                None
            }
        },
        Node::Branch(e) => {
            let i = child_index(e, &k);
            if k < e[i].0 {
                e[i].0 = k.clone();
            }
            let (old, split) = insert_rec(
                io,
                &mut e[i].1,
                level - 1,
                owner,
                k,
                v,
                payload,
                freed,
                dirty,
            )?;
            if let Some((sep, right)) = split {
                e.insert(i + 1, (sep, right));
            }
            old
        }
    };
    if node.size() - NODE_HEADER <= payload {
        return Ok((old, None));
    }
    // Split by bytes: the left half takes entries while it stays under half.
    *dirty += 1;
    let right = split_node(node);
    let sep = right
        .first_key()
        .cloned()
        .ok_or_else(|| Error::Internal("empty split".into()))?;
    Ok((old, Some((sep, Child::Mem(Box::new(right))))))
}

pub(crate) fn split_node<T: Kind>(node: &mut Node<T>) -> Node<T> {
    let total = node.size() - NODE_HEADER;
    match node {
        Node::Leaf(e) => {
            let mut acc = 0;
            let mut at = e.len() - 1;
            for (i, (k, v)) in e.iter().enumerate() {
                acc += T::key_len(k) + T::val_len(v);
                if acc * 2 >= total {
                    at = (i + 1).min(e.len() - 1).max(1);
                    break;
                }
            }
            Node::Leaf(e.split_off(at))
        }
        Node::Branch(e) => {
            let mut acc = 0;
            let mut at = e.len() - 1;
            for (i, (k, _)) in e.iter().enumerate() {
                acc += T::key_len(k) + Ptr::ENCODED_LEN;
                if acc * 2 >= total {
                    at = (i + 1).min(e.len() - 1).max(1);
                    break;
                }
            }
            Node::Branch(e.split_off(at))
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn remove_rec<T: Kind>(
    io: &NodeIo,
    c: &mut Child<T>,
    level: u8,
    owner: u64,
    k: &T::K,
    payload: usize,
    freed: &mut Vec<u64>,
    dirty: &mut usize,
) -> Result<Option<T::V>> {
    let node = make_mut::<T>(io, c, level, owner, freed, dirty)?;
    match node {
        Node::Leaf(e) => Ok(match e.binary_search_by(|(x, _)| x.cmp(k)) {
            Ok(i) => Some(e.remove(i).1),
            Err(_) => None,
        }),
        Node::Branch(e) => {
            let i = child_index(e, k);
            let old = remove_rec(io, &mut e[i].1, level - 1, owner, k, payload, freed, dirty)?;
            let (len, size) = match &e[i].1 {
                Child::Mem(n) => (n.len(), n.size() - NODE_HEADER),
                Child::Disk(_) => (1, payload),
            };
            if len == 0 {
                e.remove(i);
            } else if size < payload / 4 && e.len() > 1 {
                // Merge an underfull child into a neighbour when both fit in
                // one node, so trees shrink as files do.
                let j = if i + 1 < e.len() { i + 1 } else { i - 1 };
                let (l, r) = (i.min(j), i.max(j));
                let rn = make_mut::<T>(io, &mut e[r].1, level - 1, owner, freed, dirty)?;
                let rsize = rn.size() - NODE_HEADER;
                let ln_size = match &e[l].1 {
                    Child::Mem(n) => Some(n.size() - NODE_HEADER),
                    Child::Disk(_) => None,
                };
                let lsize = match ln_size {
                    Some(s) => s,
                    None => {
                        make_mut::<T>(io, &mut e[l].1, level - 1, owner, freed, dirty)?;
                        match &e[l].1 {
                            Child::Mem(n) => n.size() - NODE_HEADER,
                            Child::Disk(_) => payload,
                        }
                    }
                };
                if lsize + rsize <= payload {
                    let (_, right) = e.remove(r);
                    if let (Child::Mem(ln), Child::Mem(rn)) = (&mut e[l].1, right) {
                        match (&mut **ln, *rn) {
                            (Node::Leaf(a), Node::Leaf(b)) => a.extend(b),
                            (Node::Branch(a), Node::Branch(b)) => a.extend(b),
                            _ => return Err(Error::Internal("merge of mixed levels".into())),
                        }
                    }
                }
            }
            Ok(old)
        }
    }
}

pub(crate) fn write_rec<T: Kind>(
    io: &NodeIo,
    c: &mut Child<T>,
    level: u8,
    owner: u64,
    generation: u64,
    alloc: &mut dyn FnMut() -> Result<u64>,
    out: &mut Vec<(u64, Vec<u8>)>,
) -> Result<Ptr> {
    let node = match c {
        Child::Disk(p) => return Ok(*p),
        Child::Mem(n) => n,
    };
    if let Node::Branch(e) = &mut **node {
        for (_, ch) in e.iter_mut() {
            let p = write_rec(io, ch, level - 1, owner, generation, alloc, out)?;
            *ch = Child::Disk(p);
        }
    }
    let block = alloc()?;
    let h = Header {
        kind: T::KIND,
        level,
        count: node.len() as u16,
        address: block,
        generation,
        owner,
    };
    let buf = encode_node(node, &h, io.layout.node_size as usize)?;
    let p = Ptr {
        block,
        crc: crate::checksum::crc(&buf),
    };
    io.cache.put(block, p.crc, Arc::from(buf.clone()));
    out.push((block, buf));
    // The next transaction that changes this node starts from it decoded
    // (scattered overwrites touch the same leaves commit after commit):
    // keep it in the decoded cache under its new address, as a read would.
    if let Child::Mem(n) = std::mem::replace(c, Child::Disk(p)) {
        io.decoded.put(block, p.crc, Arc::new((h, *n)));
    }
    Ok(p)
}

pub(crate) fn walk_rec<T: Kind>(
    io: &NodeIo,
    c: &Child<T>,
    level: u8,
    owner: u64,
    lo: Option<&T::K>,
    hi: Option<&T::K>,
    f: &mut dyn FnMut(Option<Ptr>, u8, &Node<T>, Option<&T::K>, Option<&T::K>) -> Result<()>,
) -> Result<()> {
    let node = get_node(io, c, level, owner)?;
    check_bounds(&node, lo, hi)?;
    let ptr = match c {
        Child::Disk(p) => Some(*p),
        Child::Mem(_) => None,
    };
    f(ptr, level, &node, lo, hi)?;
    if let Node::Branch(e) = &*node {
        if level == 0 {
            return Err(Error::corrupt("branch node at level 0"));
        }
        for (i, (k, ch)) in e.iter().enumerate() {
            let next_hi = e.get(i + 1).map(|x| &x.0).or(hi);
            walk_rec(io, ch, level - 1, owner, Some(k), next_hi, f)?;
        }
    }
    Ok(())
}

/// Borrow a node for reading: in memory, or loaded from disk.
pub(crate) enum NodeRef<'a, T: Kind> {
    Mem(&'a Node<T>),
    Shared(crate::node_io::Shared<T>),
}

impl<T: Kind> std::ops::Deref for NodeRef<'_, T> {
    type Target = Node<T>;
    fn deref(&self) -> &Node<T> {
        match self {
            NodeRef::Mem(n) => n,
            NodeRef::Shared(n) => &n.1,
        }
    }
}

/// Read ahead: the children of the level-1 branch on the path to `start`,
/// from the one holding `start`, `n` of them, that are on disk and not
/// cached, in one batch (verified and cached by `NodeIo::prefetch`).
pub(crate) fn prefetch_rec<T: Kind>(
    io: &NodeIo,
    c: &Child<T>,
    level: u8,
    owner: u64,
    start: &T::K,
    n: usize,
) -> Result<()> {
    let node = get_node(io, c, level, owner)?;
    let Node::Branch(e) = &*node else {
        return Ok(());
    };
    let i = child_index(e, start);
    if level > 1 {
        return prefetch_rec(io, &e[i].1, level - 1, owner, start, n);
    }
    let ptrs: Vec<Ptr> = e[i..]
        .iter()
        .take(n)
        .filter_map(|(_, ch)| match ch {
            Child::Disk(p) => Some(*p),
            Child::Mem(_) => None,
        })
        .collect();
    io.prefetch(&ptrs, T::KIND, 0, owner);
    Ok(())
}

pub(crate) fn get_node<'a, T: Kind>(
    io: &NodeIo,
    c: &'a Child<T>,
    level: u8,
    owner: u64,
) -> Result<NodeRef<'a, T>> {
    match c {
        Child::Mem(n) => Ok(NodeRef::Mem(n)),
        Child::Disk(p) => Ok(NodeRef::Shared(io.load_shared::<T>(*p, level, owner)?)),
    }
}

/// Turn `c` into an in-memory node, freeing its on-disk block.
pub(crate) fn make_mut<'a, T: Kind>(
    io: &NodeIo,
    c: &'a mut Child<T>,
    level: u8,
    owner: u64,
    freed: &mut Vec<u64>,
    dirty: &mut usize,
) -> Result<&'a mut Node<T>> {
    if let Child::Disk(p) = *c {
        let n = io.load::<T>(p, level, owner)?;
        freed.push(p.block);
        *dirty += 1;
        *c = Child::Mem(Box::new(n));
    }
    match c {
        Child::Mem(n) => Ok(n),
        Child::Disk(_) => Err(Error::Internal("make_mut".into())),
    }
}
