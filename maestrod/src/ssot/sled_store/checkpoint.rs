//! Checkpoints: the whole tree in one checksummed file, taken while writes go
//! on. With the log records after it, a checkpoint rebuilds a store whose
//! sled directory will not open (`maestrod repair`, or automatically at start).
//!
//! A checkpoint at sequence `s` is fuzzy, like a database's: every log record
//! up to `s` was applied before the copy started, and records after it may or
//! may not be in the copy. Records are absolute puts and removes, so
//! replaying every record after `s` over the copy gives exactly the state the
//! log describes.
//!
//! File: `checkpoints/<seq, 16 hex digits>.ckpt`, written as `.tmp`, synced and
//! renamed: `MAGIC`, `seq: u64 LE`, then frames `[len: u32 LE][crc32: u32 LE]
//! [postcard Entry]`, the last one `End` with the number of entries.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tracing::{error, info};

use super::wal::{self, sync_dir};
use crate::ssot::store::StoreError;

const MAGIC: &[u8; 8] = b"MSTRCKP1";
/// Checkpoints kept: the newest, and one before it in case the newest is damaged.
pub(super) const KEEP: usize = 2;

#[derive(Serialize, Deserialize)]
enum Entry {
    Kv(ByteBuf, ByteBuf),
    End { count: u64 },
}

fn io(what: &str, path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Backend(format!("checkpoint: cannot {what} {}: {error}", path.display()))
}

fn damaged(path: &Path, why: &str) -> StoreError {
    StoreError::Backend(format!("checkpoint {} is damaged: {why}", path.display()))
}

/// The checkpoints in `dir`, oldest first.
pub(super) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    wal::numbered_files(dir, ".ckpt")
}

/// Writes a checkpoint of `tree` at log sequence `seq` (every record up to
/// `seq` is applied). Returns its path and size.
pub(super) fn write(dir: &Path, tree: &sled::Tree, seq: u64) -> Result<(PathBuf, u64), StoreError> {
    wal::create_durably(dir)?;
    let path = dir.join(format!("{seq:016x}.ckpt"));
    let tmp = dir.join(format!("{seq:016x}.ckpt.tmp"));
    let file = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut frame = Vec::new();
    let mut put = |out: &mut BufWriter<File>, entry: &Entry| -> Result<(), StoreError> {
        frame.clear();
        frame.extend_from_slice(&[0; 8]);
        let mut bytes = postcard::to_extend(entry, std::mem::take(&mut frame)).expect("postcard encodes entries");
        let len = (bytes.len() - 8) as u32;
        let crc = crc32fast::hash(&bytes[8..]);
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        out.write_all(&bytes).map_err(|e| io("write", &tmp, e))?;
        frame = bytes;
        Ok(())
    };
    out.write_all(MAGIC).and_then(|()| out.write_all(&seq.to_le_bytes())).map_err(|e| io("write", &tmp, e))?;
    let mut count = 0u64;
    for item in tree.iter() {
        let (key, value) = item?;
        put(&mut out, &Entry::Kv(ByteBuf::from(key.to_vec()), ByteBuf::from(value.to_vec())))?;
        count += 1;
    }
    put(&mut out, &Entry::End { count })?;
    let file = out.into_inner().map_err(|e| io("write", &tmp, e.into_error()))?;
    file.sync_all().map_err(|e| io("sync", &tmp, e))?;
    let size = file.metadata().map_err(|e| io("stat", &tmp, e))?.len();
    drop(file);
    std::fs::rename(&tmp, &path).map_err(|e| io("rename", &tmp, e))?;
    sync_dir(dir)?;
    Ok((path, size))
}

/// Takes each entry of a checkpoint being read.
type EachEntry<'a> = &'a mut dyn FnMut(Vec<u8>, Vec<u8>) -> Result<(), StoreError>;

/// Reads a checkpoint through, handing each entry to `each` (if given);
/// returns its sequence number and entry count. Any damage is an error.
fn read(path: &Path, mut each: Option<EachEntry<'_>>) -> Result<(u64, u64), StoreError> {
    let file = File::open(path).map_err(|e| io("open", path, e))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut head = [0u8; 16];
    input.read_exact(&mut head).map_err(|_| damaged(path, "no header"))?;
    if &head[..8] != MAGIC {
        return Err(damaged(path, "not a checkpoint"));
    }
    let seq = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    let mut count = 0u64;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 8];
        input.read_exact(&mut header).map_err(|_| damaged(path, "it ends before its last entry"))?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        payload.resize(len, 0);
        input.read_exact(&mut payload).map_err(|_| damaged(path, "an entry is cut short"))?;
        if crc32fast::hash(&payload) != crc {
            return Err(damaged(path, "an entry fails its checksum"));
        }
        match postcard::from_bytes::<Entry>(&payload).map_err(|_| damaged(path, "an entry does not decode"))? {
            Entry::Kv(key, value) => {
                if let Some(each) = each.as_mut() {
                    each(key.into_vec(), value.into_vec())?;
                }
                count += 1;
            }
            Entry::End { count: written } if written == count => return Ok((seq, count)),
            Entry::End { .. } => return Err(damaged(path, "entries are missing")),
        }
    }
}

/// Checks a checkpoint end to end without loading it.
pub(super) fn verify(path: &Path) -> Result<(u64, u64), StoreError> {
    read(path, None)
}

/// Loads a checkpoint into an empty tree; returns its sequence number and
/// entry count.
pub(super) fn load(path: &Path, tree: &sled::Tree) -> Result<(u64, u64), StoreError> {
    let mut batch = sled::Batch::default();
    let mut pending = 0;
    let mut each = |key: Vec<u8>, value: Vec<u8>| -> Result<(), StoreError> {
        batch.insert(key, value);
        pending += 1;
        if pending == 10_000 {
            tree.apply_batch(std::mem::take(&mut batch))?;
            pending = 0;
        }
        Ok(())
    };
    let read = read(path, Some(&mut each))?;
    tree.apply_batch(batch)?;
    Ok(read)
}

/// Removes all but the newest `KEEP` checkpoints (and stray `.tmp` files of
/// interrupted ones); returns the oldest sequence number kept.
pub(super) fn prune(dir: &Path) -> Result<Option<u64>, StoreError> {
    let all = list(dir)?;
    let keep_from = all.len().saturating_sub(KEEP);
    for (_, path) in &all[..keep_from] {
        std::fs::remove_file(path).map_err(|e| io("remove", path, e))?;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(|n| n.ends_with(".ckpt.tmp")) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(all.get(keep_from).map(|(seq, _)| *seq))
}

/// When to take the next checkpoint, and whether one is being taken. A
/// checkpoint starts once the log has grown by as much as the last
/// checkpoint's size (at least `min_bytes`), so writing them costs a bounded
/// share of the write bandwidth however large the store grows.
pub(super) struct Checkpoints {
    dir: PathBuf,
    wal_dir: PathBuf,
    min_bytes: u64,
    since: u64,
    last_size: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
}

impl Checkpoints {
    pub(super) fn new(dir: PathBuf, wal_dir: PathBuf, min_bytes: u64, last_size: u64) -> Self {
        Self {
            dir,
            wal_dir,
            min_bytes,
            since: 0,
            last_size: Arc::new(AtomicU64::new(last_size)),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether a checkpoint is being written (the sweep waits: a copy taken
    /// while old history is removed could keep an old value without the delete
    /// that followed it).
    pub(super) fn busy(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Counts `bytes` more of log up to record `seq` (applied to `tree`), and
    /// starts a checkpoint in the background when it is time.
    pub(super) fn wrote(&mut self, bytes: u64, seq: u64, tree: &sled::Tree) {
        self.since += bytes;
        if self.since < self.min_bytes.max(self.last_size.load(Ordering::Relaxed))
            || self.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.since = 0;
        let (dir, wal_dir, tree) = (self.dir.clone(), self.wal_dir.clone(), tree.clone());
        let (last_size, running) = (self.last_size.clone(), self.running.clone());
        let spawned = std::thread::Builder::new().name("ssot-checkpoint".into()).spawn(move || {
            let _span = tracing::info_span!("checkpoint", seq).entered();
            let started = std::time::Instant::now();
            match take(&dir, &wal_dir, &tree, seq) {
                Ok((size, removed)) => {
                    last_size.store(size, Ordering::Relaxed);
                    info!(seq, bytes = size, log_segments_removed = removed, took = ?started.elapsed(), "checkpoint written");
                }
                Err(error) => error!(%error, "checkpoint failed; the log is kept until one succeeds"),
            }
            running.store(false, Ordering::Release);
        });
        if let Err(error) = spawned {
            error!(%error, "cannot start a checkpoint");
            self.running.store(false, Ordering::Release);
        }
    }
}

/// Writes a checkpoint at `seq`, then drops what it makes unnecessary: older
/// checkpoints beyond `KEEP`, and log segments only those needed. Returns the
/// checkpoint's size and how many log segments went.
pub(super) fn take(dir: &Path, wal_dir: &Path, tree: &sled::Tree, seq: u64) -> Result<(u64, usize), StoreError> {
    let (_, size) = write(dir, tree, seq)?;
    fail::fail_point!("checkpoint-written", |_| super::crash());
    // The tree must hold every record the removed segments held before they go.
    tree.flush()?;
    let removed = match prune(dir)? {
        Some(oldest) => wal::remove_before(wal_dir, oldest + 1)?,
        None => 0,
    };
    Ok((size, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_loads_back_and_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for n in 0..2_000u32 {
            tree.insert(n.to_be_bytes(), vec![7; (n % 50) as usize]).unwrap();
        }
        let (path, size) = write(dir.path(), &tree, 42).unwrap();
        assert!(size > 2_000 * 12);
        assert_eq!(verify(&path).unwrap(), (42, 2_000));
        let copy = sled::Config::new().temporary(true).open().unwrap().open_tree("t").unwrap();
        assert_eq!(load(&path, &copy).unwrap(), (42, 2_000));
        assert!(tree.iter().zip(copy.iter()).all(|(a, b)| a.unwrap() == b.unwrap()));
        assert_eq!(copy.len(), 2_000);

        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.clone();
        bytes[size as usize / 2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(verify(&path).unwrap_err().to_string().contains("checksum"));
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        assert!(verify(&path).is_err(), "cut short");
    }

    #[test]
    fn pruning_keeps_the_newest_two() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for seq in [3, 9, 27] {
            write(dir.path(), &tree, seq).unwrap();
        }
        std::fs::write(dir.path().join("0000000000000030.ckpt.tmp"), b"half").unwrap();
        assert_eq!(prune(dir.path()).unwrap(), Some(9));
        assert_eq!(list(dir.path()).unwrap().iter().map(|c| c.0).collect::<Vec<_>>(), [9, 27]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "the interrupted one is gone");
    }
}
