//! The write-ahead log: the source of durability (etcd's design, WAL + backend).
//!
//! Every group commit is one record, appended and `fdatasync`ed before any
//! request in the group is answered; sled is written after that and flushed
//! in the background, and is rebuilt from the log when it is behind (or from
//! a checkpoint and the log when it cannot be opened at all).
//!
//! Segments are files `wal/<first seq, 16 hex digits>.wal` holding frames:
//!
//! ```text
//! [payload length: u32 LE][crc32 of payload: u32 LE][payload]
//! payload = [seq: u64 LE][postcard Vec<WalOp>]
//! ```
//!
//! Sequence numbers are consecutive across segments. Opening reads the
//! segments a replay needs and the last one whole: a frame in the last segment
//! that is short, fails its checksum or breaks the sequence is a torn write
//! (the process died in the middle of an append that nobody was told about)
//! and the log is cut there; the same in an earlier segment is corruption and
//! an error.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tracing::{info, warn};

use crate::ssot::store::StoreError;

/// One change of the tree: absolute, so replaying a record twice is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum WalOp {
    Put(ByteBuf, ByteBuf),
    Remove(ByteBuf),
}

impl WalOp {
    pub(super) fn put(key: Vec<u8>, value: Vec<u8>) -> Self {
        WalOp::Put(ByteBuf::from(key), ByteBuf::from(value))
    }

    pub(super) fn remove(key: Vec<u8>) -> Self {
        WalOp::Remove(ByteBuf::from(key))
    }
}

/// Applies log records to a sled batch.
pub(super) fn to_batch(ops: &[WalOp], batch: &mut sled::Batch) {
    for op in ops {
        match op {
            WalOp::Put(key, value) => batch.insert(key.as_slice(), value.as_slice()),
            WalOp::Remove(key) => batch.remove(key.as_slice()),
        }
    }
}

const FRAME_HEADER: usize = 8;
/// Largest record accepted when reading (a group of 1,024 requests of 4 MiB values is far below).
const MAX_RECORD: usize = u32::MAX as usize;

fn corrupt(message: String) -> StoreError {
    StoreError::Backend(format!("write-ahead log: {message}"))
}

fn io(what: &str, path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Backend(format!("write-ahead log: cannot {what} {}: {error}", path.display()))
}

fn segment_name(first: u64) -> String {
    format!("{first:016x}.wal")
}

/// The segments in `dir`, by first sequence number.
pub(super) fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    numbered_files(dir, ".wal")
}

/// The files in `dir` named `<16 hex digits><suffix>`, by that number (none
/// when `dir` does not exist).
pub(super) fn numbered_files(dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io("list", dir, e))?;
        let name = entry.file_name();
        if let Some(number) =
            name.to_str().and_then(|n| n.strip_suffix(suffix)).and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            out.push((number, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Creates `dir` if it is missing, and makes its entry in its parent durable.
pub(super) fn create_durably(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Makes a new file's directory entry durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("sync", dir, e))
}

/// The sequence number of the last intact record of the log in `dir`
/// (`None`: there is no log).
pub(super) fn last_seq(dir: &Path) -> Result<Option<u64>, StoreError> {
    let Some((first, path)) = segments(dir)?.pop() else {
        return Ok(None);
    };
    let bytes = std::fs::read(&path).map_err(|e| io("read", &path, e))?;
    let (frames, _) = read_segment(&bytes);
    Ok(Some(frames.last().map_or(first.saturating_sub(1), |&(_, seq, _)| seq)))
}

/// A frame found in a segment: its offset, sequence number and encoded operations.
type RawFrame<'a> = (usize, u64, &'a [u8]);

/// Reads the frames of one segment; stops at the first bad one and says
/// where it starts and why.
fn read_segment(bytes: &[u8]) -> (Vec<RawFrame<'_>>, Option<(usize, String)>) {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + FRAME_HEADER) else {
            return (frames, Some((at, "a frame header is cut short".into())));
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + len).filter(|_| len >= 8) else {
            return (frames, Some((at, format!("a record of {len} bytes is cut short"))));
        };
        if crc32fast::hash(payload) != crc {
            return (frames, Some((at, "a record fails its checksum".into())));
        }
        let seq = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
        frames.push((at, seq, &payload[8..]));
        at += FRAME_HEADER + len;
    }
    (frames, None)
}

/// The log, open for appending.
pub(super) struct Wal {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    segment_bytes: u64,
    max_segment_bytes: u64,
    next_seq: u64,
    /// Bytes appended since [`Wal::take_appended`] was last called.
    appended: u64,
}

impl Wal {
    /// Opens the log in `dir` (creating it), hands every record with a
    /// sequence number of at least `from` to `replay` in order, cuts a torn
    /// tail, and returns the log positioned to append after its last record.
    /// A log that ends before `from - 1` (the tree is ahead of it: the log
    /// was removed) continues at `from`. A log that starts after `from` (it
    /// cannot bring the tree up to date) is an error.
    pub(super) fn open(
        dir: &Path,
        from: u64,
        max_segment_bytes: u64,
        mut replay: impl FnMut(u64, Vec<WalOp>) -> Result<(), StoreError>,
    ) -> Result<Wal, StoreError> {
        create_durably(dir)?;
        let segments = segments(dir)?;
        let Some(&(oldest, _)) = segments.first() else {
            return Wal::create(dir, from.max(1), max_segment_bytes);
        };
        if oldest > from {
            return Err(corrupt(format!(
                "the log starts at record {oldest} but the store needs it from record {from}"
            )));
        }
        // The segment holding `from` and everything after it.
        let start = segments.iter().rposition(|(first, _)| *first <= from).unwrap_or(0);
        let mut expected = segments[start].0;
        let last = segments.len() - 1;
        let mut tail_len = 0;
        for (index, (first, path)) in segments.iter().enumerate().skip(start) {
            if *first != expected {
                return Err(corrupt(format!(
                    "{} should start at record {expected} (records are missing)",
                    path.display()
                )));
            }
            let bytes = std::fs::read(path).map_err(|e| io("read", path, e))?;
            let (frames, bad) = read_segment(&bytes);
            let mut end = bytes.len();
            let mut broken = bad;
            for (offset, seq, payload) in frames {
                if seq != expected {
                    broken = Some((offset, format!("record {seq} where {expected} was due")));
                    break;
                }
                if seq >= from {
                    fail::fail_point!("wal-replay-record", |_| crate::ssot::sled_store::crash());
                    let ops: Vec<WalOp> = postcard::from_bytes(payload)
                        .map_err(|e| corrupt(format!("record {seq} in {} does not decode: {e}", path.display())))?;
                    replay(seq, ops)?;
                }
                expected = seq + 1;
            }
            if let Some((offset, why)) = broken {
                if index != last {
                    return Err(corrupt(format!("{} is corrupt at byte {offset}: {why}", path.display())));
                }
                warn!(
                    segment = %path.display(),
                    offset,
                    cut = bytes.len() - offset,
                    "the write-ahead log ends in a torn record ({why}); cutting it (it was never acknowledged)"
                );
                let file = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| io("open", path, e))?;
                file.set_len(offset as u64).and_then(|()| file.sync_all()).map_err(|e| io("cut", path, e))?;
                end = offset;
            }
            if index == last {
                tail_len = end;
            }
        }
        if expected < from {
            warn!(
                log_ends = expected - 1,
                store_at = from - 1,
                "the write-ahead log is behind the store; continuing it"
            );
            return Wal::create(dir, from, max_segment_bytes);
        }
        let (_, path) = &segments[last];
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| io("open", path, e))?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            file,
            path: path.clone(),
            segment_bytes: tail_len as u64,
            max_segment_bytes,
            next_seq: expected,
            appended: 0,
        })
    }

    fn create(dir: &Path, first: u64, max_segment_bytes: u64) -> Result<Wal, StoreError> {
        let path = dir.join(segment_name(first));
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("create", &path, e))?;
        let segment_bytes = file.metadata().map_err(|e| io("stat", &path, e))?.len();
        sync_dir(dir)?;
        Ok(Wal { dir: dir.to_path_buf(), file, path, segment_bytes, max_segment_bytes, next_seq: first, appended: 0 })
    }

    /// The sequence number the next record gets.
    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends one record and makes it durable (`fdatasync`); returns its
    /// sequence number. On an error nothing may be acknowledged: the record
    /// may or may not be in the log.
    pub(super) fn append(&mut self, ops: &[WalOp]) -> Result<u64, StoreError> {
        let seq = self.next_seq;
        let mut frame = vec![0; FRAME_HEADER];
        frame.extend_from_slice(&seq.to_le_bytes());
        let frame = postcard::to_extend(ops, frame).expect("postcard encodes log records");
        let len = frame.len() - FRAME_HEADER;
        if len > MAX_RECORD {
            return Err(StoreError::InvalidArgument(format!("a group of {len} bytes is too large for the log")));
        }
        let crc = crc32fast::hash(&frame[FRAME_HEADER..]);
        let mut frame = frame;
        frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        fail::fail_point!("wal-before-append", |_| crate::ssot::sled_store::crash());
        self.file.write_all(&frame).map_err(|e| io("append to", &self.path, e))?;
        fail::fail_point!("wal-before-fsync", |_| crate::ssot::sled_store::crash());
        self.file.sync_data().map_err(|e| io("sync", &self.path, e))?;
        fail::fail_point!("wal-after-fsync", |_| crate::ssot::sled_store::crash());
        self.next_seq += 1;
        self.segment_bytes += frame.len() as u64;
        self.appended += frame.len() as u64;
        if self.segment_bytes >= self.max_segment_bytes {
            self.roll()?;
        }
        Ok(seq)
    }

    /// Starts a new segment at the next sequence number.
    fn roll(&mut self) -> Result<(), StoreError> {
        let next = Wal::create(&self.dir, self.next_seq, self.max_segment_bytes)?;
        info!(first = self.next_seq, "write-ahead log segment started");
        self.file = next.file;
        self.path = next.path;
        self.segment_bytes = 0;
        Ok(())
    }

    /// Bytes appended since the last call.
    pub(super) fn take_appended(&mut self) -> u64 {
        std::mem::take(&mut self.appended)
    }
}

/// Removes the segments every record of which is below `seq` (never the
/// newest segment); returns how many went.
pub(super) fn remove_before(dir: &Path, seq: u64) -> Result<usize, StoreError> {
    let segments = segments(dir)?;
    let mut removed = 0;
    for pair in segments.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        if *next_first <= seq {
            std::fs::remove_file(path).map_err(|e| io("remove", path, e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(n: u8) -> Vec<WalOp> {
        vec![WalOp::put(vec![b'k', n], vec![n; 40]), WalOp::remove(vec![b'x', n])]
    }

    fn replayed(dir: &Path, from: u64) -> (Wal, Vec<(u64, Vec<WalOp>)>) {
        let mut seen = Vec::new();
        let wal = Wal::open(dir, from, 300, |seq, ops| {
            seen.push((seq, ops));
            Ok(())
        })
        .unwrap();
        (wal, seen)
    }

    #[test]
    fn records_come_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, seen) = replayed(dir.path(), 1);
        assert!(seen.is_empty());
        for n in 1..=20u8 {
            assert_eq!(wal.append(&ops(n)).unwrap(), u64::from(n));
        }
        drop(wal);
        assert!(segments(dir.path()).unwrap().len() > 3, "rolled at 300 bytes");
        let (wal, seen) = replayed(dir.path(), 7);
        assert_eq!(seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (7..=20).collect::<Vec<_>>());
        assert_eq!(seen[0].1, ops(7));
        assert_eq!(wal.next_seq(), 21);
    }

    #[test]
    fn a_torn_tail_is_cut_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = replayed(dir.path(), 1);
        for n in 1..=3u8 {
            wal.append(&ops(n)).unwrap();
        }
        drop(wal);
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let good = std::fs::metadata(&path).unwrap().len();
        // Half a frame, then garbage with a plausible length: both are torn tails.
        for torn in [&[9u8, 0, 0, 0, 1, 2][..], &[60, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12][..]] {
            std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(torn).unwrap();
            let (mut wal, seen) = replayed(dir.path(), 1);
            assert_eq!(seen.len(), 3, "every whole record");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good, "the torn bytes are gone");
            assert_eq!(wal.append(&ops(4)).unwrap(), 4);
            drop(wal);
            let (wal, seen) = replayed(dir.path(), 1);
            assert_eq!(seen.len(), 4);
            // Back to three records for the next round.
            drop(wal);
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(good).unwrap();
        }
    }

    #[test]
    fn corruption_before_the_tail_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = replayed(dir.path(), 1);
        for n in 1..=20u8 {
            wal.append(&ops(n)).unwrap();
        }
        drop(wal);
        let (_, first) = segments(dir.path()).unwrap().remove(0);
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();
        let error = Wal::open(dir.path(), 1, 300, |_, _| Ok(())).err().unwrap();
        assert!(error.to_string().contains("is corrupt at byte"), "{error}");
        // A replay that starts past the damaged segment does not need it.
        let segments = segments(dir.path()).unwrap();
        assert!(Wal::open(dir.path(), segments[1].0, 300, |_, _| Ok(())).is_ok());
    }

    #[test]
    fn old_segments_are_removed_but_never_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = replayed(dir.path(), 1);
        for n in 1..=20u8 {
            wal.append(&ops(n)).unwrap();
        }
        let before = segments(dir.path()).unwrap();
        let removed = remove_before(dir.path(), before[2].0).unwrap();
        assert_eq!(removed, 2);
        assert_eq!(segments(dir.path()).unwrap()[0].0, before[2].0);
        remove_before(dir.path(), u64::MAX).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        let error = Wal::open(dir.path(), 1, 300, |_, _| Ok(())).err().unwrap();
        assert!(error.to_string().contains("the store needs it from record 1"), "{error}");
    }
}
