//! Namespace operations of the writer transaction: create, remove, rename,
//! stat, read_dir, and path resolution (shared with snapshots).
use crate::btree::{NodeIo, Tree};
use crate::extent_tree::Extents;
use crate::file_table::{EntryKey, FileType, Files, Inode, ROOT_INO};
use crate::fs::{now_ns, DirEntry, Fs, Metadata};
use crate::node::{Layout, Ptr};
use crate::txn::Txn;
use crate::{path, Error, Result};

impl Fs {
    /// Resolve `p` in the transaction: (key, inode), or None for the root.
    pub(crate) fn lookup(t: &Txn, io: &NodeIo, p: &str) -> Result<Option<(EntryKey, Inode)>> {
        resolve(&t.files, io, p, &|i| {
            t.inodes.get(&i.ino).map_or(i, |st| st.inode)
        })
    }

    /// Key under which `p` would be created, checking its parent directory.
    pub(crate) fn new_key(t: &Txn, io: &NodeIo, p: &str) -> Result<EntryKey> {
        let comps = path::components(p)?;
        let Some((name, dirs)) = comps.split_last() else {
            return Err(Error::Exists("/".into()));
        };
        let parent = if dirs.is_empty() {
            ROOT_INO
        } else {
            let dir = dirs.join("/");
            match Self::lookup(t, io, &dir)? {
                Some((_, i)) if i.kind == FileType::Dir => i.ino,
                Some(_) => return Err(Error::NotADirectory(dir)),
                None => ROOT_INO,
            }
        };
        Ok(EntryKey {
            parent,
            name: (*name).to_string(),
        })
    }

    pub(crate) fn drain_freed(t: &mut Txn, layout: &Layout) -> Result<()> {
        let freed = std::mem::take(&mut t.files.freed);
        for b in freed {
            t.alloc.free(b, layout.node_blocks)?;
        }
        Ok(())
    }

    pub(crate) fn create_inode(&self, p: &str, kind: FileType) -> Result<(EntryKey, Inode)> {
        self.check_writable()?;
        let io = self.io().clone();
        let mut t = self.txn();
        let key = Self::new_key(&t, &io, p)?;
        if t.files.get(&io, &key)?.is_some() {
            return Err(Error::Exists(p.to_string()));
        }
        // The next inode number comes from the root slot: one the decoder
        // would reject, or the last one, must not reach the table.
        if t.next_ino <= ROOT_INO || t.next_ino == u64::MAX {
            return Err(Error::corrupt(format!(
                "root records next inode number {}",
                t.next_ino
            )));
        }
        let inode = Inode {
            ino: t.next_ino,
            kind,
            size: 0,
            mtime_ns: now_ns(),
            extents: Ptr::NULL,
            extent_height: 0,
            mode: None,
            owner: None,
        };
        self.reserve_check(&mut t, 4)?;
        t.files.insert(&io, key.clone(), inode)?;
        Self::drain_freed(&mut t, &io.layout)?;
        t.next_ino += 1;
        t.inode_count += 1;
        t.changed = true;
        Ok((key, inode))
    }

    /// Create a directory; its parent must exist.
    pub fn create_dir(&self, p: &str) -> Result<()> {
        self.create_inode(p, FileType::Dir).map(|_| ())
    }

    /// Create a directory and its missing parents.
    pub fn create_dir_all(&self, p: &str) -> Result<()> {
        let comps = path::components(p)?;
        for i in 1..=comps.len() {
            let sub = comps[..i].join("/");
            match self.stat(&sub) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => return Err(Error::NotADirectory(sub)),
                Err(Error::NotFound(_)) => self.create_dir(&sub)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Metadata of `p` as the transaction sees it.
    pub fn stat(&self, p: &str) -> Result<Metadata> {
        let t = self.txn();
        match Self::lookup(&t, self.io(), p)? {
            None => Ok(Metadata {
                ino: ROOT_INO,
                kind: FileType::Dir,
                size: 0,
                mtime_ns: self.committed_slot().time_ns,
                mode: None,
                owner: None,
            }),
            Some((_, i)) => Ok(meta_of(&i)),
        }
    }

    /// Whether `p` exists.
    pub fn exists(&self, p: &str) -> Result<bool> {
        match self.stat(p) {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Entries of directory `p`, sorted by name.
    pub fn read_dir(&self, p: &str) -> Result<Vec<DirEntry>> {
        let t = self.txn();
        let dir = match Self::lookup(&t, self.io(), p)? {
            None => ROOT_INO,
            Some((_, i)) if i.kind == FileType::Dir => i.ino,
            Some(_) => return Err(Error::NotADirectory(p.to_string())),
        };
        let mut v = list_dir(&t.files, self.io(), dir)?;
        for e in v.iter_mut() {
            if let Some(st) = t.inodes.get(&e.meta.ino) {
                e.meta = meta_of(&st.inode);
            }
        }
        Ok(v)
    }

    /// Remove a file or an empty directory.
    pub fn remove(&self, p: &str) -> Result<()> {
        self.check_writable()?;
        let io = self.io().clone();
        let mut t = self.txn();
        let (key, inode) = Self::lookup(&t, &io, p)?
            .ok_or_else(|| Error::InvalidArgument("cannot remove the root directory".into()))?;
        if inode.kind == FileType::Dir && !list_dir(&t.files, &io, inode.ino)?.is_empty() {
            return Err(Error::DirectoryNotEmpty(p.to_string()));
        }
        let count = Self::one_less(t.inode_count)?;
        self.free_inode_data(&mut t, &io, inode)?;
        t.files.remove(&io, &key)?;
        Self::drain_freed(&mut t, &io.layout)?;
        t.handles.remove(&inode.ino);
        t.inode_count = count;
        t.changed = true;
        Ok(())
    }

    /// Remove `p` and everything below it.
    pub fn remove_all(&self, p: &str) -> Result<()> {
        let m = self.stat(p)?;
        if m.is_dir() {
            for e in self.read_dir(p)? {
                let child = format!("{}/{}", p.trim_end_matches('/'), e.name);
                self.remove_all(&child)?;
            }
        }
        if path::components(p)?.is_empty() {
            return Ok(());
        }
        self.remove(p)
    }

    /// Free every data block and extent node of `inode`.
    pub(crate) fn free_inode_data(&self, t: &mut Txn, io: &NodeIo, inode: Inode) -> Result<()> {
        if inode.kind != FileType::File {
            return Ok(());
        }
        let tree = match t.inodes.remove(&inode.ino) {
            Some(st) => {
                t.buffered_bytes -= st.buf.len() * io.layout.block_size as usize;
                for b in &st.ext.freed {
                    t.alloc.free(*b, io.layout.node_blocks)?;
                }
                st.ext
            }
            None => Tree::<Extents>::from_disk(inode.extents, inode.extent_height, inode.ino)?,
        };
        let mut runs = Vec::new();
        tree.scan(io, None, &mut |_, e| {
            runs.push((e.pblock, e.len()));
            Ok(true)
        })?;
        let mut nodes = Vec::new();
        tree.walk(io, &mut |p, _, _, _, _| {
            if let Some(p) = p {
                nodes.push(p.block);
            }
            Ok(())
        })?;
        for (s, l) in runs {
            t.alloc.free(s, l)?;
        }
        for b in nodes {
            t.alloc.free(b, io.layout.node_blocks)?;
        }
        Ok(())
    }

    /// Set the attributes of `p` (a file or directory; the root has none):
    /// permission bits (the low 12 bits of `mode`), owner, modification
    /// time; `None` leaves one unchanged. Part of the transaction.
    pub fn set_attrs(
        &self,
        p: &str,
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
        mtime_ns: Option<u64>,
    ) -> Result<Metadata> {
        self.check_writable()?;
        let io = self.io().clone();
        let mut t = self.txn();
        let Some((key, inode)) = Self::lookup(&t, &io, p)? else {
            return Err(Error::InvalidArgument(
                "the root directory has no attributes to set".into(),
            ));
        };
        let apply = |i: &mut Inode| {
            if let Some(m) = mode {
                i.mode = Some((m & 0o7777) as u16);
            }
            if let Some(o) = owner {
                i.owner = Some(o);
            }
            if let Some(ns) = mtime_ns {
                i.mtime_ns = ns;
            }
        };
        let out = if let Some(st) = t.inodes.get_mut(&inode.ino) {
            apply(&mut st.inode);
            st.inode
        } else {
            self.reserve_check(&mut t, 2)?;
            let mut i = inode;
            apply(&mut i);
            t.files.insert(&io, key, i)?;
            Self::drain_freed(&mut t, &io.layout)?;
            i
        };
        t.changed = true;
        Ok(meta_of(&out))
    }

    /// Rename `from` to `to` atomically, replacing `to` if it is a file (or
    /// an empty directory when `from` is a directory).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.check_writable()?;
        let io = self.io().clone();
        let mut t = self.txn();
        let (fkey, finode) = Self::lookup(&t, &io, from)?
            .ok_or_else(|| Error::InvalidArgument("cannot rename the root directory".into()))?;
        let tkey = Self::new_key(&t, &io, to)?;
        if fkey == tkey {
            return Ok(());
        }
        // A directory cannot move below itself.
        if finode.kind == FileType::Dir {
            let mut p = tkey.parent;
            let mut depth = 0;
            while p != ROOT_INO {
                if p == finode.ino {
                    return Err(Error::InvalidArgument(format!(
                        "cannot move {from} inside itself"
                    )));
                }
                p = parent_of(&t.files, &io, p)?;
                depth += 1;
                if depth > path::MAX_DEPTH {
                    return Err(Error::corrupt("directory chain too deep"));
                }
            }
        }
        // Refuse before changing anything: a failed rename leaves no trace.
        self.reserve_check(&mut t, 8)?;
        if let Some(existing) = t.files.get(&io, &tkey)? {
            let count = Self::one_less(t.inode_count)?;
            let existing = t
                .inodes
                .get(&existing.ino)
                .map(|s| s.inode)
                .unwrap_or(existing);
            match (finode.kind, existing.kind) {
                (FileType::File, FileType::Dir) => return Err(Error::IsADirectory(to.to_string())),
                (FileType::Dir, FileType::File) => {
                    return Err(Error::NotADirectory(to.to_string()))
                }
                (FileType::Dir, FileType::Dir)
                    if !list_dir(&t.files, &io, existing.ino)?.is_empty() =>
                {
                    return Err(Error::DirectoryNotEmpty(to.to_string()))
                }
                _ => {}
            }
            self.free_inode_data(&mut t, &io, existing)?;
            t.handles.remove(&existing.ino);
            t.inode_count = count;
        }
        self.reserve_check(&mut t, 8)?;
        let rec = t
            .files
            .remove(&io, &fkey)?
            .ok_or_else(|| Error::NotFound(from.to_string()))?;
        t.files.insert(&io, tkey.clone(), rec)?;
        Self::drain_freed(&mut t, &io.layout)?;
        if let Some(st) = t.inodes.get_mut(&finode.ino) {
            st.key = tkey.clone();
        }
        if let Some(k) = t.handles.get_mut(&finode.ino) {
            k.0 = tkey;
        }
        t.changed = true;
        Ok(())
    }

    /// The inode count after removing one (the count comes from the root
    /// slot, so zero with an entry to remove is damage).
    pub(crate) fn one_less(count: u64) -> Result<u64> {
        count
            .checked_sub(1)
            .ok_or_else(|| Error::corrupt("root counts no inodes, yet one is being removed"))
    }
}

/// Write encoded blocks sorted by address, merging adjacent ones into single
/// requests, handed to the device as one batch.
pub(crate) fn meta_of(i: &Inode) -> Metadata {
    Metadata {
        ino: i.ino,
        kind: i.kind,
        size: i.size,
        mtime_ns: i.mtime_ns,
        mode: i.mode,
        owner: i.owner,
    }
}

/// Resolve path `p` in the file table `files`: its key and inode, or None
/// for the root. `current` maps an inode to its up-to-date version (the
/// transaction's changes not yet in the table).
pub(crate) fn resolve(
    files: &Tree<Files>,
    io: &NodeIo,
    p: &str,
    current: &dyn Fn(Inode) -> Inode,
) -> Result<Option<(EntryKey, Inode)>> {
    let comps = path::components(p)?;
    let mut parent = ROOT_INO;
    let mut found = None;
    for (i, c) in comps.iter().enumerate() {
        let key = EntryKey {
            parent,
            name: (*c).to_string(),
        };
        let ino = current(
            files
                .get(io, &key)?
                .ok_or_else(|| Error::NotFound(p.to_string()))?,
        );
        if i + 1 < comps.len() && ino.kind != FileType::Dir {
            return Err(Error::NotADirectory(p.to_string()));
        }
        parent = ino.ino;
        found = Some((key, ino));
    }
    Ok(found)
}

/// Entries of directory `dir` in `files`.
pub(crate) fn list_dir(files: &Tree<Files>, io: &NodeIo, dir: u64) -> Result<Vec<DirEntry>> {
    let mut v = Vec::new();
    let start = EntryKey {
        parent: dir,
        name: String::new(),
    };
    files.scan(io, Some(&start), &mut |k, i| {
        if k.parent != dir {
            return Ok(false);
        }
        v.push(DirEntry {
            name: k.name.clone(),
            meta: meta_of(i),
        });
        Ok(true)
    })?;
    Ok(v)
}

/// Parent inode of directory `ino` (a scan: renames of directories are
/// rare, and this only runs to refuse moving a directory into itself).
pub(crate) fn parent_of(files: &Tree<Files>, io: &NodeIo, ino: u64) -> Result<u64> {
    let mut parent = None;
    files.scan(io, None, &mut |k, i| {
        if i.ino == ino {
            parent = Some(k.parent);
            return Ok(false);
        }
        Ok(true)
    })?;
    parent.ok_or_else(|| Error::corrupt(format!("directory {ino} has no entry")))
}
