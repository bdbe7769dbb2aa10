//! Opening a store written in an older format.
//!
//! - Format 1 had no lease-owner index: it is built in place.
//! - Format 2 kept the author of each revision in an `a rev` record and one
//!   `r rev` record per revision; format 3 the author in each record and one
//!   `r` record per group commit, but the whole record (value included) in
//!   both `k` and `h`. Format 4 keeps the value once, in `h`, and only the
//!   key's revisions and lease in `k`.
//! - Formats 2 and 3 are converted into a new sled directory beside the old
//!   one, a checkpoint of it replaces the old checkpoints (a later rebuild
//!   never mixes formats), and only then are the directories swapped. A
//!   crash before the copy is complete leaves the old store, converted again
//!   at the next start; a crash after it leaves a complete copy, and the next
//!   start finishes the swap. The old directory is kept as `store.format-N`
//!   and the old checkpoints in `checkpoints.format-N` (delete them once
//!   satisfied).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_bytes::ByteBuf;
use tracing::{info, warn};

use super::layout::{self, KvMeta, KvRecord, RevisionGroup, decode, encode, meta};
use super::{OpenError, Paths, SledOptions, checkpoint, open_sled, wal};
use crate::ssot::store::{LeaseId, Revision, StoreError};

/// Records written per batch while converting.
const BATCH: usize = 10_000;

/// Format 1 to 2: builds the lease-owner index from the current keys.
pub(super) fn from_1(tree: &sled::Tree) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    let mut leased = 0;
    for item in tree.scan_prefix([layout::CUR]) {
        let (raw_key, raw) = item?;
        let record: RecordV2 = decode(&raw)?;
        if record.lease != 0 {
            batch.insert(layout::lease_key(record.lease, &raw_key[1..]), Vec::new());
            leased += 1;
        }
    }
    batch.insert(layout::meta(meta::SCHEMA), encode(&2u32));
    tree.apply_batch(batch)?;
    tree.flush()?;
    info!(leased, "store format 1 upgraded to 2");
    Ok(())
}

/// A key's record in formats 1 and 2: no author.
#[derive(Deserialize)]
struct RecordV2 {
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    create_revision: Revision,
    mod_revision: Revision,
    version: u64,
    lease: LeaseId,
}

/// Format 2's author records.
const ACTOR_V2: u8 = b'a';

/// Where a conversion is built.
const BUILDING: &str = "store.upgrading";

/// The name of a complete conversion of a format `from` store. Format 2
/// stores converted by the maestrod before format 4 used `store.upgraded`.
fn built(from: u32) -> String {
    format!("store.upgraded-from-{from}")
}
const BUILT_BY_FORMAT_3: &str = "store.upgraded";

fn backend(what: String) -> StoreError {
    StoreError::Backend(what)
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::rename(from, to).map_err(|e| backend(format!("cannot rename {} to {}: {e}", from.display(), to.display())))
}

/// Where the checkpoint of a conversion is written; it takes the place of
/// `checkpoints/` in the swap.
const CHECKPOINTS_BUILT: &str = "checkpoints.upgrading";

/// Format 2 or 3 to the current one, first half, with the old store still
/// open: converts `old` (every log record up to `seq` applied) into
/// `store.upgrading/`, writes a checkpoint of it into
/// `checkpoints.upgrading/`, and names the copy `store.upgraded-from-N`:
/// complete. The old store and its checkpoints are untouched (a rebuild of
/// the old store before the swap uses its own). Errors here are the new
/// copy's, never a reason to move the old store aside; a partial copy is
/// removed.
pub(super) fn convert_from(
    dir: &Path,
    old: &sled::Tree,
    from: u32,
    seq: u64,
    options: &SledOptions,
) -> Result<u64, StoreError> {
    let building = dir.join(BUILDING);
    let checkpoints = dir.join(CHECKPOINTS_BUILT);
    let clear = |stale: &Path| -> Result<(), StoreError> {
        if stale.exists() {
            std::fs::remove_dir_all(stale).map_err(|e| backend(format!("cannot clear {}: {e}", stale.display())))?;
        }
        Ok(())
    };
    for stale in [&building, &checkpoints, &dir.join(built(from))] {
        clear(stale)?;
    }
    let build = || -> Result<u64, StoreError> {
        let db = open_sled(&building, options).map_err(OpenError::into_error)?;
        let tree = db.open_tree("ssot")?;
        let converted = convert(old, from, &tree)?;
        tree.flush()?;
        checkpoint::write(&checkpoints, &tree, seq)?;
        Ok(converted)
    };
    match build() {
        Ok(converted) => {
            rename(&building, &dir.join(built(from)))?;
            wal::sync_dir(dir)?;
            Ok(converted)
        }
        Err(error) => {
            let _ = clear(&building);
            let _ = clear(&checkpoints);
            Err(error)
        }
    }
}

/// The first free name of `name.format-N`, `name.format-N-1`, … in `dir`.
fn aside(dir: &Path, name: &str, from: u32) -> PathBuf {
    let mut path = dir.join(format!("{name}.format-{from}"));
    for n in 1.. {
        if !path.exists() {
            break;
        }
        path = dir.join(format!("{name}.format-{from}-{n}"));
    }
    path
}

/// Second half, with the old store closed (and at every open: a swap cut off
/// by a crash is finished, each step once): `checkpoints/` is kept as
/// `checkpoints.format-N` and `checkpoints.upgrading/` takes its place, then
/// `store/` is kept as `store.format-N` and `store.upgraded-from-N/` takes
/// its place. A copy the old store has moved past since it was made (an older
/// maestrod ran on the directory after a crash in the upgrade) is dropped
/// instead, and the store converted again. Returns where the old store went
/// (None: nothing to do, or `store/` was already moved).
pub(super) fn swap_in(dir: &Path) -> Result<Option<PathBuf>, StoreError> {
    let paths = Paths::of(dir);
    let Some((built, from)) = [(dir.join(built(2)), 2), (dir.join(BUILT_BY_FORMAT_3), 2), (dir.join(built(3)), 3)]
        .into_iter()
        .find(|(path, _)| path.exists())
    else {
        return Ok(None);
    };
    let checkpoints = dir.join(CHECKPOINTS_BUILT);
    if checkpoints.exists() {
        let made_at = checkpoint::list(&checkpoints)?.last().map(|&(seq, _)| seq);
        let log_at = wal::last_seq(&paths.wal)?;
        if let (Some(made_at), Some(log_at)) = (made_at, log_at)
            && log_at > made_at
        {
            warn!(
                copy = made_at,
                log = log_at,
                "the converted copy of the store is older than its log (an older maestrod wrote to it since); converting again"
            );
            for stale in [&built, &checkpoints] {
                std::fs::remove_dir_all(stale)
                    .map_err(|e| backend(format!("cannot remove {}: {e}", stale.display())))?;
            }
            return Ok(None);
        }
    }
    fail::fail_point!("upgrade-before-swap", |_| super::crash());
    if checkpoints.exists() {
        if paths.checkpoints.exists() {
            rename(&paths.checkpoints, &aside(dir, "checkpoints", from))?;
        }
        rename(&checkpoints, &paths.checkpoints)?;
        wal::sync_dir(dir)?;
    }
    let mut moved = None;
    if paths.store.exists() {
        let old = aside(dir, "store", from);
        rename(&paths.store, &old)?;
        moved = Some(old);
        fail::fail_point!("upgrade-between-renames", |_| super::crash());
    }
    rename(&built, &paths.store)?;
    wal::sync_dir(dir)?;
    // A copy built by the maestrod before format 4 is in format 3: converted again at this open.
    let to = if built.ends_with(BUILT_BY_FORMAT_3) { 3 } else { layout::SCHEMA_VERSION };
    info!(
        old = %moved.as_ref().map_or_else(|| format!("store.format-{from}"), |p| p.display().to_string()),
        "store format {from} upgraded to {to}; the old sled directory and checkpoints were kept aside (delete them once satisfied)"
    );
    Ok(moved)
}

/// Copies `old`, in format `from` (2 or 3), into the empty `new` in the
/// current format; returns the records written.
fn convert(old: &sled::Tree, from: u32, new: &sled::Tree) -> Result<u64, StoreError> {
    let actor_of = |revision: Revision| -> Result<String, StoreError> {
        let raw = old.get(layout::prefixed(ACTOR_V2, &revision.to_be_bytes()))?;
        Ok(raw.map(|raw| String::from_utf8_lossy(&raw).into_owned()).unwrap_or_default())
    };
    let upgrade = |record: RecordV2| -> Result<KvRecord, StoreError> {
        Ok(KvRecord {
            actor: actor_of(record.mod_revision)?,
            value: record.value,
            create_revision: record.create_revision,
            mod_revision: record.mod_revision,
            version: record.version,
            lease: record.lease,
        })
    };
    let mut batch = sled::Batch::default();
    let (mut pending, mut written, mut restored) = (0, 0u64, 0u64);
    for item in old.iter() {
        let (raw_key, raw) = item?;
        let value = match (raw_key.first().copied(), from) {
            (Some(layout::CUR), _) => {
                // The value now lives only in history: an entry the old format did
                // not need (none is known to be missing) is written from `k`.
                let record = match from {
                    2 => upgrade(decode::<RecordV2>(&raw)?)?,
                    _ => decode::<KvRecord>(&raw)?,
                };
                let entry = layout::hist(&raw_key[1..], record.mod_revision);
                if old.get(&entry)?.is_none() {
                    batch.insert(entry, layout::as_some(&encode(&record)));
                    restored += 1;
                }
                encode(&record.meta())
            }
            (Some(layout::HIST), 2) => encode(&decode::<Option<RecordV2>>(&raw)?.map(upgrade).transpose()?),
            (Some(layout::REVS), 2) => {
                let revision = layout::parse_rev(&raw_key)
                    .ok_or_else(|| StoreError::Backend("corrupt revision key in a format 2 store".into()))?;
                let group: RevisionGroup = vec![(revision, decode::<Vec<ByteBuf>>(&raw)?)];
                encode(&group)
            }
            (Some(ACTOR_V2), 2) => continue,
            _ => raw.to_vec(),
        };
        batch.insert(raw_key, value);
        pending += 1;
        written += 1;
        if pending == BATCH {
            new.apply_batch(std::mem::take(&mut batch))?;
            pending = 0;
        }
    }
    batch.insert(layout::meta(meta::SCHEMA), encode(&layout::SCHEMA_VERSION));
    new.apply_batch(batch)?;
    if restored > 0 {
        warn!(restored, "history entries of current values were missing and were written from the current records");
    }
    Ok(written)
}

/// A format 2 record, as written (for [`downgrade_to_format`]).
#[cfg(any(test, feature = "failpoints"))]
#[derive(serde::Serialize)]
struct WrittenV2<'a> {
    #[serde(with = "serde_bytes")]
    value: &'a [u8],
    create_revision: Revision,
    mod_revision: Revision,
    version: u64,
    lease: LeaseId,
}

#[cfg(any(test, feature = "failpoints"))]
impl<'a> From<&'a KvRecord> for WrittenV2<'a> {
    fn from(record: &'a KvRecord) -> Self {
        WrittenV2 {
            value: &record.value,
            create_revision: record.create_revision,
            mod_revision: record.mod_revision,
            version: record.version,
            lease: record.lease,
        }
    }
}

/// Test fixture: rewrites the closed, flushed store in `dir` as format
/// `format` (2 or 3) kept it, with a checkpoint in that format, so the
/// upgrade can be tried on a store the daemon wrote. Format 2 keeps authors
/// in `a rev` and one `r` record per revision, and not the author of a
/// delete; format 3 the whole record in `k`.
#[cfg(any(test, feature = "failpoints"))]
pub fn downgrade_to_format(dir: &Path, format: u32) -> Result<(), StoreError> {
    assert!(matches!(format, 2 | 3), "format {format} is not one the upgrade converts");
    let paths = Paths::of(dir);
    let db = super::open_sled_again(&paths.store, &SledOptions::default()).map_err(OpenError::into_error)?;
    let tree = db.open_tree("ssot")?;
    let mut batch = sled::Batch::default();
    for item in tree.iter() {
        let (raw_key, raw) = item?;
        match raw_key.first().copied() {
            Some(layout::CUR) => {
                let meta: KvMeta = decode(&raw)?;
                let record = super::read::current_record(&tree, &raw_key[1..], meta)?
                    .ok_or_else(|| StoreError::Backend("a current value is missing".into()))?;
                match format {
                    2 => batch.insert(raw_key, encode(&WrittenV2::from(&record))),
                    _ => batch.insert(raw_key, encode(&record)),
                }
            }
            Some(layout::HIST) if format == 2 => {
                let record: Option<KvRecord> = decode(&raw)?;
                if let Some(record) = &record {
                    let actor = layout::prefixed(ACTOR_V2, &record.mod_revision.to_be_bytes());
                    batch.insert(actor, record.actor.as_bytes());
                }
                batch.insert(raw_key, encode(&record.as_ref().map(WrittenV2::from)));
            }
            Some(layout::REVS) if format == 2 => {
                batch.remove(raw_key);
                for (revision, keys) in decode::<RevisionGroup>(&raw)? {
                    batch.insert(layout::rev(revision), encode(&keys));
                }
            }
            _ => {}
        }
    }
    batch.insert(layout::meta(meta::SCHEMA), encode(&format));
    tree.apply_batch(batch)?;
    tree.flush()?;
    let seq = super::read_u64(&tree, meta::LOG_SEQ)?;
    checkpoint::write(&paths.checkpoints, &tree, seq)?;
    for (other, path) in checkpoint::list(&paths.checkpoints)? {
        if other != seq {
            std::fs::remove_file(&path).map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::super::recovery_tests::reopen;
    use super::super::{SledOptions, SledStore};
    use super::*;
    use crate::ssot::store::{EventKind, Op, RangeRequest, Store, Txn};

    /// A store as format 2 wrote it: a put of `a` by alice, of `b` by bob, `a`
    /// again by carol, and the delete of `b` by dave.
    fn write_format_2(dir: &Path) {
        let db = sled::Config::new().path(dir.join("store")).open().unwrap();
        let tree = db.open_tree("ssot").unwrap();
        let put = |key: &[u8], value: Vec<u8>| tree.insert(key, value).unwrap();
        fn record(value: &[u8], create: Revision, modified: Revision, version: u64) -> WrittenV2<'_> {
            WrittenV2 { value, create_revision: create, mod_revision: modified, version, lease: 0 }
        }
        for (name, value) in [(meta::SCHEMA, encode(&2u32)), (meta::REVISION, encode(&4u64))] {
            put(&layout::meta(name), value);
        }
        put(&layout::cur(b"a"), encode(&record(b"a3", 1, 3, 2)));
        put(&layout::hist(b"a", 1), encode(&Some(record(b"a1", 1, 1, 1))));
        put(&layout::hist(b"b", 2), encode(&Some(record(b"b2", 2, 2, 1))));
        put(&layout::hist(b"a", 3), encode(&Some(record(b"a3", 1, 3, 2))));
        put(&layout::hist(b"b", 4), encode(&None::<WrittenV2<'_>>));
        for (revision, key, actor) in [(1u64, "a", "alice"), (2, "b", "bob"), (3, "a", "carol"), (4, "b", "dave")] {
            put(&layout::rev(revision), encode(&vec![ByteBuf::from(key.as_bytes().to_vec())]));
            put(&layout::prefixed(ACTOR_V2, &revision.to_be_bytes()), actor.as_bytes().to_vec());
        }
        db.flush().unwrap();
    }

    fn authored(kvs: &[crate::ssot::store::KeyValue]) -> Vec<(String, String, String)> {
        kvs.iter()
            .map(|kv| {
                let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
                (text(&kv.key), text(&kv.value), kv.modified_by.clone())
            })
            .collect()
    }

    async fn events(store: &SledStore, count: usize) -> Vec<(EventKind, String, Revision)> {
        let mut stream = store.watch(Vec::new(), 1).unwrap();
        let mut got = Vec::new();
        while got.len() < count {
            let batch = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
            got.extend(
                batch.events.into_iter().map(|e| (e.kind, String::from_utf8(e.kv.key).unwrap(), e.kv.mod_revision)),
            );
        }
        got
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_format_2_store_keeps_its_values_authors_and_history_and_rebuilds_in_format_3() {
        let dir = tempfile::tempdir().unwrap();
        write_format_2(dir.path());
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        let now = store.range(RangeRequest::prefix("")).await.unwrap();
        assert_eq!(now.revision, 4);
        assert_eq!(authored(&now.kvs), [("a".into(), "a3".into(), "carol".into())]);
        let then = store.range(RangeRequest::prefix("").at(2)).await.unwrap();
        assert_eq!(
            authored(&then.kvs),
            [("a".into(), "a1".into(), "alice".into()), ("b".into(), "b2".into(), "bob".into())]
        );
        let history = [
            (EventKind::Put, "a".to_string(), 1),
            (EventKind::Put, "b".into(), 2),
            (EventKind::Put, "a".into(), 3),
            (EventKind::Delete, "b".into(), 4),
        ];
        assert_eq!(events(&store, 4).await, history);
        assert!(dir.path().join("store.format-2").is_dir(), "the old directory is kept aside");
        assert_eq!(checkpoint::list(&dir.path().join("checkpoints")).unwrap().len(), 1);

        let mut txn = Txn::new().then(Op::put("c", "c5"));
        txn.actor = Some("erin".into());
        assert!(store.txn(txn).await.unwrap().is_committed());
        store.close().await;
        drop(store);

        // Lose the converted sled directory: the format 3 checkpoint and the log rebuild it.
        std::fs::remove_dir_all(dir.path().join("store")).unwrap();
        let store = reopen(dir.path(), SledOptions::default()).await;
        let now = store.range(RangeRequest::prefix("")).await.unwrap();
        assert_eq!(
            authored(&now.kvs),
            [("a".into(), "a3".into(), "carol".into()), ("c".into(), "c5".into(), "erin".into())]
        );
        let mut all = history.to_vec();
        all.push((EventKind::Put, "c".into(), 5));
        assert_eq!(events(&store, 5).await, all);
        store.close().await;
    }

    /// Everything a client can read: the current state and each revision's
    /// events with their authors.
    async fn readable(
        store: &SledStore,
    ) -> (Vec<(String, String, String)>, Vec<(EventKind, String, Revision, String)>) {
        let now = store.range(RangeRequest::prefix("")).await.unwrap();
        let mut stream = store.watch(Vec::new(), 1).unwrap();
        let mut events = Vec::new();
        while events.len() < 300 {
            let batch = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
            events.extend(
                batch
                    .events
                    .into_iter()
                    .map(|e| (e.kind, String::from_utf8(e.kv.key).unwrap(), e.kv.mod_revision, e.kv.modified_by)),
            );
        }
        (authored(&now.kvs), events)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_the_daemon_wrote_reads_the_same_after_a_round_trip_through_formats_2_and_3() {
        for format in [2, 3] {
            let dir = tempfile::tempdir().unwrap();
            let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
            // Concurrent writes share group commits; every fifth deletes a key.
            let writes = (0..300).map(|n| {
                let key = format!("k/{}", n % 23);
                let mut txn = Txn::new().then(if n % 5 == 4 { Op::delete(key) } else { Op::put(key, format!("v{n}")) });
                txn.actor = Some(format!("agent-{}", n % 4));
                store.txn(txn)
            });
            futures::future::join_all(writes).await;
            let revision = store.range(RangeRequest::prefix("")).await.unwrap().revision;
            let mut filler = 0;
            while store.range(RangeRequest::prefix("")).await.unwrap().revision < 300 {
                let txn = Txn::new().then(Op::put(format!("z/{filler}"), "x"));
                assert!(store.txn(txn).await.unwrap().is_committed());
                filler += 1;
            }
            assert!(revision > 200, "most writes changed something ({revision})");
            let before = readable(&store).await;
            store.close().await;
            drop(store);

            downgrade_to_format(dir.path(), format).unwrap();
            if format == 3 {
                // Format 3 never read it; format 4 keeps the value there only.
                lose_a_current_history_entry(dir.path());
            }
            let store = reopen(dir.path(), SledOptions::default()).await;
            assert_eq!(readable(&store).await, before, "after an upgrade from format {format}");
            assert!(dir.path().join(format!("store.format-{format}")).is_dir());
            assert!(dir.path().join(format!("checkpoints.format-{format}")).is_dir());
            assert!(current_records_hold_no_value(&store), "no current record holds its value after the upgrade");
            store.close().await;
            drop(store);

            // The converted store is rebuilt from its own checkpoint and log, in the current format.
            std::fs::remove_dir_all(dir.path().join("store")).unwrap();
            let store = reopen(dir.path(), SledOptions::default()).await;
            assert_eq!(readable(&store).await, before, "rebuilt after an upgrade from format {format}");
            store.close().await;
        }
    }

    /// Whether every `k` record is a `KvMeta` and nothing more (no value).
    fn current_records_hold_no_value(store: &SledStore) -> bool {
        let tree = store.shared.tree().unwrap();
        tree.scan_prefix([layout::CUR]).all(|item| {
            let (_, raw) = item.unwrap();
            decode::<KvMeta>(&raw).is_ok_and(|meta| encode(&meta) == raw.as_ref())
        })
    }

    /// Removes the history entry of the first current key of the closed
    /// format 3 store in `dir` (the value is still in its `k` record).
    fn lose_a_current_history_entry(dir: &Path) {
        let db = super::super::open_sled_again(&Paths::of(dir).store, &SledOptions::default())
            .map_err(OpenError::into_error)
            .unwrap();
        let tree = db.open_tree("ssot").unwrap();
        let (raw_key, raw) = tree.scan_prefix([layout::CUR]).next().unwrap().unwrap();
        let record: KvRecord = decode(&raw).unwrap();
        tree.remove(layout::hist(&raw_key[1..], record.mod_revision)).unwrap().expect("the entry was there");
        tree.flush().unwrap();
    }

    /// A store as the maestrod before format 4 wrote it, with a swap cut off
    /// by a crash: its converted copy (`store.upgraded`, format 3) is put in
    /// place and converted again.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_format_3_copy_left_by_the_previous_upgrade_is_swapped_in_and_converted() {
        let dir = tempfile::tempdir().unwrap();
        write_format_2(dir.path());
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        let before = readable_few(&store).await;
        store.close().await;
        drop(store);
        downgrade_to_format(dir.path(), 3).unwrap();
        std::fs::rename(dir.path().join("store"), dir.path().join(BUILT_BY_FORMAT_3)).unwrap();
        write_format_2(dir.path());
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        assert_eq!(readable_few(&store).await, before);
        for aside in ["store.format-2-1", "store.format-3"] {
            assert!(dir.path().join(aside).is_dir(), "{aside} kept");
        }
        store.close().await;
    }

    async fn readable_few(store: &SledStore) -> (Vec<(String, String, String)>, Vec<(EventKind, String, Revision)>) {
        let now = store.range(RangeRequest::prefix("")).await.unwrap();
        (authored(&now.kvs), events(store, 4).await)
    }

    /// A copy made by an upgrade cut off by a crash, after which an older
    /// maestrod wrote to the old store: the copy is dropped (swapping it in
    /// would lose that write) and the store converted again.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_copy_the_log_has_moved_past_is_dropped_and_the_store_converted_again() {
        use super::super::wal::{Wal, WalOp};
        let dir = tempfile::tempdir().unwrap();
        write_format_2(dir.path());
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        store.close().await;
        drop(store);
        downgrade_to_format(dir.path(), 3).unwrap();
        let paths = Paths::of(dir.path());
        {
            let options = SledOptions::default();
            let db = super::super::open_sled_again(&paths.store, &options).map_err(OpenError::into_error).unwrap();
            let tree = db.open_tree("ssot").unwrap();
            let seq = super::super::read_u64(&tree, meta::LOG_SEQ).unwrap();
            convert_from(dir.path(), &tree, 3, seq, &options).unwrap();
            // The older maestrod (format 3: the whole record in `k`) writes on; only its log has it.
            let mut wal = Wal::open(&paths.wal, seq + 1, options.wal_segment_bytes, |_, _| Ok(())).unwrap();
            let revision = super::super::read_u64(&tree, meta::REVISION).unwrap() + 1;
            let record = KvRecord {
                value: b"late".to_vec(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
                actor: "frank".into(),
            };
            let group: RevisionGroup = vec![(revision, vec![ByteBuf::from(b"late".to_vec())])];
            let ops = [
                WalOp::put(layout::hist(b"late", revision), layout::as_some(&encode(&record))),
                WalOp::put(layout::cur(b"late"), encode(&record)),
                WalOp::put(layout::rev(revision), encode(&group)),
                WalOp::put(layout::meta(meta::REVISION), encode(&revision)),
            ];
            assert_eq!(wal.append(&ops).unwrap(), seq + 1);
        }
        assert!(dir.path().join(built(3)).is_dir() && dir.path().join(CHECKPOINTS_BUILT).is_dir());
        let store = reopen(dir.path(), SledOptions::default()).await;
        let now = store.range(RangeRequest::prefix("")).await.unwrap();
        assert_eq!(
            authored(&now.kvs),
            [("a".into(), "a3".into(), "carol".into()), ("late".into(), "late".into(), "frank".into())]
        );
        assert_eq!(now.revision, 5);
        assert!(!dir.path().join(built(3)).exists() && dir.path().join("store.format-3").is_dir());
        store.close().await;
    }
}
