//! File handles and the write path.
//!
//! Whole blocks of a write go straight to freshly allocated device blocks
//! (never over a block a committed generation references); partial blocks
//! are merged with the old content and kept in a bounded buffer until they
//! fill up, the buffer limit is reached, or the commit. Either way nothing is
//! visible to other generations until the root swap.
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::btree::Tree;
use crate::data;
use crate::extent_tree::Extents;
use crate::file_table::FileType;
use crate::fs::Fs;
use crate::txn::{current, flush_buffer, load_block, state, unmap, write_blocks, Txn};
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
