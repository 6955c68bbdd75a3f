//! Read-only views of a committed generation.
//!
//! A snapshot holds the root of one generation and pins it, so the allocator
//! does not reuse any block it references while it lives. It never takes the
//! writer's lock: a long write or commit does not block it.
use crate::btree::Tree;
use crate::data;
use crate::extent_tree::Extents;
use crate::file_table::{FileType, Files, Inode, ROOT_INO};
use crate::fs::{DirEntry, Fs, Metadata};
use crate::namespace::{list_dir, meta_of, resolve};
use crate::root_ring::RootSlot;
use crate::{Error, Result};

impl Fs {
    /// A read-only view of the last committed generation that never waits
    /// for the writer. Blocks it references are not reused while it lives.
    pub fn snapshot(&self) -> Snapshot {
        let slot = self.committed_slot();
        Snapshot::new(self.clone(), slot)
    }

    /// A read-only view of retained generation `g` (one of
    /// [`Fs::generations`]), readable while the writer goes on; its blocks
    /// are not reused while it lives (it holds back space: drop it when done).
    pub fn snapshot_at(&self, g: u64) -> Result<Snapshot> {
        let cur = self.committed_slot();
        if g == cur.generation {
            return Ok(Snapshot::new(self.clone(), cur));
        }
        let slot = {
            let recent = self
                .inner
                .committed
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .recent
                .iter()
                .find(|r| r.generation == g)
                .copied();
            recent.or_else(|| {
                self.inner
                    .slots
                    .iter()
                    .find_map(|s| match (&s.state, &s.roots_ok) {
                        (Ok(r), Some(Ok(()))) if r.generation == g => Some(*r),
                        _ => None,
                    })
            })
        }
        .ok_or(Error::NoSuchGeneration(g))?;
        // Pinned from here on; still retained now means its blocks were
        // not released before the pin.
        let snap = Snapshot::new(self.clone(), slot);
        if !self.generations().iter().any(|i| i.generation == g) {
            return Err(Error::NoSuchGeneration(g));
        }
        Ok(snap)
    }
}

/// A committed generation, readable while the writer goes on.
pub struct Snapshot {
    fs: Fs,
    slot: RootSlot,
    files: Tree<Files>,
    pinned: bool,
}

impl Snapshot {
    pub(crate) fn new(fs: Fs, slot: RootSlot) -> Snapshot {
        fs.pin(slot.generation);
        let files = Tree::from_slot(&slot).unwrap_or_else(|_| Tree::empty(0));
        Snapshot {
            fs,
            slot,
            files,
            pinned: true,
        }
    }

    /// The generation this snapshot shows.
    pub fn generation(&self) -> u64 {
        self.slot.generation
    }

    /// Commit time, ns since the Unix epoch.
    pub fn time_ns(&self) -> u64 {
        self.slot.time_ns
    }

    /// Number of files and directories.
    pub fn inode_count(&self) -> u64 {
        self.slot.inode_count
    }

    pub(crate) fn fs(&self) -> &Fs {
        &self.fs
    }

    fn lookup(&self, p: &str) -> Result<Option<Inode>> {
        Ok(resolve(&self.files, self.fs.io(), p, &|i| i)?.map(|x| x.1))
    }

    /// Metadata of `p`.
    pub fn stat(&self, p: &str) -> Result<Metadata> {
        Ok(match self.lookup(p)? {
            Some(i) => meta_of(&i),
            None => Metadata {
                ino: ROOT_INO,
                kind: FileType::Dir,
                size: 0,
                mtime_ns: self.slot.time_ns,
                mode: None,
                owner: None,
            },
        })
    }

    /// Metadata of `p` and the blocks its data occupies (holes excluded;
    /// 0 for directories), as `du` wants them. Cheap: see
    /// [`Fs::stat_allocated`].
    pub fn stat_allocated(&self, p: &str) -> Result<(Metadata, u64)> {
        match self.lookup(p)? {
            Some(i) if i.kind == FileType::File => {
                let ext = Tree::<Extents>::from_disk(i.extents, i.extent_height, i.ino)?;
                Ok((
                    meta_of(&i),
                    crate::file::snapshot_allocated(&self.fs, &ext)?,
                ))
            }
            _ => Ok((self.stat(p)?, 0)),
        }
    }

    /// Entries of directory `p`, sorted by name.
    pub fn read_dir(&self, p: &str) -> Result<Vec<DirEntry>> {
        let dir = match self.lookup(p)? {
            None => ROOT_INO,
            Some(i) if i.kind == FileType::Dir => i.ino,
            Some(_) => return Err(Error::NotADirectory(p.to_string())),
        };
        self.read_dir_ino(dir)
    }

    /// Entries of the directory with inode number `dir`.
    pub fn read_dir_ino(&self, dir: u64) -> Result<Vec<DirEntry>> {
        list_dir(&self.files, self.fs.io(), dir)
    }

    /// Open file `p` for reading.
    pub fn open(&self, p: &str) -> Result<SnapshotFile<'_>> {
        match self.lookup(p)? {
            None => Err(Error::IsADirectory(p.to_string())),
            Some(i) if i.kind == FileType::Dir => Err(Error::IsADirectory(p.to_string())),
            Some(i) => Ok(SnapshotFile {
                snap: self,
                ext: Tree::from_disk(i.extents, i.extent_height, i.ino)?,
                inode: i,
                pos: 0,
            }),
        }
    }

    /// Read a whole file into memory (for small files and tests).
    pub fn read_to_vec(&self, p: &str) -> Result<Vec<u8>> {
        let f = self.open(p)?;
        let len = usize::try_from(f.len())
            .map_err(|_| Error::InvalidArgument("file too large for memory".into()))?;
        // The size comes from the disk: never abort on an allocation it
        // asks for (a damaged size of 1 TiB is an error, not a crash).
        let mut v: Vec<u8> = Vec::new();
        v.try_reserve_exact(len).map_err(|_| {
            Error::InvalidArgument(format!("{p}: {len} bytes do not fit in memory"))
        })?;
        v.resize(len, 0);
        f.read_at(0, &mut v)?;
        Ok(v)
    }

    /// BLAKE2b-256 over the logical content: names, types, sizes and bytes,
    /// independent of the layout on disk.
    pub fn digest(&self) -> Result<[u8; 32]> {
        crate::digest::digest(self, "")
    }

    /// Digest of the subtree at `p` (a file or a directory).
    pub fn digest_path(&self, p: &str) -> Result<[u8; 32]> {
        crate::digest::digest(self, p)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if self.pinned {
            self.fs.unpin(self.slot.generation);
        }
    }
}

/// A file of a snapshot.
pub struct SnapshotFile<'a> {
    snap: &'a Snapshot,
    inode: Inode,
    ext: Tree<Extents>,
    pos: u64,
}

impl SnapshotFile<'_> {
    pub fn len(&self) -> u64 {
        self.inode.size
    }
    pub fn is_empty(&self) -> bool {
        self.inode.size == 0
    }
    pub fn metadata(&self) -> Metadata {
        meta_of(&self.inode)
    }
    /// Blocks holding the file's data (holes excluded).
    pub fn allocated_blocks(&self) -> Result<u64> {
        crate::file::snapshot_allocated(self.snap.fs(), &self.ext)
    }

    /// lseek(SEEK_DATA): first offset `>= off` holding data; None (ENXIO)
    /// when only a hole or the end follows.
    pub fn next_data(&self, off: u64) -> Result<Option<u64>> {
        crate::file::snapshot_next(self.snap.fs(), &self.ext, self.inode.size, off, true)
    }

    /// lseek(SEEK_HOLE): first offset `>= off` in a hole or at the end;
    /// None (ENXIO) at or past the end.
    pub fn next_hole(&self, off: u64) -> Result<Option<u64>> {
        crate::file::snapshot_next(self.snap.fs(), &self.ext, self.inode.size, off, false)
    }

    /// Read at `off`; returns the byte count (0 at end of file).
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<usize> {
        let fs = self.snap.fs();
        data::read_at(
            fs.io(),
            &self.ext,
            None,
            self.inode.size,
            off,
            buf,
            fs.verify_reads(),
        )
    }
}

impl std::io::Read for SnapshotFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}
