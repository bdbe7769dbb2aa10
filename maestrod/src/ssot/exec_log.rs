//! The append-only execution log. Entries are numbered 1, 2, 3, … per project
//! and each carries the SHA-256 of the previous one; `verify_log` recomputes
//! the chain. There is deliberately no update or delete.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::clock::now_ms;
use super::store::{Compare, Op, Txn};
use super::{Page, Result, Ssot, SsotError, Versioned, encode_json, keys, validate};

const PREFIX: &str = "log/";
const HEAD: &str = "_meta/log_head";
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewLogEntry {
    pub loop_id: String,
    pub epoch: u64,
    pub agent: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub tokens: u64,
    pub duration_ms: u64,
    pub detail: String,
    /// The requirement the agent worked on (model calls), when known.
    /// Left out of the encoding when empty or zero, so entries written before
    /// these fields existed keep their hashes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub requirement: String,
    /// A model call's prompt and completion tokens (`tokens` is their sum).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens_in: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens_out: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub seq: u64,
    pub time_ms: i64,
    #[serde(flatten)]
    pub body: NewLogEntry,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

/// What the hash covers: every field but the hash itself, in a fixed order.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time_ms: i64,
    body: &'a NewLogEntry,
    prev_hash: &'a str,
}

fn entry_hash(seq: u64, time_ms: i64, body: &NewLogEntry, prev_hash: &str) -> String {
    let canonical = encode_json(&Hashed { seq, time_ms, body, prev_hash });
    let digest = Sha256::digest(&canonical);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn entry_key(project: &str, seq: u64) -> String {
    keys::in_project(project, &format!("{PREFIX}{seq:020}"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub entries: u64,
    pub first_bad_seq: u64,
    pub problem: String,
    pub head_hash: String,
}

fn check_entry(entry: &NewLogEntry) -> Result<()> {
    validate::text("action", &entry.action, 128, true)?;
    validate::text("agent", &entry.agent, 128, false)?;
    validate::text("loop_id", &entry.loop_id, 128, false)?;
    validate::text("target", &entry.target, 4096, false)?;
    validate::text("outcome", &entry.outcome, 128, false)?;
    validate::text("requirement", &entry.requirement, 128, false)?;
    validate::text("detail", &entry.detail, 64 << 10, false)
}

impl Ssot {
    fn appender(&self, project: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut appenders = self.log_appenders.lock().expect("appender mutex poisoned");
        appenders.entry(project.to_string()).or_default().clone()
    }

    pub async fn append_log(&self, project: &str, entry: NewLogEntry) -> Result<Versioned<LogEntry>> {
        check_entry(&entry)?;
        let appender = self.appender(project);
        let _serialized = appender.lock().await;
        for attempt in 0..super::RETRIES {
            let guard = self.project_guard(project).await?;
            let head_key = keys::in_project(project, HEAD);
            let (head, head_rev) = match self.get::<Head>(&head_key, 0).await? {
                Some(found) => (found.value, found.meta.mod_revision),
                None => (Head { seq: 0, hash: GENESIS_HASH.to_string() }, 0),
            };
            let seq = head.seq + 1;
            let time_ms = now_ms();
            let hash = entry_hash(seq, time_ms, &entry, &head.hash);
            let record = LogEntry { seq, time_ms, body: entry.clone(), prev_hash: head.hash, hash: hash.clone() };
            let txn = Txn::new()
                .when(guard)
                .when(Compare::mod_revision(head_key.as_str(), head_rev))
                .then(Op::put(head_key, encode_json(&Head { seq, hash })))
                .then(Op::put(entry_key(project, seq), encode_json(&record)));
            match self.commit(txn).await? {
                Ok(revision) => {
                    return Ok(Versioned { value: record, meta: super::Meta::created(revision) });
                }
                Err((0, _)) => return Err(SsotError::not_found("project", project)),
                Err(_) => super::after_lost_race(attempt).await,
            }
        }
        Err(super::lost_race("execution log of", project))
    }

    pub async fn list_log(
        &self,
        project: &str,
        from_seq: u64,
        agent: &str,
        loop_id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<LogEntry>> {
        self.project_guard(project).await?;
        let prefix = keys::in_project(project, PREFIX);
        // Starting at a sequence number is a page token that points just before it.
        let token = if page_token.is_empty() && from_seq > 1 {
            let revision = self.store.current_revision().await?.max(1);
            super::paging::PageToken { revision, after: entry_key(project, from_seq - 1).into_bytes() }.encode()
        } else {
            page_token.to_string()
        };
        self.page(&prefix, page_size, &token, 0, |e: &Versioned<LogEntry>| {
            (agent.is_empty() || e.value.body.agent == agent) && (loop_id.is_empty() || e.value.body.loop_id == loop_id)
        })
        .await
    }

    /// The newest entries of the log that `keep` accepts, oldest first: at most
    /// `limit` of them, looking back over at most `window` entries.
    pub async fn recent_log(
        &self,
        project: &str,
        limit: usize,
        window: u64,
        keep: impl Fn(&LogEntry) -> bool,
    ) -> Result<Vec<LogEntry>> {
        self.project_guard(project).await?;
        let head = self.get::<Head>(&keys::in_project(project, HEAD), 0).await?.map_or(0, |h| h.value.seq);
        let mut found = Vec::new();
        let mut end = head;
        let floor = head.saturating_sub(window);
        // Newest first, in chunks, until enough entries are kept or the window ends.
        while end > floor && found.len() < limit {
            let start = end.saturating_sub(256).max(floor) + 1;
            let request = super::store::RangeRequest {
                start: entry_key(project, start).into_bytes(),
                end: entry_key(project, end + 1).into_bytes(),
                revision: 0,
                limit: 0,
                ..Default::default()
            };
            let chunk = self.store.range(request).await?;
            for kv in chunk.kvs.iter().rev() {
                let entry = super::decode_versioned::<LogEntry>(kv)?.value;
                if keep(&entry) {
                    found.push(entry);
                    if found.len() == limit {
                        break;
                    }
                }
            }
            end = start - 1;
        }
        found.reverse();
        Ok(found)
    }

    /// Recomputes every hash and link of the project's log.
    pub async fn verify_log(&self, project: &str) -> Result<Verification> {
        self.project_guard(project).await?;
        let head_key = keys::in_project(project, HEAD);
        let revision = self.store.current_revision().await?;
        let head = self.get::<Head>(&head_key, revision).await?.map(|h| h.value);
        let mut prev = GENESIS_HASH.to_string();
        let mut count = 0;
        let mut after: Option<Vec<u8>> = None;
        let prefix = keys::in_project(project, PREFIX);
        let bad = |seq: u64, problem: String, count: u64| Verification {
            entries: count,
            first_bad_seq: seq,
            problem,
            head_hash: String::new(),
        };
        loop {
            let (chunk, more, _) = self.scan::<LogEntry>(&prefix, after.as_deref(), revision, 1024).await?;
            for (key, entry) in &chunk {
                let entry = &entry.value;
                let expected_seq = count + 1;
                if entry.seq != expected_seq {
                    return Ok(bad(
                        expected_seq,
                        format!("entry {expected_seq} is missing (found {})", entry.seq),
                        count,
                    ));
                }
                if entry.prev_hash != prev {
                    return Ok(bad(
                        entry.seq,
                        format!("entry {} does not link to the hash of entry {}", entry.seq, count),
                        count,
                    ));
                }
                if entry_hash(entry.seq, entry.time_ms, &entry.body, &entry.prev_hash) != entry.hash {
                    return Ok(bad(entry.seq, format!("entry {} does not match its hash", entry.seq), count));
                }
                prev.clone_from(&entry.hash);
                count += 1;
                after = Some(key.clone().into_bytes());
            }
            if !more {
                break;
            }
        }
        match head {
            Some(head) if head.seq != count || head.hash != prev => Ok(bad(
                count + 1,
                format!("the log ends at entry {count} but its head records entry {}", head.seq),
                count,
            )),
            None if count > 0 => Ok(bad(1, "the log has entries but no head".into(), count)),
            _ => Ok(Verification { entries: count, first_bad_seq: 0, problem: String::new(), head_hash: prev }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_every_field() {
        let body = NewLogEntry { action: "write_file".into(), target: "src/api/x.py".into(), ..NewLogEntry::default() };
        let base = entry_hash(1, 1000, &body, GENESIS_HASH);
        assert_eq!(base.len(), 64);
        assert_eq!(base, entry_hash(1, 1000, &body, GENESIS_HASH));
        assert_ne!(base, entry_hash(2, 1000, &body, GENESIS_HASH));
        assert_ne!(base, entry_hash(1, 1001, &body, GENESIS_HASH));
        let mut changed = body.clone();
        changed.outcome = "denied".into();
        assert_ne!(base, entry_hash(1, 1000, &changed, GENESIS_HASH));
        assert_ne!(base, entry_hash(1, 1000, &body, &base));
        for change in [
            |e: &mut NewLogEntry| e.requirement = "R2".into(),
            |e: &mut NewLogEntry| e.tokens_in = 1,
            |e: &mut NewLogEntry| e.tokens_out = 1,
        ] {
            let mut changed = body.clone();
            change(&mut changed);
            assert_ne!(base, entry_hash(1, 1000, &changed, GENESIS_HASH));
        }
    }

    #[test]
    fn entries_written_before_the_usage_fields_keep_their_hashes() {
        // The hash of an entry as an older daemon wrote it (no requirement, no
        // token split): the chain of an existing log still verifies.
        let body = NewLogEntry {
            loop_id: "loop-1".into(),
            epoch: 1,
            agent: "backend-1".into(),
            action: "write_file".into(),
            target: "src/api/x.py".into(),
            outcome: "ok".into(),
            tokens: 0,
            duration_ms: 3,
            detail: "allowed".into(),
            ..NewLogEntry::default()
        };
        // The structs as they were, field for field.
        #[derive(Serialize)]
        struct OldBody<'a> {
            loop_id: &'a str,
            epoch: u64,
            agent: &'a str,
            action: &'a str,
            target: &'a str,
            outcome: &'a str,
            tokens: u64,
            duration_ms: u64,
            detail: &'a str,
        }
        #[derive(Serialize)]
        struct OldHashed<'a> {
            seq: u64,
            time_ms: i64,
            body: OldBody<'a>,
            prev_hash: &'a str,
        }
        let old = OldHashed {
            seq: 7,
            time_ms: 1000,
            body: OldBody {
                loop_id: "loop-1",
                epoch: 1,
                agent: "backend-1",
                action: "write_file",
                target: "src/api/x.py",
                outcome: "ok",
                tokens: 0,
                duration_ms: 3,
                detail: "allowed",
            },
            prev_hash: GENESIS_HASH,
        };
        let digest = Sha256::digest(serde_json::to_vec(&old).unwrap());
        let expected: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(entry_hash(7, 1000, &body, GENESIS_HASH), expected);
    }
}
