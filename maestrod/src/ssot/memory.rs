//! Per-agent memory: small notes with optional expiry. Each agent holds at
//! most `Limits::memory_entries_per_agent` entries and
//! `Limits::memory_bytes_per_agent` bytes of stored records; a put beyond
//! that evicts the agent's least recently written entries (expired ones
//! first). Expired entries are invisible at once and swept periodically.

use serde::{Deserialize, Serialize};

use super::clock::now_ms;
use super::store::{Compare, KeyValue, Op, RangeRequest, Revision, Txn};
use super::{Meta, Page, Result, Ssot, SsotError, Versioned, check_etag, encode_json, keys, validate};

const KIND: &str = "memory entry";
const PREFIX: &str = "memory/";
pub const MAX_VALUE_LEN: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEntry {
    pub agent: String,
    pub key: String,
    pub value: String,
    /// Unix milliseconds; 0 means never.
    pub expire_time_ms: i64,
    pub update_time_ms: i64,
}

impl MemoryEntry {
    pub fn expired(&self, now: i64) -> bool {
        self.expire_time_ms != 0 && self.expire_time_ms <= now
    }
}

fn agent_prefix(project: &str, agent: &str) -> String {
    keys::in_project(project, &format!("{PREFIX}{agent}/"))
}

fn entry_key(project: &str, agent: &str, key: &str) -> String {
    format!("{}{key}", agent_prefix(project, agent))
}

fn check_key(key: &str) -> Result<()> {
    validate::text("key", key, 256, true)?;
    if key.chars().any(char::is_control) {
        return Err(SsotError::invalid("key", "must not contain control characters"));
    }
    Ok(())
}

impl Ssot {
    pub async fn put_memory(
        &self,
        project: &str,
        agent: &str,
        key: &str,
        value: &str,
        ttl_seconds: u64,
        etag: &str,
    ) -> Result<Versioned<MemoryEntry>> {
        validate::ident("agent", agent, 64)?;
        check_key(key)?;
        validate::text("value", value, MAX_VALUE_LEN, false)?;
        if ttl_seconds > 365 * 86_400 {
            return Err(SsotError::invalid("ttl_seconds", "must be at most one year"));
        }
        let expected = validate::etag(etag)?;
        let id = format!("{agent}/{key}");
        let own_key = entry_key(project, agent, key);
        if value.len() > self.limits.memory_bytes_per_agent {
            return Err(SsotError::ResourceExhausted(format!(
                "value: {} bytes exceed agent {agent}'s memory limit of {} bytes",
                value.len(),
                self.limits.memory_bytes_per_agent
            )));
        }
        for attempt in 0..super::RETRIES {
            let now = now_ms();
            let current = self.get::<MemoryEntry>(&own_key, 0).await?;
            // Updating an entry needs no project guard: deleting the project deletes
            // the entry, which fails the compare on it. Creating one does.
            let guard = match current {
                Some(_) => None,
                None => Some(self.project_guard(project).await?),
            };
            let current = current.as_ref();
            // An expired entry counts as absent, but its revision is what the store compares.
            let visible_rev = current.filter(|e| !e.value.expired(now)).map_or(0, |e| e.meta.mod_revision);
            check_etag(KIND, &id, expected, visible_rev)?;
            let entry = MemoryEntry {
                agent: agent.to_string(),
                key: key.to_string(),
                value: value.to_string(),
                expire_time_ms: if ttl_seconds == 0 { 0 } else { now + (ttl_seconds as i64) * 1000 },
                update_time_ms: now,
            };
            let record = encode_json(&entry);
            let mut txn =
                Txn::new().when(Compare::mod_revision(own_key.as_str(), current.map_or(0, |e| e.meta.mod_revision)));
            let guarded = guard.is_some();
            txn.compares.extend(guard);
            // Replacing an entry with one no larger cannot break a bound: skip the scan.
            let grows = current.is_none_or(|c| record.len() > encode_json(&c.value).len());
            if grows {
                for (victim_key, victim_rev) in self.memory_victims(&own_key, project, agent, record.len(), now).await?
                {
                    txn = txn.when(Compare::mod_revision(victim_key.as_str(), victim_rev)).then(Op::delete(victim_key));
                }
            }
            let txn = txn.then(Op::put(own_key.as_str(), record));
            match self.commit(txn).await? {
                Ok(revision) => {
                    let meta = match current {
                        Some(c) => Meta {
                            mod_revision: revision,
                            version: c.meta.version + 1,
                            modified_by: super::actor::current_or_daemon(),
                            ..c.meta
                        },
                        None => Meta::created(revision),
                    };
                    return Ok(Versioned { value: entry, meta });
                }
                Err((1, _)) if guarded => return Err(SsotError::not_found("project", project)),
                Err((0, current)) if expected.is_some() => {
                    return Err(SsotError::StaleEtag {
                        kind: KIND,
                        id,
                        expected: expected.unwrap_or_default(),
                        current,
                    });
                }
                Err(_) => super::after_lost_race(attempt).await,
            }
        }
        Err(super::lost_race(KIND, &id))
    }

    /// The entries to evict (key, mod revision) so that the agent stays within
    /// its bounds after writing `own_key` with a record of `new_len` bytes:
    /// expired entries first, then the least recently written. Sizes are of
    /// the stored records. Only decodes entries when a bound is exceeded.
    async fn memory_victims(
        &self,
        own_key: &str,
        project: &str,
        agent: &str,
        new_len: usize,
        now: i64,
    ) -> Result<Vec<(String, Revision)>> {
        let held = self.store.range(RangeRequest::prefix(agent_prefix(project, agent)).without_authors()).await?.kvs;
        let others: Vec<&KeyValue> = held.iter().filter(|kv| kv.key != own_key.as_bytes()).collect();
        let mut count = others.len() + 1;
        let mut bytes = others.iter().map(|kv| kv.value.len()).sum::<usize>() + new_len;
        let (max_count, max_bytes) = (self.limits.memory_entries_per_agent, self.limits.memory_bytes_per_agent);
        if count <= max_count && bytes <= max_bytes {
            return Ok(Vec::new());
        }
        let mut candidates = Vec::with_capacity(others.len());
        for kv in others {
            let expired = serde_json::from_slice::<MemoryEntry>(&kv.value).is_ok_and(|e| e.expired(now));
            candidates.push((!expired, kv.mod_revision, kv));
        }
        candidates.sort_by_key(|(live, revision, _)| (*live, *revision));
        let mut victims = Vec::new();
        for (_, revision, kv) in candidates {
            if count <= max_count && bytes <= max_bytes {
                break;
            }
            victims.push((String::from_utf8_lossy(&kv.key).into_owned(), revision));
            count -= 1;
            bytes -= kv.value.len();
        }
        Ok(victims)
    }

    pub async fn get_memory(&self, project: &str, agent: &str, key: &str) -> Result<Versioned<MemoryEntry>> {
        validate::ident("agent", agent, 64)?;
        check_key(key)?;
        let missing = || SsotError::not_found(KIND, format!("{agent}/{key}"));
        let found = self.get_in_project::<MemoryEntry>(project, &entry_key(project, agent, key), 0, missing).await?;
        if found.value.expired(now_ms()) {
            return Err(missing());
        }
        Ok(found)
    }

    pub async fn list_memory(
        &self,
        project: &str,
        agent: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<MemoryEntry>> {
        if !agent.is_empty() {
            validate::ident("agent", agent, 64)?;
        }
        self.project_guard(project).await?;
        let prefix = if agent.is_empty() { keys::in_project(project, PREFIX) } else { agent_prefix(project, agent) };
        let now = now_ms();
        self.page(&prefix, page_size, page_token, 0, |e: &Versioned<MemoryEntry>| !e.value.expired(now)).await
    }

    pub async fn delete_memory(&self, project: &str, agent: &str, key: &str, etag: &str) -> Result<Revision> {
        let current = self.get_memory(project, agent, key).await?;
        let expected = validate::etag(etag)?;
        let id = format!("{agent}/{key}");
        check_etag(KIND, &id, expected, current.meta.mod_revision)?;
        let own_key = entry_key(project, agent, key);
        let txn = Txn::new()
            .when(Compare::mod_revision(own_key.as_str(), current.meta.mod_revision))
            .then(Op::delete(own_key));
        match self.commit(txn).await? {
            Ok(revision) => Ok(revision),
            Err((_, 0)) => Err(SsotError::not_found(KIND, id)),
            Err((_, now)) => {
                Err(SsotError::StaleEtag { kind: KIND, id, expected: current.meta.mod_revision, current: now })
            }
        }
    }

    /// Deletes expired memory entries of every project; returns how many.
    pub async fn sweep_expired_memory(&self) -> Result<usize> {
        let now = now_ms();
        let mut removed = 0;
        let (projects, _) = self.scan_all::<super::projects::Project>(keys::PROJECTS, 0).await?;
        for project in projects {
            let prefix = keys::in_project(&project.value.id, PREFIX);
            let (entries, _, _) = self.scan::<MemoryEntry>(&prefix, None, 0, 0).await?;
            for (key, entry) in entries.into_iter().filter(|(_, e)| e.value.expired(now)) {
                let txn =
                    Txn::new().when(Compare::mod_revision(key.as_str(), entry.meta.mod_revision)).then(Op::delete(key));
                if self.commit(txn).await?.is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
