//! A copy-on-write B-tree, generic over what its leaves hold.
//!
//! Both the file table and every file's extent tree are instances. Nodes read
//! from disk are never modified: the first change to a node copies it into
//! memory (`Child::Mem`) and hands its old block to the caller to free, so the
//! committed tree stays intact on disk until the new root is written. At
//! commit, [`Tree::write`] serialises the in-memory nodes bottom-up into fresh
//! blocks, each parent recording its children's addresses and checksums.
//!
//! Nodes split and merge by *bytes*, not entry counts, because entries have
//! variable sizes (names, checksum lists). Every entry is at most a quarter
//! of a node's payload, so a split always yields two valid nodes.
//!
//! Branch entries are `(separator key, child pointer)`; every key in child `i`
//! is `>= separator[i]` and `< separator[i+1]`. Separators are lower bounds,
//! not necessarily tight (deletions may leave a gap), which is why `floor`
//! may look one child to the left.
//!
//! Reading is driven by the height recorded in the parent (root slot or
//! inode) and the level each node declares must equal the expected one, so a
//! walk always terminates: a cycle on disk shows up as a level mismatch.
use std::cmp::Ordering;
use std::fmt::Debug;
use std::sync::Arc;

use notafs_blockdev::BlockDevice;

use crate::cache::NodeCache;
use crate::codec::{Dec, Enc};
use crate::node::{self, Header, Layout, Ptr, NODE_HEADER};
use crate::{Error, Result};

/// Deepest tree accepted on disk. With >= 4 entries per node this covers far
/// more entries than any device holds, and bounds every recursion.
pub const MAX_HEIGHT: usize = 24;

/// What a tree holds: key and value types with their encodings.
pub trait Kind: 'static {
    /// Node kind byte (see `node.rs`).
    const KIND: u8;
    type K: Ord + Clone + Debug;
    type V: Clone + Debug;
    fn key_len(k: &Self::K) -> usize;
    fn enc_key(k: &Self::K, e: &mut Enc);
    fn dec_key(d: &mut Dec<'_>) -> Result<Self::K>;
    fn val_len(v: &Self::V) -> usize;
    fn enc_val(v: &Self::V, e: &mut Enc);
    /// Decode and validate a value (pointers against `layout`).
    fn dec_val(d: &mut Dec<'_>, layout: &Layout) -> Result<Self::V>;
}

/// Reads nodes through the cache, verifying everything.
#[derive(Clone)]
pub struct NodeIo {
    pub dev: Arc<dyn BlockDevice>,
    pub cache: Arc<NodeCache>,
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
        let h = node::verify(&data, ptr, kind, level, owner)?;
        Ok((h, data))
    }

    /// Read, verify and decode the node at `ptr`, which must be at `level`.
    pub fn load<T: Kind>(&self, ptr: Ptr, level: u8, owner: u64) -> Result<Node<T>> {
        let (h, data) = self.read_raw(ptr, T::KIND, Some(level), owner)?;
        decode_node::<T>(&data, &h, &self.layout)
    }
}

/// A child reference: on disk (immutable) or modified in memory.
#[derive(Debug)]
pub enum Child<T: Kind> {
    Disk(Ptr),
    Mem(Box<Node<T>>),
}

/// A decoded node.
#[derive(Debug)]
pub enum Node<T: Kind> {
    Leaf(Vec<(T::K, T::V)>),
    Branch(Vec<(T::K, Child<T>)>),
}

impl<T: Kind> Clone for Child<T> {
    fn clone(&self) -> Self {
        match self {
            Child::Disk(p) => Child::Disk(*p),
            Child::Mem(n) => Child::Mem(n.clone()),
        }
    }
}

impl<T: Kind> Clone for Node<T> {
    fn clone(&self) -> Self {
        match self {
            Node::Leaf(e) => Node::Leaf(e.clone()),
            Node::Branch(e) => Node::Branch(e.clone()),
        }
    }
}

impl<T: Kind> Node<T> {
    fn len(&self) -> usize {
        match self {
            Node::Leaf(e) => e.len(),
            Node::Branch(e) => e.len(),
        }
    }

    /// Encoded size in bytes, header included.
    fn size(&self) -> usize {
        NODE_HEADER
            + match self {
                Node::Leaf(e) => e
                    .iter()
                    .map(|(k, v)| T::key_len(k) + T::val_len(v))
                    .sum::<usize>(),
                Node::Branch(e) => e
                    .iter()
                    .map(|(k, _)| T::key_len(k) + Ptr::ENCODED_LEN)
                    .sum(),
            }
    }

    fn first_key(&self) -> Option<&T::K> {
        match self {
            Node::Leaf(e) => e.first().map(|x| &x.0),
            Node::Branch(e) => e.first().map(|x| &x.0),
        }
    }
}

fn decode_node<T: Kind>(data: &[u8], h: &Header, layout: &Layout) -> Result<Node<T>> {
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

fn encode_node<T: Kind>(node: &Node<T>, h: &Header, node_size: usize) -> Result<Vec<u8>> {
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

/// A tree: its root, its height (0 = empty) and the owner recorded in its
/// nodes. Blocks of on-disk nodes replaced by a modification accumulate in
/// `freed` for the allocator.
#[derive(Debug)]
pub struct Tree<T: Kind> {
    pub root: Option<Child<T>>,
    pub height: u8,
    pub owner: u64,
    pub freed: Vec<u64>,
    /// Nodes made dirty so far (an upper bound on what a commit must write).
    pub dirty_nodes: usize,
}

impl<T: Kind> Clone for Tree<T> {
    fn clone(&self) -> Self {
        Tree {
            root: self.root.clone(),
            height: self.height,
            owner: self.owner,
            freed: self.freed.clone(),
            dirty_nodes: self.dirty_nodes,
        }
    }
}

/// Index of the child to descend into for `k`: the last separator `<= k`,
/// or 0 when `k` is below every separator.
fn child_index<K: Ord, C>(entries: &[(K, C)], k: &K) -> usize {
    match entries.binary_search_by(|(s, _)| s.cmp(k)) {
        Ok(i) => i,
        Err(0) => 0,
        Err(i) => i - 1,
    }
}

/// Check that a node's keys lie within the range its parent gives it. Keys
/// are sorted inside a node, so the first and last suffice. Enforcing this
/// on every descent means a node shared by two parents (a DAG or cycle in a
/// damaged image) fails at its second parent instead of multiplying work.
fn check_bounds<T: Kind>(node: &Node<T>, lo: Option<&T::K>, hi: Option<&T::K>) -> Result<()> {
    let (first, last) = match node {
        Node::Leaf(e) => (e.first().map(|x| &x.0), e.last().map(|x| &x.0)),
        Node::Branch(e) => (e.first().map(|x| &x.0), e.last().map(|x| &x.0)),
    };
    if let (Some(f), Some(l)) = (first, last) {
        if !in_bounds(f, lo, hi) || !in_bounds(l, lo, hi) {
            return Err(Error::corrupt(format!(
                "{} node keys {f:?}..{l:?} outside the range its parent assigns",
                node::kind_name(T::KIND)
            )));
        }
    }
    Ok(())
}

/// Borrow a node for reading: in memory, or loaded from disk.
enum NodeRef<'a, T: Kind> {
    Mem(&'a Node<T>),
    Owned(Node<T>),
}

impl<T: Kind> std::ops::Deref for NodeRef<'_, T> {
    type Target = Node<T>;
    fn deref(&self) -> &Node<T> {
        match self {
            NodeRef::Mem(n) => n,
            NodeRef::Owned(n) => n,
        }
    }
}

fn get_node<'a, T: Kind>(
    io: &NodeIo,
    c: &'a Child<T>,
    level: u8,
    owner: u64,
) -> Result<NodeRef<'a, T>> {
    match c {
        Child::Mem(n) => Ok(NodeRef::Mem(n)),
        Child::Disk(p) => Ok(NodeRef::Owned(io.load::<T>(*p, level, owner)?)),
    }
}

impl<T: Kind> Tree<T> {
    /// An empty tree.
    pub fn empty(owner: u64) -> Self {
        Tree {
            root: None,
            height: 0,
            owner,
            freed: Vec::new(),
            dirty_nodes: 0,
        }
    }

    /// The tree stored at `root` with `height` levels (a null root is empty).
    pub fn from_disk(root: Ptr, height: u8, owner: u64) -> Result<Self> {
        if root.is_null() != (height == 0) || height as usize > MAX_HEIGHT {
            return Err(Error::corrupt(format!(
                "{} root {:?} with height {height}",
                node::kind_name(T::KIND),
                root
            )));
        }
        Ok(Tree {
            root: if root.is_null() {
                None
            } else {
                Some(Child::Disk(root))
            },
            height,
            owner,
            freed: Vec::new(),
            dirty_nodes: 0,
        })
    }

    /// The on-disk root, if the tree has no unwritten changes.
    pub fn disk_root(&self) -> Option<Ptr> {
        match &self.root {
            None => Some(Ptr::NULL),
            Some(Child::Disk(p)) => Some(*p),
            Some(Child::Mem(_)) => None,
        }
    }

    pub fn is_dirty(&self) -> bool {
        matches!(self.root, Some(Child::Mem(_)))
    }

    /// Value stored under `k`.
    pub fn get(&self, io: &NodeIo, k: &T::K) -> Result<Option<T::V>> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        get_rec(io, root, self.height - 1, self.owner, k)
    }

    /// The entry with the greatest key `<= k`.
    pub fn floor(&self, io: &NodeIo, k: &T::K) -> Result<Option<(T::K, T::V)>> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        floor_rec(io, root, self.height - 1, self.owner, k)
    }

    /// Visit entries with key `>= start` in order until `f` returns false.
    pub fn scan(
        &self,
        io: &NodeIo,
        start: Option<&T::K>,
        f: &mut dyn FnMut(&T::K, &T::V) -> Result<bool>,
    ) -> Result<()> {
        let Some(root) = &self.root else {
            return Ok(());
        };
        scan_rec(io, root, self.height - 1, self.owner, start, None, None, f)?;
        Ok(())
    }

    /// Turn `c` into an in-memory node, freeing its on-disk block.
    fn make_mut<'a>(
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

    /// Insert or replace; returns the previous value.
    pub fn insert(&mut self, io: &NodeIo, k: T::K, v: T::V) -> Result<Option<T::V>> {
        let payload = io.layout.payload();
        if self.root.is_none() {
            self.root = Some(Child::Mem(Box::new(Node::Leaf(vec![(k, v)]))));
            self.height = 1;
            self.dirty_nodes += 1;
            return Ok(None);
        }
        let owner = self.owner;
        let root = self
            .root
            .as_mut()
            .ok_or_else(|| Error::Internal("root".into()))?;
        let (old, split) = insert_rec(
            io,
            root,
            self.height - 1,
            owner,
            k,
            v,
            payload,
            &mut self.freed,
            &mut self.dirty_nodes,
        )?;
        if let Some((sep, right)) = split {
            let left = self
                .root
                .take()
                .ok_or_else(|| Error::Internal("root".into()))?;
            let lkey = match &left {
                Child::Mem(n) => n.first_key().cloned(),
                Child::Disk(_) => None,
            }
            .ok_or_else(|| Error::Internal("split of a disk node".into()))?;
            self.root = Some(Child::Mem(Box::new(Node::Branch(vec![
                (lkey, left),
                (sep, right),
            ]))));
            self.height += 1;
            self.dirty_nodes += 1;
            if self.height as usize > MAX_HEIGHT {
                return Err(Error::corrupt("tree grew beyond the maximum height"));
            }
        }
        Ok(old)
    }

    /// Remove `k`; returns its value. Nothing is copied when `k` is absent.
    pub fn remove(&mut self, io: &NodeIo, k: &T::K) -> Result<Option<T::V>> {
        if self.get(io, k)?.is_none() {
            return Ok(None);
        }
        let payload = io.layout.payload();
        let owner = self.owner;
        let root = self
            .root
            .as_mut()
            .ok_or_else(|| Error::Internal("root".into()))?;
        let old = remove_rec(
            io,
            root,
            self.height - 1,
            owner,
            k,
            payload,
            &mut self.freed,
            &mut self.dirty_nodes,
        )?;
        // Shrink: an empty root empties the tree; a branch with one child is
        // replaced by that child.
        loop {
            match &mut self.root {
                Some(Child::Mem(n)) if n.len() == 0 => {
                    self.root = None;
                    self.height = 0;
                    break;
                }
                Some(Child::Mem(n)) if self.height > 1 && n.len() == 1 => {
                    if let Node::Branch(e) = &mut **n {
                        let (_, c) = e.remove(0);
                        self.root = Some(c);
                        self.height -= 1;
                    } else {
                        break;
                    }
                }
                _ => break,
            }
        }
        Ok(old)
    }

    /// Write every in-memory node bottom-up. `alloc` returns the block for a
    /// new node; encoded nodes are appended to `out` for the caller to write
    /// in as few device requests as possible.
    pub fn write(
        &mut self,
        io: &NodeIo,
        generation: u64,
        alloc: &mut dyn FnMut() -> Result<u64>,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<Ptr> {
        let owner = self.owner;
        let height = self.height;
        let p = match &mut self.root {
            None => Ptr::NULL,
            Some(c) => write_rec(io, c, height - 1, owner, generation, alloc, out)?,
        };
        self.dirty_nodes = 0;
        Ok(p)
    }

    /// Visit every node of the tree (on disk and in memory) with its level,
    /// for fsck and for reachability; `f` gets the pointer (None for memory
    /// nodes), the level and the decoded node, and the key bounds the node's
    /// keys must respect.
    pub fn walk(
        &self,
        io: &NodeIo,
        f: &mut dyn FnMut(Option<Ptr>, u8, &Node<T>, Option<&T::K>, Option<&T::K>) -> Result<()>,
    ) -> Result<()> {
        let Some(root) = &self.root else {
            return Ok(());
        };
        walk_rec(io, root, self.height - 1, self.owner, None, None, f)
    }
}

fn get_rec<T: Kind>(
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

fn floor_rec<T: Kind>(
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
fn scan_rec<T: Kind>(
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
fn insert_rec<T: Kind>(
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
    let node = Tree::<T>::make_mut(io, c, level, owner, freed, dirty)?;
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

fn split_node<T: Kind>(node: &mut Node<T>) -> Node<T> {
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
fn remove_rec<T: Kind>(
    io: &NodeIo,
    c: &mut Child<T>,
    level: u8,
    owner: u64,
    k: &T::K,
    payload: usize,
    freed: &mut Vec<u64>,
    dirty: &mut usize,
) -> Result<Option<T::V>> {
    let node = Tree::<T>::make_mut(io, c, level, owner, freed, dirty)?;
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
                let rn = Tree::<T>::make_mut(io, &mut e[r].1, level - 1, owner, freed, dirty)?;
                let rsize = rn.size() - NODE_HEADER;
                let ln_size = match &e[l].1 {
                    Child::Mem(n) => Some(n.size() - NODE_HEADER),
                    Child::Disk(_) => None,
                };
                let lsize = match ln_size {
                    Some(s) => s,
                    None => {
                        Tree::<T>::make_mut(io, &mut e[l].1, level - 1, owner, freed, dirty)?;
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

fn write_rec<T: Kind>(
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
    *c = Child::Disk(p);
    Ok(p)
}

fn walk_rec<T: Kind>(
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

/// Check that `k` lies within `[lo, hi)`.
pub fn in_bounds<K: Ord>(k: &K, lo: Option<&K>, hi: Option<&K>) -> bool {
    lo.is_none_or(|l| k.cmp(l) != Ordering::Less) && hi.is_none_or(|h| k.cmp(h) == Ordering::Less)
}
