//! Key spaces of the sled tree and the records stored in them.
//!
//! One sled tree holds everything, so that a whole group is applied with one
//! atomic `apply_batch`. Key spaces are told apart by their first byte:
//!
//! | prefix | key                     | value                                        |
//! |--------|-------------------------|----------------------------------------------|
//! | `m`    | meta name               | schema, revision, compaction, log position   |
//! | `k`    | user key                | `KvMeta` of the current value (no value)     |
//! | `h`    | user key, 0, rev (BE)   | `Option<KvRecord>` after that revision       |
//! |        |                         | (value and author; `None`: a delete)         |
//! | `r`    | last rev of a group (BE)| `RevisionGroup`: per revision of one group   |
//! |        |                         | commit, the keys it changed, in order        |
//! | `l`    | lease id (BE)           | `LeaseRecord` (TTL and wall-clock deadline)  |
//! | `o`    | lease id (BE), user key | empty: the key is attached to the lease      |
//!
//! A write of one key is two inserts, and its value is stored once: in its
//! `h` entry (etcd's design: the value lives in the revision-keyed store, the
//! key index points at its revision). `k` holds what the writer compares and
//! a read needs to find the value: `mod_revision` names the `h` entry. A
//! group commit adds one `r` record for all its revisions. The current value's
//! `h` entry is never swept (a compaction keeps each key's newest entry), but
//! a read that found an older `k` may meet its entry swept after a newer
//! write: it starts over (`read::range_current`).
//!
//! Format 2 had an `r` record and an `a` (author) record per revision, and
//! format 3 the whole record (value and author) in `k` too; both are
//! converted at open (`upgrade`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ssot::store::{Event, EventKind, KeyValue, LeaseId, LeaseInfo, Revision, StoreError};

/// Bumped whenever the on-disk layout changes; checked on open. 2 added the
/// lease-owner index (`o`), built from the current keys when a version 1
/// store is opened; 3 moved the author into the records and made the
/// revision record one per group commit; 4 keeps the value only in history
/// (`k` holds a `KvMeta`).
pub(super) const SCHEMA_VERSION: u32 = 4;

pub(super) const META: u8 = b'm';
pub(super) const CUR: u8 = b'k';
pub(super) const HIST: u8 = b'h';
pub(super) const REVS: u8 = b'r';
pub(super) const LEASE: u8 = b'l';
pub(super) const LEASE_KEY: u8 = b'o';

/// Names of the meta records.
pub(super) mod meta {
    pub(in crate::ssot::sled_store) const SCHEMA: &str = "schema";
    pub(in crate::ssot::sled_store) const REVISION: &str = "revision";
    pub(in crate::ssot::sled_store) const COMPACTED: &str = "compacted";
    /// Revision below which old history is physically gone (≤ COMPACTED).
    pub(in crate::ssot::sled_store) const SWEPT: &str = "swept";
    pub(in crate::ssot::sled_store) const NEXT_LEASE: &str = "next_lease";
    /// Sequence number of the last log record applied to the tree.
    pub(in crate::ssot::sled_store) const LOG_SEQ: &str = "wal_seq";
}

pub(super) fn meta(name: &str) -> Vec<u8> {
    prefixed(META, name.as_bytes())
}

pub(super) fn cur(key: &[u8]) -> Vec<u8> {
    prefixed(CUR, key)
}

/// `h key 0`: every history entry of `key` starts with this.
pub(super) fn hist_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = prefixed(HIST, key);
    out.push(0);
    out
}

pub(super) fn hist(key: &[u8], revision: Revision) -> Vec<u8> {
    let mut out = hist_prefix(key);
    out.extend_from_slice(&revision.to_be_bytes());
    out
}

/// Splits a history key into the user key and the revision.
pub(super) fn parse_hist(raw: &[u8]) -> Option<(&[u8], Revision)> {
    if raw.len() < 10 || raw[0] != HIST || raw[raw.len() - 9] != 0 {
        return None;
    }
    let (key, rev) = raw[1..].split_at(raw.len() - 10);
    let rev = Revision::from_be_bytes(rev[1..].try_into().ok()?);
    Some((key, rev))
}

/// `r rev`: the revision record of the group commit whose last revision is `revision`.
pub(super) fn rev(revision: Revision) -> Vec<u8> {
    prefixed(REVS, &revision.to_be_bytes())
}

pub(super) fn parse_rev(raw: &[u8]) -> Option<Revision> {
    Some(Revision::from_be_bytes(raw.get(1..9)?.try_into().ok()?))
}

pub(super) fn lease(id: LeaseId) -> Vec<u8> {
    prefixed(LEASE, &id.to_be_bytes())
}

pub(super) fn parse_lease(raw: &[u8]) -> Option<LeaseId> {
    Some(LeaseId::from_be_bytes(raw.get(1..9)?.try_into().ok()?))
}

/// `o lease key`: `key` is attached to `lease`.
pub(super) fn lease_key(id: LeaseId, key: &[u8]) -> Vec<u8> {
    let mut out = prefixed(LEASE_KEY, &id.to_be_bytes());
    out.extend_from_slice(key);
    out
}

pub(super) fn parse_lease_key(raw: &[u8]) -> Option<(LeaseId, &[u8])> {
    Some((LeaseId::from_be_bytes(raw.get(1..9)?.try_into().ok()?), raw.get(9..)?))
}

pub(super) fn prefixed(tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rest.len() + 1);
    out.push(tag);
    out.extend_from_slice(rest);
    out
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct KvRecord {
    #[serde(with = "serde_bytes")]
    pub(super) value: Vec<u8>,
    pub(super) create_revision: Revision,
    pub(super) mod_revision: Revision,
    pub(super) version: u64,
    pub(super) lease: LeaseId,
    /// Who made the revision that wrote this value.
    pub(super) actor: String,
}

impl KvRecord {
    pub(super) fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
            modified_by: self.actor,
        }
    }
}

/// The revisions of one group commit, in order, each with the keys it
/// changed (in the order of its events).
pub(super) type RevisionGroup = Vec<(Revision, Vec<serde_bytes::ByteBuf>)>;

/// A key's current state without its value (the `k` record): what the
/// writer compares and a read needs to find the value in history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct KvMeta {
    pub(super) create_revision: Revision,
    pub(super) mod_revision: Revision,
    pub(super) version: u64,
    pub(super) lease: LeaseId,
}

impl KvRecord {
    pub(super) fn meta(&self) -> KvMeta {
        KvMeta {
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct LeaseRecord {
    pub(super) ttl_ms: u64,
    pub(super) deadline_ms: i64,
}

impl LeaseRecord {
    pub(super) fn info(&self, id: LeaseId) -> LeaseInfo {
        LeaseInfo { id, ttl: Duration::from_millis(self.ttl_ms), deadline_ms: self.deadline_ms }
    }
}

pub(super) fn delete_event(key: Vec<u8>, revision: Revision) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key,
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: 0,
            modified_by: String::new(),
        },
    }
}

pub(super) fn history_event(key: Vec<u8>, revision: Revision, record: Option<KvRecord>) -> Event {
    match record {
        Some(record) => Event { kind: EventKind::Put, kv: record.into_kv(key) },
        None => delete_event(key, revision),
    }
}

/// The encoding of `Some(record)` given the encoding of `record`: postcard
/// writes an `Option` as a 0/1 tag followed by the value.
pub(super) fn as_some(encoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded.len() + 1);
    out.push(1);
    out.extend_from_slice(encoded);
    out
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail.
    postcard::to_stdvec(value).expect("postcard encodes plain structs")
}

pub(super) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    Ok(postcard::from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_encodings_agree() {
        let record = KvRecord {
            value: b"{\"v\":1}".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            lease: 7,
            actor: "alice".into(),
        };
        let encoded = encode(&record);
        assert_eq!(as_some(&encoded), encode(&Some(&record)), "history entries are Some(record)");
        let meta: KvMeta = decode(&encode(&record.meta())).unwrap();
        assert_eq!((meta.create_revision, meta.mod_revision, meta.version, meta.lease), (3, 9, 4, 7));
        let round: Option<KvRecord> = decode(&as_some(&encoded)).unwrap();
        let round = round.unwrap();
        assert_eq!((round.value, round.actor.as_str()), (record.value, "alice"));
    }

    #[test]
    fn keys_parse_back() {
        let raw = hist(b"p/x/requirements/0000000001", 42);
        assert_eq!(parse_hist(&raw), Some((&b"p/x/requirements/0000000001"[..], 42)));
        assert_eq!(parse_rev(&rev(7)), Some(7));
        assert!(parse_hist(b"hshort").is_none());
        assert_eq!(parse_lease(&lease(9)), Some(9));
        assert_eq!(parse_lease_key(&lease_key(9, b"p/a")), Some((9, &b"p/a"[..])));
    }
}
