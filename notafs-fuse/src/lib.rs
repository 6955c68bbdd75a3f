//! Mount a notafs filesystem through FUSE, to look at it (and, with `--rw`,
//! change it) with ordinary tools.
//!
//! notafs-core is path-based; FUSE is inode-based. notafs inode numbers are
//! unique and never reused, and the root is inode 1 as in FUSE, so FUSE node
//! ids *are* notafs inode numbers. What the kernel gives us is an inode
//! number; what the core wants is a path. [`NodeTable`] keeps, for every
//! inode the kernel currently knows (looked up and not yet forgotten), its
//! parent and name, so a path is a walk to the root. The table is bounded by
//! what the kernel holds: a node leaves it when the kernel forgets it and no
//! remembered node has it as parent.
//!
//! Read-only mounts serve a [`Snapshot`] of one generation (the newest, or
//! the one asked for). Read-write mounts go through the core transaction and
//! commit on `fsync`/`fsyncdir`, on the close of a written file, on every
//! namespace change, every `commit_interval`, and at unmount.
//!
//! Both serve `.generations/<G>/` (see [`GENERATIONS_DIR`]): every retained
//! generation, read-only, through a [`Snapshot`] made per request (it reads
//! nothing) or held by an open file.
#![deny(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use notafs_core::{DirEntry, Error, File, Fs, Metadata, Snapshot, SnapshotFile, ROOT_INO};
use tracing::{debug, warn};

mod mount;
pub use mount::{run, MountConfig};

/// Extended attribute naming the generation a mount shows.
pub const XATTR_GENERATION: &str = "user.notafs.generation";
/// Extended attribute naming the newest committed generation (changes with
/// every commit of a read-write mount).
pub const XATTR_COMMITTED: &str = "user.notafs.committed";

/// Name, at the mount's root, of the read-only view of every retained
/// generation: `.generations/<G>/path` is `path` as of generation `G`.
/// Hidden from the root's listing (so `ls -a`, `find`, `du`, `cp -a` and
/// `rsync` do not walk N copies of the tree) but reachable by name. An entry
/// of this name really present in the root (made by other tools) wins.
pub const GENERATIONS_DIR: &str = ".generations";

/// Inode numbers of the generation view: bit 63 set (notafs inode numbers
/// are allocated upwards from 1 and never get there), the low 22 bits of
/// the generation in bits 40..62 (at most 64 generations are retained at
/// once, so they cannot collide) and the notafs inode number in bits 0..39.
const GEN_BIT: u64 = 1 << 63;
const GEN_INO_BITS: u32 = 40;
const GEN_MASK: u64 = (1 << 22) - 1;
/// Inode of the `.generations` directory itself.
const GENS_INO: u64 = GEN_BIT;

fn gen_ino(g: u64, ino: u64) -> Result<u64, Errno> {
    if ino >= 1 << GEN_INO_BITS {
        return Err(Errno::EOVERFLOW);
    }
    Ok(GEN_BIT | ((g & GEN_MASK) << GEN_INO_BITS) | ino)
}

/// What a path of the mount names.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// A path of the tree being served.
    Live(&'a str),
    /// The `.generations` directory.
    Gens,
    /// `sub` (possibly "", the root) in generation `G`.
    Gen(u64, &'a str),
    /// Under `.generations`, a name that is not a generation number.
    Missing,
}

/// Map a core error to the errno FUSE should return.
pub fn errno_of(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

/// Largest read served in one request (the kernel asks for at most
/// max_read / max_pages; this only bounds the per-thread buffer).
const MAX_READ_REQUEST: usize = 16 << 20;

/// Deepest directory chain accepted when building a path (core allows 64).
/// (Two more for `.generations/<G>/`.)
const MAX_DEPTH: usize = notafs_core::path::MAX_DEPTH + 3;

/// One inode the kernel knows about.
#[derive(Debug)]
struct Node {
    parent: u64,
    name: String,
    /// Outstanding kernel lookups (FUSE's nlookup).
    lookups: u64,
    /// Remembered nodes whose `parent` is this one.
    children: u64,
    /// False once removed or replaced: it no longer has a path.
    linked: bool,
}

/// The inode -> (parent, name) map. The root is implicit.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: HashMap<u64, Node>,
}

impl NodeTable {
    /// Number of remembered inodes (the root excluded).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Path of `ino` ("" for the root), or ENOENT if it is unknown or
    /// unlinked.
    pub fn path(&self, ino: u64) -> Result<String, Errno> {
        let mut names: Vec<&str> = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let n = self.nodes.get(&cur).ok_or(Errno::ENOENT)?;
            if !n.linked {
                return Err(Errno::ENOENT);
            }
            names.push(&n.name);
            cur = n.parent;
            if names.len() > MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
        }
        names.reverse();
        Ok(names.join("/"))
    }

    /// Parent of `ino` (the root is its own parent).
    pub fn parent(&self, ino: u64) -> u64 {
        self.nodes.get(&ino).map_or(ROOT_INO, |n| n.parent)
    }

    /// Record one kernel lookup of `ino` as `name` in `parent`.
    pub fn looked_up(&mut self, ino: u64, parent: u64, name: &str) {
        if ino == ROOT_INO {
            return;
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups += 1;
            // It may have moved since we last saw it.
            self.moved(ino, parent, name);
        } else {
            self.nodes.insert(
                ino,
                Node {
                    parent,
                    name: name.to_string(),
                    lookups: 1,
                    children: 0,
                    linked: true,
                },
            );
            self.attach(parent);
        }
    }

    /// `ino` is now `name` in `parent`.
    pub fn moved(&mut self, ino: u64, parent: u64, name: &str) {
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        let old = n.parent;
        let was_linked = n.linked;
        n.parent = parent;
        n.name = name.to_string();
        n.linked = true;
        if old != parent || !was_linked {
            self.attach(parent);
            if was_linked {
                self.detach(old);
            }
        }
    }

    /// `ino` was removed (or replaced by a rename): it has no path any more.
    pub fn unlinked(&mut self, ino: u64) {
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        if !n.linked {
            return;
        }
        n.linked = false;
        let parent = n.parent;
        self.detach(parent);
        self.collect(ino);
    }

    /// The kernel dropped `count` lookups of `ino`.
    pub fn forget(&mut self, ino: u64, count: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups = n.lookups.saturating_sub(count);
            self.collect(ino);
        }
    }

    fn attach(&mut self, parent: u64) {
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
    }

    fn detach(&mut self, parent: u64) {
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children = p.children.saturating_sub(1);
            self.collect(parent);
        }
    }

    /// Drop `ino` (and then its ancestors) once nothing refers to it.
    fn collect(&mut self, mut ino: u64) {
        loop {
            let Some(n) = self.nodes.get(&ino) else {
                return;
            };
            if n.lookups > 0 || n.children > 0 {
                return;
            }
            let (parent, linked) = (n.parent, n.linked);
            self.nodes.remove(&ino);
            if !linked {
                return;
            }
            match self.nodes.get_mut(&parent) {
                Some(p) => {
                    p.children = p.children.saturating_sub(1);
                    ino = parent;
                }
                None => return,
            }
        }
    }
}

/// What the mount serves.
enum Backend {
    /// One committed generation. The snapshot is leaked on purpose: it lives
    /// as long as the mount, and open files borrow it.
    Ro { fs: Fs, snap: &'static Snapshot },
    /// The transaction of a writable filesystem.
    Rw { fs: Fs },
}

/// An open file or directory.
enum Handle {
    Snap(Arc<SnapshotFile<'static>>),
    /// A file of `.generations/<G>/`: its snapshot (pinned while open) and
    /// its path in it.
    Gen(Arc<Snapshot>, String),
    File(File),
    Dir(Arc<Vec<DirItem>>),
}

/// A directory entry as handed to readdir.
struct DirItem {
    ino: u64,
    kind: FileType,
    name: String,
}

/// Settings of [`NotafsFuse`].
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// Owner reported for every file.
    pub uid: u32,
    pub gid: u32,
    /// How long the kernel may cache attributes and entries.
    pub ttl: Duration,
    /// Largest read/write request asked of the kernel.
    pub max_io: u32,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            uid: 0,
            gid: 0,
            ttl: Duration::from_secs(1),
            max_io: 1 << 20,
        }
    }
}

/// The FUSE filesystem: a notafs [`Fs`] (or a snapshot of it) behind the
/// [`fuser::Filesystem`] trait.
pub struct NotafsFuse {
    backend: Backend,
    opts: FuseOptions,
    /// Generation reported in FUSE entries: the one served (read-only) or
    /// the one committed at mount time (read-write; it must not change while
    /// the kernel holds an inode, or the kernel would mark it bad).
    generation: u64,
    block_size: u32,
    nodes: Mutex<NodeTable>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    name.to_str().ok_or(Errno::EINVAL)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn kind_of(m: &Metadata) -> FileType {
    if m.is_dir() {
        FileType::Directory
    } else {
        FileType::RegularFile
    }
}

impl NotafsFuse {
    /// Serve `fs`. Read-only (a snapshot of its committed generation) when
    /// `fs.is_read_only()`, else read-write.
    pub fn new(fs: Fs, opts: FuseOptions) -> NotafsFuse {
        let block_size = fs.superblock().block_size;
        let generation = fs.generation();
        let backend = if fs.is_read_only() {
            let snap: &'static Snapshot = Box::leak(Box::new(fs.snapshot()));
            Backend::Ro { fs, snap }
        } else {
            Backend::Rw { fs }
        };
        NotafsFuse {
            backend,
            opts,
            generation,
            block_size,
            nodes: Mutex::new(NodeTable::default()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    /// The filesystem being served.
    pub fn fs(&self) -> &Fs {
        match &self.backend {
            Backend::Ro { fs, .. } | Backend::Rw { fs } => fs,
        }
    }

    /// Whether changes are refused.
    pub fn read_only(&self) -> bool {
        matches!(self.backend, Backend::Ro { .. })
    }

    /// Generation shown in FUSE entries (see the field).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of inodes currently remembered (for tests and logs).
    pub fn remembered_inodes(&self) -> usize {
        lock(&self.nodes).len()
    }

    fn rw(&self) -> Result<&Fs, Errno> {
        match &self.backend {
            Backend::Rw { fs } => Ok(fs),
            Backend::Ro { .. } => Err(Errno::EROFS),
        }
    }

    fn stat(&self, path: &str) -> Result<Metadata, Errno> {
        match &self.backend {
            Backend::Ro { snap, .. } => snap.stat(path),
            Backend::Rw { fs } => fs.stat(path),
        }
        .map_err(|e| errno_of(&e))
    }

    /// Metadata and allocated blocks (in filesystem blocks) of `path`.
    fn stat_blocks(&self, path: &str) -> Result<(Metadata, u64), Errno> {
        match &self.backend {
            Backend::Ro { snap, .. } => snap.stat_allocated(path),
            Backend::Rw { fs } => fs.stat_allocated(path),
        }
        .map_err(|e| errno_of(&e))
    }

    /// Where `path` leads: the served tree or the generation view.
    fn route<'a>(&self, path: &'a str) -> Route<'a> {
        let Some(rest) = path.strip_prefix(GENERATIONS_DIR) else {
            return Route::Live(path);
        };
        let sub = match rest.strip_prefix('/') {
            None if rest.is_empty() => None,
            None => return Route::Live(path),
            Some(sub) => Some(sub),
        };
        // A real entry of that name in the root wins.
        if self.stat(GENERATIONS_DIR).is_ok() {
            return Route::Live(path);
        }
        let Some(sub) = sub else {
            return Route::Gens;
        };
        let (g, inner) = sub.split_once('/').unwrap_or((sub, ""));
        match g.parse::<u64>() {
            // Only the canonical spelling ("7", not "07" or "+7").
            Ok(n) if n.to_string() == g => Route::Gen(n, inner),
            _ => Route::Missing,
        }
    }

    /// A snapshot of retained generation `g` (ENOENT if not retained).
    /// Not cached: making one reads nothing, and holding it would hold
    /// back the space of that generation.
    fn gen_snap(&self, g: u64) -> Result<Arc<Snapshot>, Errno> {
        match self.fs().snapshot_at(g) {
            Ok(s) => Ok(Arc::new(s)),
            Err(Error::NoSuchGeneration(_)) => Err(Errno::ENOENT),
            Err(e) => Err(errno_of(&e)),
        }
    }

    /// Attributes of what `path` names, with the inode number the kernel
    /// knows it by.
    fn stat_route(&self, path: &str) -> Result<FileAttr, Errno> {
        match self.route(path) {
            Route::Live(p) => {
                let (m, blocks) = self.stat_blocks(p)?;
                Ok(self.attr(&m, blocks))
            }
            Route::Gens => {
                let m = Metadata {
                    ino: GENS_INO,
                    kind: notafs_core::FileType::Dir,
                    size: 0,
                    mtime_ns: self.fs().snapshot().time_ns(),
                    mode: Some(0o555),
                    owner: None,
                };
                Ok(self.attr(&m, 0))
            }
            Route::Missing => Err(Errno::ENOENT),
            Route::Gen(g, sub) => {
                let snap = self.gen_snap(g)?;
                let (mut m, blocks) = snap.stat_allocated(sub).map_err(|e| errno_of(&e))?;
                m.ino = gen_ino(g, m.ino)?;
                Ok(self.attr(&m, blocks))
            }
        }
    }

    /// EROFS for a change at `ino` or in the generation view.
    fn writable_at(&self, ino: u64) -> Result<(), Errno> {
        if ino & GEN_BIT != 0 {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    /// EROFS when `path` (to be created, removed or renamed) is in the
    /// generation view.
    fn writable_path(&self, path: &str) -> Result<(), Errno> {
        match self.route(path) {
            Route::Live(_) => Ok(()),
            _ => Err(Errno::EROFS),
        }
    }

    fn list(&self, ino: u64, path: &str) -> Result<Vec<DirEntry>, Errno> {
        match &self.backend {
            Backend::Ro { snap, .. } => {
                // Make sure it is a directory (read_dir_ino would list
                // nothing for a file).
                let m = snap.stat(path).map_err(|e| errno_of(&e))?;
                if !m.is_dir() {
                    return Err(Errno::ENOTDIR);
                }
                snap.read_dir_ino(ino)
            }
            Backend::Rw { fs } => fs.read_dir(path),
        }
        .map_err(|e| errno_of(&e))
    }

    /// Attributes of `m`, whose data occupies `blocks` filesystem blocks
    /// (st_blocks counts 512-byte units of what is allocated: holes are
    /// not counted, as du and ls -s expect).
    fn attr(&self, m: &Metadata, blocks: u64) -> FileAttr {
        let t = UNIX_EPOCH + Duration::from_nanos(m.mtime_ns);
        let dir = m.is_dir();
        FileAttr {
            ino: INodeNo(m.ino),
            size: m.size,
            blocks: blocks.saturating_mul(self.block_size as u64) / 512,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: kind_of(m),
            perm: m.mode.unwrap_or(if dir { 0o755 } else { 0o644 }),
            nlink: if dir { 2 } else { 1 },
            uid: m.owner.map_or(self.opts.uid, |o| o.0),
            gid: m.owner.map_or(self.opts.gid, |o| o.1),
            rdev: 0,
            blksize: self.block_size,
            flags: 0,
        }
    }

    /// Path of `ino` and its metadata, checking the path still names it.
    fn resolve(&self, nodes: &NodeTable, ino: u64) -> Result<(String, Metadata), Errno> {
        let path = nodes.path(ino)?;
        let m = self.stat(&path)?;
        if m.ino != ino {
            return Err(Errno::ENOENT);
        }
        Ok((path, m))
    }

    /// Attributes of `ino`, checking its path still names it.
    fn resolve_attr(&self, nodes: &NodeTable, ino: u64) -> Result<FileAttr, Errno> {
        let path = nodes.path(ino)?;
        let a = self.stat_route(&path)?;
        if a.ino.0 != ino {
            return Err(Errno::ENOENT);
        }
        Ok(a)
    }

    /// Attributes of an open read-write file.
    fn file_attr(&self, f: &File) -> Result<FileAttr, Errno> {
        let m = f.metadata().map_err(|e| errno_of(&e))?;
        let blocks = f.allocated_blocks().map_err(|e| errno_of(&e))?;
        Ok(self.attr(&m, blocks))
    }

    fn new_fh(&self, h: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        FileHandle(fh)
    }

    fn commit(&self, why: &str) -> Result<(), Errno> {
        let fs = match &self.backend {
            Backend::Ro { .. } => return Ok(()),
            Backend::Rw { fs } => fs,
        };
        if !fs.has_changes() {
            return Ok(());
        }
        match fs.commit() {
            Ok(g) => {
                debug!(generation = g, "committed ({why})");
                Ok(())
            }
            Err(e) => {
                warn!("commit ({why}) failed: {e}");
                Err(errno_of(&e))
            }
        }
    }

    /// Make a change durable before its system call returns (close of a
    /// written file, mkdir, unlink, rmdir, rename, chmod, truncate, ...).
    /// The kernel does not wait for the daemon at unmount (`umount` and
    /// `fusermount3 -u` return while it may still be working), and a FUSE
    /// mount cannot be unmounted while a file is open: so when every change
    /// is committed by the call that made it or by the close that ends it,
    /// an unmount that succeeds finds nothing left to commit.
    fn settle<T>(&self, why: &str, r: Result<T, Errno>) -> Result<T, Errno> {
        let v = r?;
        self.commit(why)?;
        Ok(v)
    }

    fn entry(&self, nodes: &mut NodeTable, parent: u64, name: &str, m: &Metadata) -> FileAttr {
        nodes.looked_up(m.ino, parent, name);
        self.attr(m, 0)
    }

    fn do_lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let name = name_str(name)?;
        let mut nodes = lock(&self.nodes);
        let dir = nodes.path(parent)?;
        let a = self.stat_route(&join(&dir, name))?;
        nodes.looked_up(a.ino.0, parent, name);
        Ok(a)
    }

    fn do_create(
        &self,
        parent: u64,
        name: &OsStr,
        dir: bool,
    ) -> Result<(FileAttr, Option<File>), Errno> {
        let fs = self.rw()?;
        self.writable_at(parent)?;
        let name = name_str(name)?;
        let mut nodes = lock(&self.nodes);
        let path = join(&nodes.path(parent)?, name);
        self.writable_path(&path)?;
        let file = if dir {
            fs.create_dir(&path).map_err(|e| errno_of(&e))?;
            None
        } else {
            Some(fs.create(&path).map_err(|e| errno_of(&e))?)
        };
        let m = self.stat(&path)?;
        Ok((self.entry(&mut nodes, parent, name, &m), file))
    }

    fn do_remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let fs = self.rw()?;
        self.writable_at(parent)?;
        let name = name_str(name)?;
        let mut nodes = lock(&self.nodes);
        let path = join(&nodes.path(parent)?, name);
        self.writable_path(&path)?;
        let m = self.stat(&path)?;
        match (dir, m.is_dir()) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        fs.remove(&path).map_err(|e| errno_of(&e))?;
        nodes.unlinked(m.ino);
        Ok(())
    }

    fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let fs = self.rw()?;
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        self.writable_at(parent)?;
        self.writable_at(newparent)?;
        let (name, newname) = (name_str(name)?, name_str(newname)?);
        let mut nodes = lock(&self.nodes);
        let from = join(&nodes.path(parent)?, name);
        let to = join(&nodes.path(newparent)?, newname);
        self.writable_path(&from)?;
        self.writable_path(&to)?;
        let src = self.stat(&from)?;
        let dst = match self.stat(&to) {
            Ok(m) => Some(m),
            Err(e) if e == Errno::ENOENT => None,
            Err(e) => return Err(e),
        };
        if let Some(d) = &dst {
            if d.ino == src.ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
        }
        fs.rename(&from, &to).map_err(|e| errno_of(&e))?;
        if let Some(d) = dst {
            nodes.unlinked(d.ino);
        }
        nodes.moved(src.ino, newparent, newname);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: u64,
        size: Option<u64>,
        fh: Option<FileHandle>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr, Errno> {
        self.writable_at(ino)?;
        let nodes = lock(&self.nodes);
        let (path, mut m) = self.resolve(&nodes, ino)?;
        // Permission bits, owner and a given modification time are stored
        // in the inode (chmod, chown, touch -d, cp -p, rsync -a, tar x).
        // Changing the owner to someone else needs root, as anywhere.
        let given_mtime = match mtime {
            Some(TimeOrNow::SpecificTime(t)) => Some(
                t.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
                    .unwrap_or(0),
            ),
            _ => None,
        };
        if mode.is_some() || uid.is_some() || gid.is_some() || given_mtime.is_some() {
            let fs = self.rw()?;
            if path.is_empty() || path == "/" {
                // The root directory has no inode to record them in.
                if mode.is_some() || uid.is_some() || gid.is_some() {
                    return Err(Errno::EPERM);
                }
            } else {
                let cur = m.owner.unwrap_or((self.opts.uid, self.opts.gid));
                let owner = if uid.is_some() || gid.is_some() {
                    let o = (uid.unwrap_or(cur.0), gid.unwrap_or(cur.1));
                    if o.0 != cur.0 && self.opts.uid != 0 {
                        return Err(Errno::EPERM);
                    }
                    Some(o)
                } else {
                    None
                };
                m = fs
                    .set_attrs(&path, mode, owner, given_mtime)
                    .map_err(|e| errno_of(&e))?;
            }
        }
        // The core sets the modification time on every write or size change:
        // "now" (touch) is a size change to the same size.
        let touch = matches!(mtime, Some(TimeOrNow::Now)) && m.is_file();
        let size = match size {
            Some(s) => s,
            None if touch => m.size,
            None => {
                let (m, blocks) = self.stat_blocks(&path)?;
                return Ok(self.attr(&m, blocks));
            }
        };
        let fs = self.rw()?;
        if m.is_dir() {
            return Err(Errno::EISDIR);
        }
        let held = fh.and_then(|fh| match lock(&self.handles).get(&fh.0) {
            Some(Handle::File(f)) => Some(f.clone()),
            _ => None,
        });
        let f = match held {
            Some(f) => f,
            None => fs.open_file(&path).map_err(|e| errno_of(&e))?,
        };
        f.set_len(size).map_err(|e| errno_of(&e))?;
        self.file_attr(&f)
    }

    fn do_open(&self, ino: u64, flags: OpenFlags) -> Result<(FileHandle, FopenFlags), Errno> {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let nodes = lock(&self.nodes);
        if ino & GEN_BIT != 0 {
            let path = nodes.path(ino)?;
            drop(nodes);
            let a = self.stat_route(&path)?;
            if a.ino.0 != ino {
                return Err(Errno::ENOENT);
            }
            if a.kind == FileType::Directory {
                return Err(Errno::EISDIR);
            }
            if write || flags.0 & libc::O_TRUNC != 0 {
                return Err(Errno::EROFS);
            }
            let Route::Gen(g, sub) = self.route(&path) else {
                return Err(Errno::ENOENT);
            };
            let snap = self.gen_snap(g)?;
            // A generation never changes: let the kernel keep its cache.
            return Ok((
                self.new_fh(Handle::Gen(snap, sub.to_string())),
                FopenFlags::FOPEN_KEEP_CACHE,
            ));
        }
        let (path, m) = self.resolve(&nodes, ino)?;
        if m.is_dir() {
            return Err(Errno::EISDIR);
        }
        match &self.backend {
            Backend::Ro { snap, .. } => {
                if write {
                    return Err(Errno::EROFS);
                }
                let f = snap.open(&path).map_err(|e| errno_of(&e))?;
                // A generation never changes: let the kernel keep its cache.
                Ok((
                    self.new_fh(Handle::Snap(Arc::new(f))),
                    FopenFlags::FOPEN_KEEP_CACHE,
                ))
            }
            Backend::Rw { fs } => {
                let f = fs.open_file(&path).map_err(|e| errno_of(&e))?;
                if flags.0 & libc::O_TRUNC != 0 && write {
                    f.set_len(0).map_err(|e| errno_of(&e))?;
                }
                Ok((self.new_fh(Handle::File(f)), FopenFlags::empty()))
            }
        }
    }

    /// Read into `buf` (its whole length); returns the count (short only at
    /// the end of the file).
    fn do_read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        enum R {
            S(Arc<SnapshotFile<'static>>),
            F(File),
            G(Arc<Snapshot>, String),
        }
        let r = match lock(&self.handles).get(&fh) {
            Some(Handle::Snap(s)) => R::S(s.clone()),
            Some(Handle::File(f)) => R::F(f.clone()),
            Some(Handle::Gen(s, p)) => R::G(s.clone(), p.clone()),
            Some(Handle::Dir(_)) => return Err(Errno::EISDIR),
            None => return Err(Errno::EBADF),
        };
        let gen_file = match &r {
            R::G(s, p) => Some(s.open(p).map_err(|e| errno_of(&e))?),
            _ => None,
        };
        let mut done = 0;
        while done < buf.len() {
            let off = offset + done as u64;
            let n = match (&r, &gen_file) {
                (_, Some(g)) => g.read_at(off, &mut buf[done..]),
                (R::S(s), _) => s.read_at(off, &mut buf[done..]),
                (R::F(f), _) => f.read_at(off, &mut buf[done..]),
                (R::G(..), None) => return Err(Errno::EBADF),
            }
            .map_err(|e| errno_of(&e))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    fn do_write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        self.rw()?;
        let f = match lock(&self.handles).get(&fh) {
            Some(Handle::File(f)) => f.clone(),
            Some(Handle::Dir(_)) => return Err(Errno::EISDIR),
            Some(Handle::Snap(_) | Handle::Gen(..)) => return Err(Errno::EBADF),
            None => return Err(Errno::EBADF),
        };
        f.write_at(offset, data).map_err(|e| errno_of(&e))?;
        Ok(data.len() as u32)
    }

    /// SEEK_DATA / SEEK_HOLE (the kernel answers the other whences
    /// itself): block granularity, holes are unwritten blocks.
    fn do_lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64, Errno> {
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(Errno::EINVAL),
        };
        let off = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
        enum H {
            S(Arc<SnapshotFile<'static>>),
            F(File),
            G(Arc<Snapshot>, String),
        }
        let h = match lock(&self.handles).get(&fh) {
            Some(Handle::Snap(s)) => H::S(s.clone()),
            Some(Handle::File(f)) => H::F(f.clone()),
            Some(Handle::Gen(s, p)) => H::G(s.clone(), p.clone()),
            Some(Handle::Dir(_)) => return Err(Errno::EINVAL),
            None => return Err(Errno::EBADF),
        };
        let r = match (&h, data) {
            (H::S(s), true) => s.next_data(off),
            (H::S(s), false) => s.next_hole(off),
            (H::F(f), true) => f.next_data(off),
            (H::F(f), false) => f.next_hole(off),
            (H::G(s, p), _) => s.open(p).and_then(|f| {
                if data {
                    f.next_data(off)
                } else {
                    f.next_hole(off)
                }
            }),
        }
        .map_err(|e| errno_of(&e))?;
        let o = r.ok_or(Errno::ENXIO)?;
        i64::try_from(o).map_err(|_| Errno::EOVERFLOW)
    }

    fn do_opendir(&self, ino: u64) -> Result<FileHandle, Errno> {
        let nodes = lock(&self.nodes);
        let path = nodes.path(ino)?;
        let parent = nodes.parent(ino);
        drop(nodes);
        let entries: Vec<DirItem> = match self.route(&path) {
            Route::Live(p) => self
                .list(ino, p)?
                .into_iter()
                .map(|e| DirItem {
                    ino: e.meta.ino,
                    kind: kind_of(&e.meta),
                    name: e.name,
                })
                .collect(),
            Route::Gens => {
                let mut gens = self.fs().generations();
                gens.sort_by_key(|i| i.generation);
                gens.into_iter()
                    .map(|i| {
                        Ok(DirItem {
                            ino: gen_ino(i.generation, ROOT_INO)?,
                            kind: FileType::Directory,
                            name: i.generation.to_string(),
                        })
                    })
                    .collect::<Result<_, Errno>>()?
            }
            Route::Missing => return Err(Errno::ENOENT),
            Route::Gen(g, sub) => {
                let snap = self.gen_snap(g)?;
                if !snap.stat(sub).map_err(|e| errno_of(&e))?.is_dir() {
                    return Err(Errno::ENOTDIR);
                }
                snap.read_dir(sub)
                    .map_err(|e| errno_of(&e))?
                    .into_iter()
                    .map(|e| {
                        Ok(DirItem {
                            ino: gen_ino(g, e.meta.ino)?,
                            kind: kind_of(&e.meta),
                            name: e.name,
                        })
                    })
                    .collect::<Result<_, Errno>>()?
            }
        };
        let mut items = Vec::with_capacity(entries.len() + 2);
        items.push(DirItem {
            ino,
            kind: FileType::Directory,
            name: ".".into(),
        });
        items.push(DirItem {
            ino: parent,
            kind: FileType::Directory,
            name: "..".into(),
        });
        items.extend(entries);
        Ok(self.new_fh(Handle::Dir(Arc::new(items))))
    }

    fn xattr_value(&self, name: &OsStr) -> Option<String> {
        match name.to_str()? {
            XATTR_GENERATION => Some(self.generation.to_string()),
            XATTR_COMMITTED => Some(self.fs().generation().to_string()),
            _ => None,
        }
    }

    /// Commit whatever is pending (used at unmount and by the periodic
    /// committer).
    pub fn commit_pending(&self, why: &str) -> Result<(), Errno> {
        self.commit(why)
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for NotafsFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(self.opts.max_io);
        let _ = config.set_max_readahead(self.opts.max_io);
        debug!(
            read_only = self.read_only(),
            generation = self.generation,
            "FUSE init"
        );
        Ok(())
    }

    fn destroy(&mut self) {
        let _ = self.commit("unmount");
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent.0, name) {
            Ok(a) => reply.entry(&self.opts.ttl, &a, Generation(self.generation)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.nodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // An open read-write file answers from its handle (it follows
        // renames and sees the transaction).
        if let Some(fh) = fh {
            let f = match lock(&self.handles).get(&fh.0) {
                Some(Handle::File(f)) => Some(f.clone()),
                _ => None,
            };
            if let Some(f) = f {
                return match self.file_attr(&f) {
                    Ok(a) => reply.attr(&self.opts.ttl, &a),
                    Err(e) => reply.error(e),
                };
            }
        }
        let nodes = lock(&self.nodes);
        match self.resolve_attr(&nodes, ino.0) {
            Ok(a) => reply.attr(&self.opts.ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if self.read_only() {
            return reply.error(Errno::EROFS);
        }
        let r = self.do_setattr(ino.0, size, fh, mode, uid, gid, mtime);
        match self.settle("setattr", r) {
            Ok(a) => reply.attr(&self.opts.ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if self.read_only() {
            return reply.error(Errno::EROFS);
        }
        if mode & libc::S_IFMT != libc::S_IFREG {
            // Only regular files and directories exist in notafs.
            return reply.error(Errno::EPERM);
        }
        let r = self.do_create(parent.0, name, false);
        match self.settle("mknod", r) {
            Ok((a, _)) => reply.entry(&self.opts.ttl, &a, Generation(self.generation)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.do_create(parent.0, name, true);
        match self.settle("mkdir", r) {
            Ok((a, _)) => reply.entry(&self.opts.ttl, &a, Generation(self.generation)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if mode & libc::S_IFMT != 0 && mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        match self.do_create(parent.0, name, false) {
            Ok((a, Some(f))) => {
                let fh = self.new_fh(Handle::File(f));
                reply.created(
                    &self.opts.ttl,
                    &a,
                    Generation(self.generation),
                    fh,
                    FopenFlags::empty(),
                )
            }
            Ok((_, None)) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.do_remove(parent.0, name, false);
        match self.settle("unlink", r) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.do_remove(parent.0, name, true);
        match self.settle("rmdir", r) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.do_rename(parent.0, name, newparent.0, newname, flags);
        match self.settle("rename", r) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino.0, flags) {
            Ok((fh, fl)) => reply.opened(fh, fl),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // One buffer per worker thread, reused: no allocation, zeroing or
        // page faults per request (the core fills every byte it returns,
        // holes included).
        thread_local! {
            static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let size = (size as usize).min(MAX_READ_REQUEST);
        READ_BUF.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < size {
                b.resize(size, 0);
            }
            match self.do_read(fh.0, offset, &mut b[..size]) {
                Ok(n) => reply.data(&b[..n]),
                Err(e) => reply.error(e),
            }
        })
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) commits what the file's writes changed (see `settle`):
        // after the last close, an unmount has nothing left to commit.
        match self.commit("close") {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.commit("fsync") {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.do_lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_opendir(ino.0) {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = match lock(&self.handles).get(&fh.0) {
            Some(Handle::Dir(d)) => d.clone(),
            Some(_) => return reply.error(Errno::ENOTDIR),
            None => return reply.error(Errno::EBADF),
        };
        for (i, it) in items.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(it.ino), (i + 1) as u64, it.kind, &it.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.commit("fsyncdir") {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let info = self.fs().info();
        let inodes = match &self.backend {
            Backend::Ro { snap, .. } => snap.inode_count(),
            Backend::Rw { .. } => info.inodes,
        };
        // Blocks held back for older generations are given back when space
        // runs out (the oldest generations go first): free and available.
        let bfree = info.free_blocks + info.pending_blocks;
        let bavail = if self.read_only() { 0 } else { bfree };
        // No inode table: any free block can hold a new file. Total =
        // used (inodes and the root) + free, so that df -i adds up.
        reply.statfs(
            info.block_count,
            bfree,
            bavail,
            inodes + 1 + bfree,
            bfree,
            info.block_size,
            notafs_core::path::MAX_NAME as u32,
            info.block_size,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if ino.0 != ROOT_INO {
            return reply.error(Errno::ENODATA);
        }
        match self.xattr_value(name) {
            Some(v) => reply_xattr(reply, size, v.as_bytes()),
            None => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut list = Vec::new();
        if ino.0 == ROOT_INO {
            for n in [XATTR_GENERATION, XATTR_COMMITTED] {
                list.extend_from_slice(n.as_bytes());
                list.push(0);
            }
        }
        reply_xattr(reply, size, &list);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        // Only regular files and directories exist in notafs.
        reply.error(if self.read_only() || self.writable_at(parent.0).is_err() {
            Errno::EROFS
        } else {
            Errno::EPERM
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let gen = self.writable_at(ino.0).is_err() || self.writable_at(newparent.0).is_err();
        reply.error(if self.read_only() || gen {
            Errno::EROFS
        } else {
            Errno::EPERM
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permissions are enforced by the kernel (default_permissions).
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_table_paths_follow_renames_and_forget() {
        let mut t = NodeTable::default();
        t.looked_up(2, ROOT_INO, "a");
        t.looked_up(3, 2, "b");
        t.looked_up(4, 3, "c");
        assert_eq!(t.path(4).unwrap(), "a/b/c");
        assert_eq!(t.path(ROOT_INO).unwrap(), "");
        // Moving a directory moves what is below it.
        t.moved(3, ROOT_INO, "x");
        assert_eq!(t.path(4).unwrap(), "x/c");
        // Forgetting the old parent drops it: nothing refers to it.
        t.forget(2, 1);
        assert_eq!(t.len(), 2);
        // A forgotten directory stays while a child is remembered.
        t.forget(3, 1);
        assert_eq!(t.path(4).unwrap(), "x/c");
        t.forget(4, 1);
        assert!(t.is_empty());
    }

    #[test]
    fn node_table_unlink_and_relookup() {
        let mut t = NodeTable::default();
        t.looked_up(2, ROOT_INO, "d");
        t.looked_up(5, 2, "f");
        t.looked_up(5, 2, "f");
        t.unlinked(5);
        assert_eq!(t.path(5), Err(Errno::ENOENT));
        assert_eq!(t.path(2).unwrap(), "d");
        t.forget(5, 2);
        t.forget(2, 1);
        assert!(t.is_empty());
        // Lookups of the same inode under a new name re-place it.
        t.looked_up(7, ROOT_INO, "p");
        t.looked_up(8, 7, "q");
        t.looked_up(8, ROOT_INO, "q2");
        assert_eq!(t.path(8).unwrap(), "q2");
        t.forget(7, 1);
        assert_eq!(t.len(), 1);
        t.forget(8, 2);
        assert!(t.is_empty());
    }
}
