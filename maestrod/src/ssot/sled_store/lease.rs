//! Leases: a TTL with a wall-clock deadline, and the keys attached to it,
//! which are deleted (one revision) when it is revoked or expires. The writer
//! owns them; deadlines survive restarts because the record holds the
//! deadline, not the time left.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tracing::{info, warn};

use super::layout::{self, LeaseRecord, decode, encode, meta};
use super::wal::WalOp;
use super::writer::{Group, Writer};
use crate::ssot::clock::now_ms;
use crate::ssot::store::{LeaseId, LeaseInfo, Revision, StoreError, check_lease_ttl};

/// The leases and the keys attached to each, as stored.
pub(super) type Loaded = (HashMap<LeaseId, LeaseRecord>, HashMap<LeaseId, BTreeSet<Vec<u8>>>);

/// Reads every lease and its keys (the `l` and `o` key spaces: as many
/// records as there are leases and leased keys, however long the history).
pub(super) fn load(tree: &sled::Tree) -> Result<Loaded, StoreError> {
    let corrupt = || StoreError::Backend("corrupt lease key".into());
    let mut leases = HashMap::new();
    for item in tree.scan_prefix([layout::LEASE]) {
        let (raw_key, raw) = item?;
        leases.insert(layout::parse_lease(&raw_key).ok_or_else(corrupt)?, decode::<LeaseRecord>(&raw)?);
    }
    let mut keys: HashMap<LeaseId, BTreeSet<Vec<u8>>> = HashMap::new();
    for item in tree.scan_prefix([layout::LEASE_KEY]) {
        let (raw_key, _) = item?;
        let (lease, key) = layout::parse_lease_key(&raw_key).ok_or_else(corrupt)?;
        keys.entry(lease).or_default().insert(key.to_vec());
    }
    Ok((leases, keys))
}

impl Writer {
    pub(super) fn next_deadline(&self) -> Option<i64> {
        self.leases.lock().expect("lease mutex poisoned").values().map(|l| l.deadline_ms).min()
    }

    pub(super) fn grant(&mut self, group: &mut Group, ttl: Duration) -> Result<LeaseInfo, StoreError> {
        check_lease_ttl(ttl)?;
        let id = self.next_lease;
        self.next_lease += 1;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let record = LeaseRecord { ttl_ms, deadline_ms: now_ms() + ttl_ms as i64 };
        group.ops.push(WalOp::put(layout::meta(meta::NEXT_LEASE), encode(&self.next_lease)));
        group.ops.push(WalOp::put(layout::lease(id), encode(&record)));
        self.leases.lock().expect("lease mutex poisoned").insert(id, record);
        Ok(record.info(id))
    }

    pub(super) fn keep_alive(&mut self, group: &mut Group, id: LeaseId) -> Result<LeaseInfo, StoreError> {
        let mut leases = self.leases.lock().expect("lease mutex poisoned");
        let record = leases.get_mut(&id).ok_or(StoreError::LeaseNotFound(id))?;
        record.deadline_ms = now_ms() + record.ttl_ms as i64;
        let record = *record;
        drop(leases);
        group.ops.push(WalOp::put(layout::lease(id), encode(&record)));
        Ok(record.info(id))
    }

    pub(super) fn attach(&mut self, group: &mut Group, lease: LeaseId, key: &[u8]) {
        if lease != 0 {
            self.lease_keys.entry(lease).or_default().insert(key.to_vec());
            group.ops.push(WalOp::put(layout::lease_key(lease, key), Vec::new()));
        }
    }

    pub(super) fn detach(&mut self, group: &mut Group, lease: LeaseId, key: &[u8]) {
        if lease == 0 {
            return;
        }
        group.ops.push(WalOp::remove(layout::lease_key(lease, key)));
        if let Some(keys) = self.lease_keys.get_mut(&lease) {
            keys.remove(key);
            if keys.is_empty() {
                self.lease_keys.remove(&lease);
            }
        }
    }

    pub(super) fn revoke(&mut self, group: &mut Group, id: LeaseId) -> Result<Revision, StoreError> {
        if self.leases.lock().expect("lease mutex poisoned").remove(&id).is_none() {
            return Err(StoreError::LeaseNotFound(id));
        }
        group.ops.push(WalOp::remove(layout::lease(id)));
        let keys = self.lease_keys.get(&id).cloned().unwrap_or_default();
        let plan = keys.into_iter().map(|k| (k, None)).collect();
        self.commit_changes(group, plan, None)
    }

    pub(super) fn expire_leases(&mut self, group: &mut Group) {
        let now = now_ms();
        let due: Vec<LeaseId> = self
            .leases
            .lock()
            .expect("lease mutex poisoned")
            .iter()
            .filter(|(_, l)| l.deadline_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            match self.revoke(group, id) {
                Ok(revision) => info!(lease = id, revision, "lease expired"),
                Err(error) => warn!(lease = id, %error, "expiring lease failed"),
            }
        }
    }
}
