//! File handles and the write path.
//!
//! Whole blocks of a write go straight to freshly allocated device blocks
//! (never over a block a committed generation references); partial blocks
//! are merged with the old content and kept in a bounded buffer until they
//! fill up, the buffer limit is reached, or the commit. Either way nothing is
//! visible to other generations until the root swap.
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::btree::{Child, Node, NodeIo, Tree};
use crate::data;
use crate::extent_tree::Extents;
use crate::file_table::FileType;
use crate::fs::Fs;
use crate::txn::{current, flush_buffer, load_block, state, unmap, write_blocks, Txn};
use crate::{Error, Result};

/// Largest file size: offsets must fit an i64 (as for POSIX `off_t`).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// Whole-block writes at least this long go straight to the device; shorter
/// ones are buffered like partial blocks, so scattered small writes reach
/// the device at the commit (or when the buffer fills) as one batch of
/// contiguous blocks instead of one synchronous request each.
const DIRECT_WRITE_MIN: u64 = 64 << 10;

/// A handle to a file in the current transaction. Reads see uncommitted
/// writes; a handle survives commits and renames of its file.
pub struct File {
    fs: Fs,
    ino: u64,
}

impl Clone for File {
    fn clone(&self) -> Self {
        if let Some(h) = self.fs.txn().handles.get_mut(&self.ino) {
            h.1 += 1;
        }
        File {
            fs: self.fs.clone(),
            ino: self.ino,
        }
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let mut t = self.fs.txn();
        if let Some(h) = t.handles.get_mut(&self.ino) {
            h.1 = h.1.saturating_sub(1);
            if h.1 == 0 {
                t.handles.remove(&self.ino);
            }
        }
    }
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "File(ino {})", self.ino)
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Fs {
    /// Create an empty file; fails if `p` exists.
    pub fn create(&self, p: &str) -> Result<File> {
        let (key, inode) = self.create_inode(p, FileType::File)?;
        self.txn().handles.entry(inode.ino).or_insert((key, 0)).1 += 1;
        Ok(File::new(self.clone(), inode.ino))
    }

    /// Open an existing file, or create it when `create` is set; with
    /// `truncate`, drop its content.
    pub fn open_file_with(&self, p: &str, create: bool, truncate: bool) -> Result<File> {
        let found = {
            let t = self.txn();
            match Self::lookup(&t, self.io(), p) {
                Ok(f) => f,
                Err(Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            }
        };
        match found {
            None if crate::path::components(p)?.is_empty() => {
                Err(Error::IsADirectory(p.to_string()))
            }
            None if create => self.create(p),
            None => Err(Error::NotFound(p.to_string())),
            Some((_, i)) if i.kind == FileType::Dir => Err(Error::IsADirectory(p.to_string())),
            Some((key, i)) => {
                self.txn().handles.entry(i.ino).or_insert((key, 0)).1 += 1;
                let f = File::new(self.clone(), i.ino);
                if truncate {
                    f.set_len(0)?;
                }
                Ok(f)
            }
        }
    }

    /// Open an existing file.
    pub fn open_file(&self, p: &str) -> Result<File> {
        self.open_file_with(p, false, false)
    }
}

impl File {
    pub(crate) fn new(fs: Fs, ino: u64) -> File {
        File { fs, ino }
    }

    /// Inode number (stable across renames and commits).
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Current size in bytes.
    pub fn len(&self) -> Result<u64> {
        let t = self.fs.txn();
        Ok(current(&t, self.fs.io(), self.ino)?.size)
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Metadata as the transaction sees it.
    pub fn metadata(&self) -> Result<crate::Metadata> {
        let t = self.fs.txn();
        Ok(crate::namespace::meta_of(&current(
            &t,
            self.fs.io(),
            self.ino,
        )?))
    }

    /// Read at most `buf.len()` bytes at `off`; returns the count (0 at or
    /// past the end). Holes read as zeros.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<usize> {
        let io = self.fs.io().clone();
        let verify = self.fs.verify_reads();
        let t = self.fs.txn();
        if let Some(st) = t.inodes.get(&self.ino) {
            return data::read_at(&io, &st.ext, Some(&st.buf), st.inode.size, off, buf, verify);
        }
        let inode = current(&t, &io, self.ino)?;
        let ext = Tree::<Extents>::from_disk(inode.extents, inode.extent_height, self.ino)?;
        drop(t);
        // Committed extents are immutable while we hold no lock: a
        // concurrent writer copies before changing and frees only at commit,
        // and blocks are not reused for N commits.
        data::read_at(&io, &ext, None, inode.size, off, buf, verify)
    }

    /// Read exactly `buf.len()` bytes at `off`.
    pub fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let n = self.read_at(off, buf)?;
        if n < buf.len() {
            return Err(Error::InvalidArgument(format!(
                "read of {} bytes at {off} past the end of the file",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Write `data` at `off`, growing the file as needed (a gap becomes a
    /// hole). Not durable until [`Fs::commit`].
    pub fn write_at(&self, off: u64, data: &[u8]) -> Result<()> {
        self.fs.check_writable_pub()?;
        let mut t = self.fs.txn();
        self.write_locked(&mut t, off, data)
    }

    fn write_locked(&self, t: &mut Txn, off: u64, data: &[u8]) -> Result<()> {
        // Refuse bad arguments before anything changes.
        let end = off
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or_else(|| Error::InvalidArgument("write past the maximum file size".into()))?;
        let mut pos = off;
        let res = self.write_inner(t, off, data, &mut pos);
        if res.is_err() && pos > off {
            // Keep what was written up to `pos` (a short write) and drop
            // anything mapped or buffered past the new end, so no stale
            // bytes can appear if the file grows later.
            if let Ok(st) = state(t, &self.fs.io().clone(), self.ino) {
                let size = st.inode.size.max(pos.min(end));
                st.inode.size = size;
                t.changed = true;
                let _ = self.cut(t, size);
            }
        }
        res
    }

    fn write_inner(&self, t: &mut Txn, off: u64, data: &[u8], progress: &mut u64) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = off
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or_else(|| Error::InvalidArgument("write past the maximum file size".into()))?;
        let io = self.fs.io().clone();
        let bs = io.layout.block_size as u64;
        let st = state(t, &io, self.ino)?;
        if st.inode.kind != FileType::File {
            return Err(Error::IsADirectory(format!("inode {}", self.ino)));
        }
        let mut pos = off;
        while pos < end {
            let lb = pos / bs;
            let in_block = pos % bs;
            if in_block == 0 && end - pos >= bs.max(DIRECT_WRITE_MIN) {
                // A long run of whole blocks: straight to the device.
                let nblocks = (end - pos) / bs;
                let src = &data[(pos - off) as usize..(pos - off + nblocks * bs) as usize];
                let mut done = 0;
                let r = write_blocks(&self.fs, t, self.ino, lb, src, &mut done, false);
                // Buffered blocks of the range are superseded only where
                // the write landed: a write that fails part way leaves the
                // rest of the file as earlier accepted writes made it.
                let removed = {
                    let st = state(t, &io, self.ino)?;
                    let keys: Vec<u64> = st.buf.range(lb..lb + done).map(|(k, _)| *k).collect();
                    for k in &keys {
                        st.buf.remove(k);
                    }
                    keys.len()
                };
                t.buffered_bytes = t.buffered_bytes.saturating_sub(removed * bs as usize);
                *progress = pos + done * bs;
                r?;
                pos += nblocks * bs;
            } else {
                let take = (bs - in_block).min(end - pos);
                let is_new = !state(t, &io, self.ino)?.buf.contains_key(&lb);
                if is_new {
                    // A buffered block is a claim on space the commit must
                    // honour: refuse it now rather than fail the commit.
                    self.fs.reserve_check_pub(t, 1)?;
                }
                let src = &data[(pos - off) as usize..(pos - off + take) as usize];
                // A whole block needs no old content.
                let block = if take == bs {
                    src.to_vec()
                } else {
                    let mut block = load_block(&self.fs, t, self.ino, lb)?;
                    block[in_block as usize..(in_block + take) as usize].copy_from_slice(src);
                    block
                };
                let st = state(t, &io, self.ino)?;
                if st.buf.insert(lb, block).is_none() {
                    t.buffered_bytes += bs as usize;
                }
                pos += take;
                *progress = pos;
            }
        }
        let st = state(t, &io, self.ino)?;
        st.inode.size = st.inode.size.max(end);
        st.inode.mtime_ns = now_ns();
        t.changed = true;
        if t.buffered_bytes > self.fs.buffer_limit() {
            flush_buffer(&self.fs, t, self.ino, false, false)?;
            if t.buffered_bytes > self.fs.buffer_limit() {
                let inos: Vec<u64> = t.inodes.keys().copied().collect();
                for i in inos {
                    flush_buffer(&self.fs, t, i, false, false)?;
                }
            }
        }
        Ok(())
    }

    /// Append `data` at the end; returns the offset it was written at.
    pub fn append(&self, data: &[u8]) -> Result<u64> {
        self.fs.check_writable_pub()?;
        // Size and write under one lock: concurrent appends never overlap.
        let mut t = self.fs.txn();
        let off = current(&t, self.fs.io(), self.ino)?.size;
        self.write_locked(&mut t, off, data)?;
        Ok(off)
    }

    /// Set the size: shrinking frees the blocks past the end, growing adds a
    /// hole that reads as zeros.
    pub fn set_len(&self, size: u64) -> Result<()> {
        self.fs.check_writable_pub()?;
        if size > MAX_FILE_SIZE {
            return Err(Error::InvalidArgument(
                "size past the maximum file size".into(),
            ));
        }
        let io = self.fs.io().clone();
        let mut t = self.fs.txn();
        let old = state(&mut t, &io, self.ino)?.inode.size;
        if size < old {
            self.cut(&mut t, size)?;
        }
        let st = state(&mut t, &io, self.ino)?;
        st.inode.size = size;
        st.inode.mtime_ns = now_ns();
        t.changed = true;
        Ok(())
    }

    /// Drop every block past `size` and zero the tail of the last block.
    fn cut(&self, t: &mut Txn, size: u64) -> Result<()> {
        let io = self.fs.io().clone();
        let bs = io.layout.block_size as u64;
        let keep = size.div_ceil(bs);
        unmap(t, &io, self.ino, keep, u64::MAX - keep)?;
        let st = state(t, &io, self.ino)?;
        let dropped: Vec<u64> = st.buf.range(keep..).map(|(k, _)| *k).collect();
        for k in &dropped {
            st.buf.remove(k);
        }
        t.buffered_bytes = t.buffered_bytes.saturating_sub(dropped.len() * bs as usize);
        // Bytes past the end inside the last block must read as zeros if
        // the file grows again: rewrite that block with its tail zeroed.
        if size % bs != 0 {
            let lb = size / bs;
            let mut block = load_block(&self.fs, t, self.ino, lb)?;
            // (load_block already returns zeros past the end of the file.)
            block[(size % bs) as usize..].fill(0);
            let st = state(t, &io, self.ino)?;
            if st.buf.insert(lb, block).is_none() {
                t.buffered_bytes += bs as usize;
            }
        }
        Ok(())
    }

    /// Turn the whole blocks `[lb, lb + n)` into a hole that reads as zeros,
    /// freeing what they held (repair of damaged data; size unchanged).
    pub fn punch_blocks(&self, lb: u64, n: u64) -> Result<()> {
        self.fs.check_writable_pub()?;
        let io = self.fs.io().clone();
        let bs = io.layout.block_size as usize;
        let mut t = self.fs.txn();
        unmap(&mut t, &io, self.ino, lb, n)?;
        let st = state(&mut t, &io, self.ino)?;
        let end = lb.saturating_add(n);
        let dropped: Vec<u64> = st.buf.range(lb..end).map(|(k, _)| *k).collect();
        for k in &dropped {
            st.buf.remove(k);
        }
        st.inode.mtime_ns = now_ns();
        t.buffered_bytes = t.buffered_bytes.saturating_sub(dropped.len() * bs);
        t.changed = true;
        Ok(())
    }

    /// Set the modification time (ns since the Unix epoch), as `touch -d`.
    pub fn set_mtime(&self, mtime_ns: u64) -> Result<()> {
        self.fs.check_writable_pub()?;
        let io = self.fs.io().clone();
        let mut t = self.fs.txn();
        let st = state(&mut t, &io, self.ino)?;
        st.inode.mtime_ns = mtime_ns;
        t.changed = true;
        Ok(())
    }

    /// A cursor implementing `Read`, `Write` and `Seek`, starting at 0.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            file: self.clone(),
            pos: 0,
        }
    }
}

/// `std::io` adapter over a [`File`].
pub struct Cursor {
    file: File,
    pos: u64,
}

impl Cursor {
    pub fn position(&self) -> u64 {
        self.pos
    }
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Cursor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_at(self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Cursor {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.file.len()?.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start",
            )),
        }
    }
}

/// Allocation of on-disk extent subtrees, in blocks, keyed by filesystem
/// UUID and node pointer. A pointer carries the CRC-32C of its node, which
/// records its children's pointers and CRCs in turn, so a pointer names one
/// subtree content: an entry never goes stale, and a file changed in the
/// transaction is counted from its in-memory nodes plus the cached counts of
/// the on-disk subtrees they still share. Bounded: cleared when full.
static ALLOC_CACHE: std::sync::Mutex<Option<AllocCache>> = std::sync::Mutex::new(None);
type AllocCache = HashMap<(u128, u64, u32), u64>;
const ALLOC_CACHE_MAX: usize = 1 << 16;

fn alloc_cache_get(key: &(u128, u64, u32)) -> Option<u64> {
    let c = ALLOC_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    c.as_ref().and_then(|m| m.get(key).copied())
}

fn alloc_cache_put(key: (u128, u64, u32), v: u64) {
    let mut c = ALLOC_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let m = c.get_or_insert_with(HashMap::new);
    if m.len() >= ALLOC_CACHE_MAX {
        m.clear();
    }
    m.insert(key, v);
}

fn subtree_blocks(
    io: &NodeIo,
    c: &Child<Extents>,
    level: u8,
    owner: u64,
    uuid: u128,
) -> Result<u64> {
    match c {
        Child::Mem(n) => node_blocks(io, n, level, owner, uuid),
        Child::Disk(p) => {
            let key = (uuid, p.block, p.crc);
            if let Some(v) = alloc_cache_get(&key) {
                return Ok(v);
            }
            let n = io.load::<Extents>(*p, level, owner)?;
            let v = node_blocks(io, &n, level, owner, uuid)?;
            alloc_cache_put(key, v);
            Ok(v)
        }
    }
}

fn node_blocks(io: &NodeIo, n: &Node<Extents>, level: u8, owner: u64, uuid: u128) -> Result<u64> {
    match n {
        Node::Leaf(e) => Ok(e.iter().fold(0u64, |a, (_, v)| a.saturating_add(v.len()))),
        Node::Branch(e) => {
            if level == 0 {
                return Err(Error::corrupt("extent branch node at level 0"));
            }
            let mut sum = 0u64;
            for (_, c) in e {
                sum = sum.saturating_add(subtree_blocks(io, c, level - 1, owner, uuid)?);
            }
            Ok(sum)
        }
    }
}

/// Whether logical block `lb` is mapped by an extent of `ext`.
fn mapped(io: &NodeIo, ext: &Tree<Extents>, lb: u64) -> Result<Option<u64>> {
    Ok(match ext.floor(io, &lb)? {
        Some((k, v)) if k.saturating_add(v.len()) > lb => Some(k.saturating_add(v.len())),
        _ => None,
    })
}

/// Blocks holding data of a file: those its extents map plus its buffered
/// (not yet written) blocks that no extent maps. Holes count nothing.
fn allocated_in(
    io: &NodeIo,
    uuid: u128,
    ext: &Tree<Extents>,
    buffered: Option<&BTreeMap<u64, Vec<u8>>>,
) -> Result<u64> {
    let mut n = match &ext.root {
        None => 0,
        Some(root) => subtree_blocks(io, root, ext.height - 1, ext.owner, uuid)?,
    };
    for lb in buffered.into_iter().flat_map(|b| b.keys()) {
        if mapped(io, ext, *lb)?.is_none() {
            n = n.saturating_add(1);
        }
    }
    Ok(n)
}

/// First offset `>= off` holding data, or None when only a hole (or the end
/// of the file) follows, as lseek(SEEK_DATA) answers ENXIO.
fn next_data_in(
    io: &NodeIo,
    ext: &Tree<Extents>,
    buffered: Option<&BTreeMap<u64, Vec<u8>>>,
    size: u64,
    off: u64,
) -> Result<Option<u64>> {
    if off >= size {
        return Ok(None);
    }
    let bs = io.layout.block_size as u64;
    let first = off / bs;
    let start = match ext.floor(io, &first)? {
        Some((k, _)) => k,
        None => first,
    };
    let mut found: Option<u64> = None;
    ext.scan(io, Some(&start), &mut |k, v| {
        if k.saturating_add(v.len()) > first {
            found = Some((*k).max(first));
            return Ok(false);
        }
        Ok(true)
    })?;
    if let Some(b) = buffered.and_then(|b| b.range(first..).next().map(|(k, _)| *k)) {
        found = Some(found.map_or(b, |f| f.min(b)));
    }
    Ok(found
        .map(|lb| lb.saturating_mul(bs).max(off))
        .filter(|p| *p < size))
}

/// First offset `>= off` in a hole (the end of the file counts as one), or
/// None at or past the end, as lseek(SEEK_HOLE) answers ENXIO.
fn next_hole_in(
    io: &NodeIo,
    ext: &Tree<Extents>,
    buffered: Option<&BTreeMap<u64, Vec<u8>>>,
    size: u64,
    off: u64,
) -> Result<Option<u64>> {
    if off >= size {
        return Ok(None);
    }
    let bs = io.layout.block_size as u64;
    let mut lb = off / bs;
    // Each step passes one extent or one buffered block: O(extents).
    while lb.saturating_mul(bs) < size {
        if buffered.is_some_and(|b| b.contains_key(&lb)) {
            lb += 1;
            continue;
        }
        match mapped(io, ext, lb)? {
            Some(end) => lb = end,
            None => break,
        }
    }
    Ok(Some(lb.saturating_mul(bs).clamp(off, size)))
}

fn uuid_of(fs: &Fs) -> u128 {
    u128::from_le_bytes(fs.superblock().uuid)
}

impl Fs {
    /// Metadata of `p` and the blocks its data occupies (holes excluded;
    /// 0 for directories), as `du` and `ls -s` want them. Cheap: counts of
    /// unchanged extent subtrees are cached.
    pub fn stat_allocated(&self, p: &str) -> Result<(crate::Metadata, u64)> {
        let io = self.io().clone();
        let t = self.txn();
        let found = Self::lookup(&t, &io, p)?;
        let Some((_, inode)) = found else {
            drop(t);
            return Ok((self.stat(p)?, 0));
        };
        let meta = crate::namespace::meta_of(&inode);
        if inode.kind != FileType::File {
            return Ok((meta, 0));
        }
        let n = match t.inodes.get(&inode.ino) {
            Some(st) => allocated_in(&io, uuid_of(self), &st.ext, Some(&st.buf))?,
            None => {
                drop(t);
                let ext =
                    Tree::<Extents>::from_disk(inode.extents, inode.extent_height, inode.ino)?;
                allocated_in(&io, uuid_of(self), &ext, None)?
            }
        };
        Ok((meta, n))
    }
}

impl File {
    /// Blocks holding the file's data, written or buffered (holes
    /// excluded).
    pub fn allocated_blocks(&self) -> Result<u64> {
        self.query(|io, ext, buf, _| allocated_in(io, uuid_of(&self.fs), ext, buf))
    }

    /// lseek(SEEK_DATA): the first offset `>= off` holding data, None if
    /// none (ENXIO). Block granularity: a block is data once written.
    pub fn next_data(&self, off: u64) -> Result<Option<u64>> {
        self.query(|io, ext, buf, size| next_data_in(io, ext, buf, size, off))
    }

    /// lseek(SEEK_HOLE): the first offset `>= off` in a hole or at the end
    /// of the file, None if `off` is at or past the end (ENXIO).
    pub fn next_hole(&self, off: u64) -> Result<Option<u64>> {
        self.query(|io, ext, buf, size| next_hole_in(io, ext, buf, size, off))
    }

    /// Run a read-only query on the file's extents, buffered blocks and
    /// size as the transaction sees them.
    fn query<R>(
        &self,
        f: impl FnOnce(&NodeIo, &Tree<Extents>, Option<&BTreeMap<u64, Vec<u8>>>, u64) -> Result<R>,
    ) -> Result<R> {
        let io = self.fs.io().clone();
        let t = self.fs.txn();
        if let Some(st) = t.inodes.get(&self.ino) {
            return f(&io, &st.ext, Some(&st.buf), st.inode.size);
        }
        let inode = current(&t, &io, self.ino)?;
        drop(t);
        // Committed extents do not change under us (see read_at).
        let ext = Tree::<Extents>::from_disk(inode.extents, inode.extent_height, self.ino)?;
        f(&io, &ext, None, inode.size)
    }
}

/// Queries shared with snapshot files.
pub(crate) fn snapshot_allocated(fs: &Fs, ext: &Tree<Extents>) -> Result<u64> {
    allocated_in(fs.io(), uuid_of(fs), ext, None)
}

pub(crate) fn snapshot_next(
    fs: &Fs,
    ext: &Tree<Extents>,
    size: u64,
    off: u64,
    data: bool,
) -> Result<Option<u64>> {
    if data {
        next_data_in(fs.io(), ext, None, size, off)
    } else {
        next_hole_in(fs.io(), ext, None, size, off)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use notafs_blockdev::memory::MemoryDevice;

    use crate::{FormatOptions, Fs};

    const BS: u64 = 4096;

    /// Allocation and SEEK_DATA/SEEK_HOLE answers, before the commit
    /// (in-memory extents and buffered blocks) and after it (on disk, the
    /// snapshot included): data at [0, 3 blocks), a 10-block hole, data at
    /// [13, 14) written partially (buffered), a hole to the end.
    #[test]
    fn allocated_blocks_and_seek_data_hole() {
        let dev = Arc::new(MemoryDevice::new(4096, 8192).unwrap());
        let fs = Fs::format(dev, &FormatOptions::default()).unwrap();
        let f = fs.create("sparse").unwrap();
        f.write_at(0, &vec![7u8; 3 * BS as usize]).unwrap();
        f.write_at(13 * BS + 100, b"tail").unwrap();
        f.set_len(20 * BS).unwrap();
        let check =
            |alloc: u64, data: &dyn Fn(u64) -> Option<u64>, hole: &dyn Fn(u64) -> Option<u64>| {
                assert_eq!(alloc, 4);
                assert_eq!(data(0), Some(0));
                assert_eq!(data(5), Some(5));
                assert_eq!(data(3 * BS), Some(13 * BS));
                assert_eq!(data(13 * BS + 7), Some(13 * BS + 7));
                assert_eq!(data(14 * BS), None);
                assert_eq!(data(20 * BS), None);
                assert_eq!(hole(0), Some(3 * BS));
                assert_eq!(hole(3 * BS + 1), Some(3 * BS + 1));
                assert_eq!(hole(13 * BS), Some(14 * BS));
                assert_eq!(hole(20 * BS - 1), Some(20 * BS - 1));
                assert_eq!(hole(20 * BS), None);
            };
        check(
            f.allocated_blocks().unwrap(),
            &|o| f.next_data(o).unwrap(),
            &|o| f.next_hole(o).unwrap(),
        );
        assert_eq!(fs.stat_allocated("sparse").unwrap().1, 4);
        fs.commit().unwrap();
        check(
            f.allocated_blocks().unwrap(),
            &|o| f.next_data(o).unwrap(),
            &|o| f.next_hole(o).unwrap(),
        );
        assert_eq!(fs.stat_allocated("sparse").unwrap().1, 4);
        let s = fs.snapshot();
        let sf = s.open("sparse").unwrap();
        check(
            sf.allocated_blocks().unwrap(),
            &|o| sf.next_data(o).unwrap(),
            &|o| sf.next_hole(o).unwrap(),
        );
        assert_eq!(s.stat_allocated("sparse").unwrap().1, 4);
        assert_eq!(s.stat_allocated("").unwrap().1, 0);
        // A change after the commit: overwriting a mapped block does not
        // count twice; filling part of the hole counts.
        f.write_at(1, b"x").unwrap();
        f.write_at(5 * BS, &vec![1u8; 2 * BS as usize]).unwrap();
        assert_eq!(f.allocated_blocks().unwrap(), 6);
        assert_eq!(f.next_hole(0).unwrap(), Some(3 * BS));
        assert_eq!(f.next_data(3 * BS).unwrap(), Some(5 * BS));
        assert_eq!(f.next_hole(5 * BS).unwrap(), Some(7 * BS));
        // Shrinking drops what is past the end; a fully dense file has its
        // only hole at the end.
        f.set_len(2 * BS).unwrap();
        assert_eq!(f.allocated_blocks().unwrap(), 2);
        assert_eq!(f.next_hole(0).unwrap(), Some(2 * BS));
        assert_eq!(f.next_data(2 * BS).unwrap(), None);
        // A large file of many extents (several tree levels) counts right.
        let big = fs.create("big").unwrap();
        let chunk = vec![3u8; 64 * BS as usize];
        for i in 0..80u64 {
            // every other chunk: 80 chunks of data, 79 holes between
            big.write_at(i * 2 * 64 * BS, &chunk).unwrap();
        }
        assert_eq!(big.allocated_blocks().unwrap(), 80 * 64);
        fs.commit().unwrap();
        assert_eq!(big.allocated_blocks().unwrap(), 80 * 64);
        assert_eq!(fs.stat_allocated("big").unwrap().1, 80 * 64);
        assert_eq!(big.next_hole(0).unwrap(), Some(64 * BS));
        assert_eq!(big.next_data(64 * BS).unwrap(), Some(128 * BS));
        assert_eq!(big.next_data(79 * 128 * BS + 64 * BS).unwrap(), None);
    }
}
