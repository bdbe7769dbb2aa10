//! A filesystem that loses what was not synced, for power-cut tests (the
//! idea of LazyFS, in memory, through FUSE).
//!
//! Every write reaches the file at once (as the page cache has it), and is
//! remembered until an `fsync`/`fdatasync` of that file makes it durable.
//! Names work the same way: a create, rename or unlink changes the directory
//! at once and is durable only once the directory itself is synced. A
//! [`LossyFs::power_cut`] then takes every file back to its durable content
//! plus a prefix of the writes made since (the page cache may have written
//! some back, in order; the last one kept may be torn), and every directory
//! back to its durable names. Files a durable name points at keep their
//! content even if they were unlinked since.
//!
//! Mounting needs root and `/dev/fuse`. The mount must be dropped (unmounted)
//! before a power cut and mounted again after it, so that the kernel keeps
//! no cached pages of the content that was lost.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// How a write since the last sync can be taken back: the file's length
/// before it, where it wrote and how much, and the bytes it covered that
/// existed then.
struct Undo {
    len: usize,
    offset: usize,
    written: usize,
    old: Vec<u8>,
}

impl Undo {
    /// The undo of what `self` wrote past its first `reached` bytes (the
    /// write torn there).
    fn past(&self, reached: usize) -> Undo {
        let offset = self.offset + reached;
        Undo {
            len: self.len.max(offset),
            offset,
            written: self.written - reached,
            old: self.old.get(reached..).map(<[u8]>::to_vec).unwrap_or_default(),
        }
    }
}

enum Kind {
    File { data: Vec<u8>, unsynced: Vec<Undo> },
    Dir { names: BTreeMap<OsString, u64>, durable: BTreeMap<OsString, u64> },
}

struct Node {
    kind: Kind,
    mode: u16,
    mtime: SystemTime,
}

struct State {
    nodes: HashMap<u64, Node>,
    next: u64,
    /// Syncs served.
    syncs: u64,
}

/// What a power cut took.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lost {
    /// Writes since the last sync of their file that were taken back (in whole or in part).
    pub writes: u64,
    /// Names created, renamed or removed since their directory's last sync that went back.
    pub names: u64,
}

/// The filesystem; clones share it (one for each mount).
#[derive(Clone)]
pub struct LossyFs(Arc<Mutex<State>>);

const ROOT: u64 = 1;
const TTL: Duration = Duration::ZERO;

impl Default for LossyFs {
    fn default() -> Self {
        let root = Node {
            kind: Kind::Dir { names: BTreeMap::new(), durable: BTreeMap::new() },
            mode: 0o755,
            mtime: SystemTime::now(),
        };
        LossyFs(Arc::new(Mutex::new(State { nodes: HashMap::from([(ROOT, root)]), next: ROOT + 1, syncs: 0 })))
    }
}

impl LossyFs {
    /// Mounts the filesystem at `at` (an empty directory) until the returned
    /// session is dropped.
    pub fn mount(&self, at: &Path) -> std::io::Result<fuser::BackgroundSession> {
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("lossyfs".into())];
        fuser::spawn_mount(self.clone(), at, &config)
    }

    /// Whether this machine can mount it (root, `/dev/fuse`).
    pub fn available() -> bool {
        nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists()
    }

    /// Syncs served so far (to show a test did sync).
    pub fn syncs(&self) -> u64 {
        self.0.lock().unwrap().syncs
    }

    /// The power cut: every file keeps its durable content and the first
    /// `keep(file's unsynced writes)` of its later writes, the last of them
    /// cut to `torn(its length)` bytes; every directory its durable names.
    pub fn power_cut(&self, mut keep: impl FnMut(usize) -> usize, mut torn: impl FnMut(usize) -> usize) -> Lost {
        let mut state = self.0.lock().unwrap();
        let mut lost = Lost::default();
        let mut inodes: Vec<u64> = state.nodes.keys().copied().collect();
        inodes.sort_unstable();
        for ino in inodes {
            let node = state.nodes.get_mut(&ino).expect("listed");
            match &mut node.kind {
                Kind::File { data, unsynced } => {
                    let kept = keep(unsynced.len()).min(unsynced.len());
                    let mut undone = unsynced.split_off(kept);
                    // The last write kept may be torn: only its first bytes reached the disk.
                    if let Some(last) = unsynced.last() {
                        let reached = torn(last.written).min(last.written);
                        if reached < last.written {
                            undone.insert(0, last.past(reached));
                        }
                    }
                    lost.writes += undone.len() as u64;
                    for undo in undone.iter().rev() {
                        restore(data, undo);
                    }
                    unsynced.clear();
                }
                Kind::Dir { names, durable } => {
                    lost.names += names.iter().filter(|(name, ino)| durable.get(*name) != Some(ino)).count() as u64
                        + durable.keys().filter(|name| !names.contains_key(*name)).count() as u64;
                    *names = durable.clone();
                }
            }
        }
        lost
    }
}

fn restore(data: &mut Vec<u8>, undo: &Undo) {
    let end = undo.offset + undo.old.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[undo.offset..end].copy_from_slice(&undo.old);
    data.resize(undo.len, 0);
}

impl State {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.nodes.get(&ino)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::File { data, .. } => (FileType::RegularFile, data.len() as u64, 1),
            Kind::Dir { .. } => (FileType::Directory, 0, 2),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm: node.mode,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn names(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::Dir { names, .. }) => Ok(names),
            Some(Kind::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn make(&mut self, parent: u64, name: &OsStr, kind: Kind, mode: u32) -> Result<FileAttr, Errno> {
        if self.names(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, Node { kind, mode: (mode & 0o7777) as u16, mtime: SystemTime::now() });
        self.names(parent)?.insert(name.to_owned(), ino);
        Ok(self.attr(ino).expect("just made"))
    }

    fn file(&mut self, ino: u64) -> Result<(&mut Vec<u8>, &mut Vec<Undo>), Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File { data, unsynced }) => Ok((data, unsynced)),
            Some(Kind::Dir { .. }) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn write(&mut self, ino: u64, offset: usize, bytes: &[u8]) -> Result<(), Errno> {
        let (data, unsynced) = self.file(ino)?;
        let end = offset + bytes.len();
        let old = data.get(offset..end.min(data.len())).map(<[u8]>::to_vec).unwrap_or_default();
        unsynced.push(Undo { len: data.len(), offset, written: bytes.len(), old });
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset..end].copy_from_slice(bytes);
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.mtime = SystemTime::now();
        }
        Ok(())
    }

    fn truncate(&mut self, ino: u64, len: usize) -> Result<(), Errno> {
        let (data, unsynced) = self.file(ino)?;
        let old = data.get(len..).map(<[u8]>::to_vec).unwrap_or_default();
        unsynced.push(Undo { len: data.len(), offset: len.min(data.len()), written: 0, old });
        data.resize(len, 0);
        Ok(())
    }
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.0.lock().unwrap();
        match state.names(parent.0).map(|names| names.get(name).copied()) {
            Ok(Some(ino)) => match state.attr(ino) {
                Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            Ok(None) => reply.error(Errno::ENOENT),
            Err(errno) => reply.error(errno),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.lock().unwrap().attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.0.lock().unwrap();
        if let Some(size) = size
            && let Err(errno) = state.truncate(ino.0, size as usize)
        {
            return reply.error(errno);
        }
        let Some(node) = state.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(mode) = mode {
            node.mode = (mode & 0o7777) as u16;
        }
        match mtime {
            Some(TimeOrNow::SpecificTime(time)) => node.mtime = time,
            Some(TimeOrNow::Now) => node.mtime = SystemTime::now(),
            None => {}
        }
        let attr = state.attr(ino.0).expect("exists");
        reply.attr(&TTL, &attr);
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let dir = Kind::Dir { names: BTreeMap::new(), durable: BTreeMap::new() };
        match self.0.lock().unwrap().make(parent.0, name, dir, mode & !umask) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let file = Kind::File { data: Vec::new(), unsynced: Vec::new() };
        match self.0.lock().unwrap().make(parent.0, name, file, mode & !umask) {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.0.lock().unwrap();
        match state.names(parent.0).map(|names| names.remove(name)) {
            Ok(Some(_)) => reply.ok(),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(errno) => reply.error(errno),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.0.lock().unwrap();
        let ino = match state.names(parent.0).map(|names| names.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(errno) => return reply.error(errno),
        };
        match state.names(ino) {
            Ok(names) if !names.is_empty() => return reply.error(Errno::ENOTEMPTY),
            Ok(_) => {}
            Err(errno) => return reply.error(errno),
        }
        state.names(parent.0).expect("a directory").remove(name);
        reply.ok();
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
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let mut state = self.0.lock().unwrap();
        let ino = match state.names(parent.0).map(|names| names.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(errno) => return reply.error(errno),
        };
        let replaced = match state.names(newparent.0) {
            Ok(names) => names.get(newname).copied(),
            Err(errno) => return reply.error(errno),
        };
        if let Some(target) = replaced
            && target != ino
        {
            let target_is_dir = matches!(state.nodes.get(&target).map(|n| &n.kind), Some(Kind::Dir { .. }));
            let source_is_dir = matches!(state.nodes.get(&ino).map(|n| &n.kind), Some(Kind::Dir { .. }));
            match (source_is_dir, target_is_dir) {
                (false, true) => return reply.error(Errno::EISDIR),
                (true, false) => return reply.error(Errno::ENOTDIR),
                (true, true) if !state.names(target).expect("a directory").is_empty() => {
                    return reply.error(Errno::ENOTEMPTY);
                }
                _ => {}
            }
        }
        state.names(parent.0).expect("a directory").remove(name);
        state.names(newparent.0).expect("a directory").insert(newname.to_owned(), ino);
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.0.lock().unwrap().nodes.contains_key(&ino.0) {
            true => reply.opened(FileHandle(0), FopenFlags::empty()),
            false => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.0.lock().unwrap();
        match state.file(ino.0) {
            Ok((data, _)) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.0.lock().unwrap().write(ino.0, offset as usize, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.0.lock().unwrap();
        state.syncs += 1;
        match state.file(ino.0) {
            Ok((_, unsynced)) => {
                unsynced.clear();
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut state = self.0.lock().unwrap();
        let names = match state.names(ino.0) {
            Ok(names) => names.clone(),
            Err(errno) => return reply.error(errno),
        };
        let mut entries =
            vec![(ino.0, FileType::Directory, OsString::from(".")), (ROOT, FileType::Directory, "..".into())];
        for (name, child) in names {
            let kind = match state.nodes.get(&child).map(|n| &n.kind) {
                Some(Kind::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            entries.push((child, kind, name));
        }
        for (index, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.0.lock().unwrap();
        state.syncs += 1;
        match state.nodes.get_mut(&ino.0).map(|n| &mut n.kind) {
            Some(Kind::Dir { names, durable }) => {
                *durable = names.clone();
                reply.ok();
            }
            Some(Kind::File { .. }) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}
