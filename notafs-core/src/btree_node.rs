//! B-tree nodes in memory: what a tree holds (`Kind`), a node's entries,
//! and a child that is either on disk or copied into memory.
use std::cmp::Ordering;
use std::fmt::Debug;

use crate::codec::{Dec, Enc};
use crate::node::{self, Layout, Ptr, NODE_HEADER};
use crate::{Error, Result};

/// Deepest tree accepted on disk. With >= 4 entries per node this covers far
/// more entries than any device holds, and bounds every recursion.
pub const MAX_HEIGHT: usize = 24;

/// What a tree holds: key and value types with their encodings.
pub trait Kind: 'static {
    /// Node kind byte (see `node.rs`).
    const KIND: u8;
    type K: Ord + Clone + Debug + Send + Sync;
    type V: Clone + Debug + Send + Sync;
    fn key_len(k: &Self::K) -> usize;
    fn enc_key(k: &Self::K, e: &mut Enc);
    fn dec_key(d: &mut Dec<'_>) -> Result<Self::K>;
    fn val_len(v: &Self::V) -> usize;
    fn enc_val(v: &Self::V, e: &mut Enc);
    /// Decode and validate a value (pointers against `layout`).
    fn dec_val(d: &mut Dec<'_>, layout: &Layout) -> Result<Self::V>;
    /// Apply the root slot's inode patches to a value read from the tree
    /// (inode_patch.rs; only the file table has any).
    fn patch(_v: &mut Self::V, _p: &crate::inode_patch::PatchMap) {}
    /// Drop the patch of a value about to be stored in the tree: what is
    /// stored is then the value readers must see.
    fn forget_patch(_v: &Self::V, _p: &mut crate::inode_patch::PatchMap) {}
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
    pub(crate) fn len(&self) -> usize {
        match self {
            Node::Leaf(e) => e.len(),
            Node::Branch(e) => e.len(),
        }
    }

    /// Encoded size in bytes, header included.
    pub(crate) fn size(&self) -> usize {
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

    pub(crate) fn first_key(&self) -> Option<&T::K> {
        match self {
            Node::Leaf(e) => e.first().map(|x| &x.0),
            Node::Branch(e) => e.first().map(|x| &x.0),
        }
    }
}

/// Index of the child to descend into for `k`: the last separator `<= k`,
/// or 0 when `k` is below every separator.
pub(crate) fn child_index<K: Ord, C>(entries: &[(K, C)], k: &K) -> usize {
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
pub(crate) fn check_bounds<T: Kind>(
    node: &Node<T>,
    lo: Option<&T::K>,
    hi: Option<&T::K>,
) -> Result<()> {
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

/// Check that `k` lies within `[lo, hi)`.
pub fn in_bounds<K: Ord>(k: &K, lo: Option<&K>, hi: Option<&K>) -> bool {
    lo.is_none_or(|l| k.cmp(l) != Ordering::Less) && hi.is_none_or(|h| k.cmp(h) == Ordering::Less)
}
