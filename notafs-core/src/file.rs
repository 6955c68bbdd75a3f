//! File handles and the write path.
//!
//! Whole blocks of a write go straight to freshly allocated device blocks
//! (never over a block a committed generation references); partial blocks
//! are merged with the old content and kept in a bounded buffer until they
//! fill up, the buffer limit is reached, or the commit. Either way nothing is
//! visible to other generations until the root swap.
use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::btree::{NodeIo, Tree};
use crate::data;
use crate::extent_tree::{Extent, Extents};
use crate::file_table::{FileType, Inode};
use crate::fs::{Fs, InodeState, Txn};
use crate::{Error, Result};

/// Largest file size: offsets must fit an i64 (as for POSIX `off_t`).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

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

/// Make sure `ino` has a transaction state, loading its inode.
fn state<'a>(t: &'a mut Txn, io: &NodeIo, ino: u64) -> Result<&'a mut InodeState> {
    if !t.inodes.contains_key(&ino) {
        let key = t
            .handles
            .get(&ino)
            .map(|h| h.0.clone())
            .ok_or(Error::Stale)?;
        let inode = t.files.get(io, &key)?.ok_or(Error::Stale)?;
        if inode.ino != ino {
            return Err(Error::Stale);
        }
        let ext = Tree::<Extents>::from_disk(inode.extents, inode.extent_height, ino)?;
        t.inodes.insert(
            ino,
            InodeState {
                key,
                inode,
                ext,
                buf: BTreeMap::new(),
            },
        );
    }
    t.inodes.get_mut(&ino).ok_or(Error::Stale)
}

/// The inode of `ino` as the transaction sees it, without loading state.
fn current(t: &Txn, io: &NodeIo, ino: u64) -> Result<Inode> {
    if let Some(st) = t.inodes.get(&ino) {
        return Ok(st.inode);
    }
    let key = &t.handles.get(&ino).ok_or(Error::Stale)?.0;
    match t.files.get(io, key)? {
        Some(i) if i.ino == ino => Ok(i),
        _ => Err(Error::Stale),
    }
}

fn drain(t: &mut Txn, ino: u64, node_blocks: u64) -> Result<()> {
    let freed = match t.inodes.get_mut(&ino) {
        Some(st) => std::mem::take(&mut st.ext.freed),
        None => return Ok(()),
    };
    for b in freed {
        t.alloc.free(b, node_blocks)?;
    }
    Ok(())
}

/// Remove the mapping of file blocks `[lb, lb+n)`, freeing the device blocks.
fn unmap(t: &mut Txn, io: &NodeIo, ino: u64, lb: u64, n: u64) -> Result<()> {
    let end = lb.saturating_add(n);
    let st = state(t, io, ino)?;
    let start = st.ext.floor(io, &lb)?.map(|(k, _)| k).unwrap_or(lb);
    let mut hits: Vec<(u64, Extent)> = Vec::new();
    st.ext.scan(io, Some(&start), &mut |k, e| {
        if *k >= end {
            return Ok(false);
        }
        if k.saturating_add(e.len()) > lb {
            hits.push((*k, e.clone()));
        }
        Ok(true)
    })?;
    let mut frees = Vec::new();
    for (k, e) in hits {
        st.ext.remove(io, &k)?;
        let a = k.max(lb);
        let b = k.saturating_add(e.len()).min(end);
        frees.push((e.pblock + (a - k), b - a));
        if k < lb {
            let left = Extent {
                pblock: e.pblock,
                crcs: e.crcs[..(lb - k) as usize].to_vec(),
            };
            st.ext.insert(io, k, left)?;
        }
        if k.saturating_add(e.len()) > end {
            let off = (end - k) as usize;
            let right = Extent {
                pblock: e.pblock + off as u64,
                crcs: e.crcs[off..].to_vec(),
            };
            st.ext.insert(io, end, right)?;
        }
    }
    for (s, l) in frees {
        t.alloc.free(s, l)?;
    }
    drain(t, ino, io.layout.node_blocks)
}

/// Map file blocks `lb..` to device blocks `pb..` with checksums `crcs`
/// (the range must be unmapped), extending the previous extent when it is
/// physically contiguous, so appends keep few, long extents.
fn map(t: &mut Txn, io: &NodeIo, ino: u64, lb: u64, pb: u64, crcs: &[u32]) -> Result<()> {
    let max = io.layout.max_extent as usize;
    let st = state(t, io, ino)?;
    let mut done = 0usize;
    if lb > 0 {
        if let Some((k, mut e)) = st.ext.floor(io, &(lb - 1))? {
            if k + e.len() == lb && e.pblock + e.len() == pb && e.crcs.len() < max {
                let take = (max - e.crcs.len()).min(crcs.len());
                e.crcs.extend_from_slice(&crcs[..take]);
                st.ext.insert(io, k, e)?;
                done = take;
            }
        }
    }
    while done < crcs.len() {
        let take = (crcs.len() - done).min(max);
        let e = Extent {
            pblock: pb + done as u64,
            crcs: crcs[done..done + take].to_vec(),
        };
        st.ext.insert(io, lb + done as u64, e)?;
        done += take;
    }
    drain(t, ino, io.layout.node_blocks)
}

/// Write whole blocks `data` at file block `lb` to newly allocated device
/// blocks and map them. Each chunk is written before the old mapping of its
/// range is dropped, so a failure (no space, device error) leaves the blocks
/// not yet written with their old content; `done` counts blocks written.
fn write_blocks(
    fs: &Fs,
    t: &mut Txn,
    ino: u64,
    lb: u64,
    data: &[u8],
    done: &mut u64,
    committing: bool,
) -> Result<()> {
    let io = fs.io().clone();
    let bs = io.layout.block_size as usize;
    let n = (data.len() / bs) as u64;
    // Continue the previous extent on disk when possible.
    let mut hint = None;
    if lb > 0 {
        let st = state(t, &io, ino)?;
        if let Some((k, e)) = st.ext.floor(&io, &(lb - 1))? {
            if k + e.len() == lb {
                hint = Some(e.pblock + e.len());
            }
        }
    }
    *done = 0;
    while *done < n {
        if committing {
            t.alloc.reserve = 0;
        } else {
            fs.reserve_for_data(t)?;
        }
        let (pb, got) = t.alloc.alloc(n - *done, hint, committing)?;
        let chunk = &data[(*done as usize) * bs..((*done + got) as usize) * bs];
        if let Err(e) = io.dev.write(pb, chunk) {
            return fs.fail_write(e.into());
        }
        fs.note_written(chunk.len() as u64);
        let crcs: Vec<u32> = chunk.chunks(bs).map(crate::checksum::crc).collect();
        unmap(t, &io, ino, lb + *done, got)?;
        map(t, &io, ino, lb + *done, pb, &crcs)?;
        hint = Some(pb + got);
        *done += got;
    }
    if !committing {
        spill_metadata(fs, t, ino)?;
    }
    Ok(())
}

/// Write a file's in-memory extent-tree nodes early, to fresh blocks, once
/// they exceed a quarter of the cache, so that one transaction can be far
/// larger than RAM. The nodes are not referenced by any root until the
/// commit; if they change again they are copied and their fresh blocks
/// freed at once. Running out of space here is not an error: the nodes just
/// stay in memory until the commit.
fn spill_metadata(fs: &Fs, t: &mut Txn, ino: u64) -> Result<()> {
    let io = fs.io().clone();
    let limit = (fs.buffer_limit() / 2) / io.layout.node_size as usize;
    let dirty = t.inodes.get(&ino).map_or(0, |s| s.ext.dirty_nodes);
    if dirty <= limit.max(16) {
        return Ok(());
    }
    let generation = fs.generation() + 1;
    let Some(mut st) = t.inodes.remove(&ino) else {
        return Ok(());
    };
    let mut out = Vec::new();
    let alloc = &mut t.alloc;
    let nb = io.layout.node_blocks;
    let res = st.ext.write(
        &io,
        generation,
        &mut || alloc.alloc_exact(nb, false),
        &mut out,
    );
    t.inodes.insert(ino, st);
    match res {
        Ok(_) | Err(Error::NoSpace) => {}
        Err(e) => return Err(e),
    }
    if let Err(e) = crate::commit::write_coalesced(io.dev.as_ref(), &mut out) {
        return fs.fail_write(e);
    }
    drain(t, ino, nb)
}

/// Write out the buffered partial blocks of `ino`.
/// `committing`: the commit is spending its reserve, so data written now
/// may use it (it was accounted for when the blocks were buffered).
pub(crate) fn flush_buffer(
    fs: &Fs,
    t: &mut Txn,
    ino: u64,
    forget_last: bool,
    committing: bool,
) -> Result<()> {
    let bs = fs.io().layout.block_size as usize;
    let buf = match t.inodes.get_mut(&ino) {
        Some(st) => std::mem::take(&mut st.buf),
        None => return Ok(()),
    };
    t.buffered_bytes = t.buffered_bytes.saturating_sub(buf.len() * bs);
    // Group consecutive blocks into runs written with one request each.
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    for (lb, data) in buf {
        match runs.last_mut() {
            Some((s, v)) if *s + (v.len() / bs) as u64 == lb && v.len() < (4 << 20) => {
                v.extend_from_slice(&data)
            }
            _ => runs.push((lb, data)),
        }
    }
    if forget_last {
        runs.pop();
    }
    for (lb, data) in runs {
        let mut done = 0;
        write_blocks(fs, t, ino, lb, &data, &mut done, committing)?;
    }
    Ok(())
}

/// Current content of file block `lb` (for a read-modify-write).
fn load_block(fs: &Fs, t: &mut Txn, ino: u64, lb: u64) -> Result<Vec<u8>> {
    let io = fs.io().clone();
    let bs = io.layout.block_size as u64;
    let verify = fs.verify_reads();
    let st = state(t, &io, ino)?;
    if let Some(b) = st.buf.get(&lb) {
        return Ok(b.clone());
    }
    let mut v = vec![0u8; bs as usize];
    if lb * bs < st.inode.size {
        data::read_at(&io, &st.ext, None, st.inode.size, lb * bs, &mut v, verify)?;
    }
    Ok(v)
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
        Ok(crate::fs::meta_of(&current(&t, self.fs.io(), self.ino)?))
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
            if in_block == 0 && end - pos >= bs {
                // A run of whole blocks: straight to the device.
                let nblocks = (end - pos) / bs;
                let src = &data[(pos - off) as usize..(pos - off + nblocks * bs) as usize];
                let removed = {
                    let st = state(t, &io, self.ino)?;
                    let keys: Vec<u64> = st.buf.range(lb..lb + nblocks).map(|(k, _)| *k).collect();
                    for k in &keys {
                        st.buf.remove(k);
                    }
                    keys.len()
                };
                t.buffered_bytes = t.buffered_bytes.saturating_sub(removed * bs as usize);
                let mut done = 0;
                let r = write_blocks(&self.fs, t, self.ino, lb, src, &mut done, false);
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
                let mut block = load_block(&self.fs, t, self.ino, lb)?;
                block[in_block as usize..(in_block + take) as usize]
                    .copy_from_slice(&data[(pos - off) as usize..(pos - off + take) as usize]);
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
