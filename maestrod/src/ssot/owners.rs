//! Daemons sharing one SSOT, and which of them runs each project's loop.
//!
//! - `daemons/<id>`: a daemon's registration, attached to its lease.
//! - `project-runs/<project>`: the loop running in a project and the daemon
//!   that runs it, attached to that daemon's lease. Taking it is taking the
//!   loop: at most one loop runs per project, and one daemon runs it. When the
//!   daemon's lease ends (it died, or was cut off longer than its TTL) the
//!   store deletes the key, and any daemon may take the loop again. The key's
//!   revision is the fence of the loop's writes (`fence.rs`).

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::clock::now_ms;
use super::store::{self, Compare, LeaseId, Op, Revision, StoreError, Txn, TxnResponse};
use super::{Result, Ssot, SsotError, Versioned, validate};

const DAEMONS: &str = "daemons/";
const RUNS: &str = "project-runs/";

/// A daemon of this SSOT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub id: String,
    /// Where clients reach it (its `--listen`).
    pub address: String,
    pub host: String,
    pub pid: u32,
    pub lease: LeaseId,
    pub start_time_ms: i64,
}

/// Who runs a project's loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub loop_id: String,
    pub daemon: String,
    pub address: String,
    pub lease: LeaseId,
    pub since_ms: i64,
}

/// A loop this daemon runs: the owner record and the revision it was written
/// at (the fence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub project: String,
    pub owner: Owner,
    pub revision: Revision,
}

impl Ownership {
    pub fn key(&self) -> Vec<u8> {
        run_key(&self.project).into_bytes()
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Owned(Ownership),
    /// The project's loop is run by someone (maybe this loop, by another
    /// daemon), as written at `revision`.
    Busy {
        owner: Owner,
        revision: Revision,
    },
}

fn run_key(project: &str) -> String {
    format!("{RUNS}{project}")
}

fn lease_gone(error: StoreError) -> SsotError {
    match error {
        StoreError::LeaseNotFound(id) => SsotError::not_found("lease", id.to_string()),
        other => other.into(),
    }
}

impl Ssot {
    /// Registers a daemon; the record lives as long as its lease.
    pub async fn register_daemon(&self, info: &DaemonInfo) -> Result<()> {
        validate::text("daemon", &info.id, 256, true)?;
        let txn = Txn::new().then(Op::Put {
            key: format!("{DAEMONS}{}", info.id).into_bytes(),
            value: super::encode_json(info),
            lease: info.lease,
        });
        self.store.txn(txn).await.map_err(lease_gone)?;
        Ok(())
    }

    /// The daemons whose leases are alive.
    pub async fn daemons(&self) -> Result<Vec<DaemonInfo>> {
        let (all, _) = self.scan_all::<DaemonInfo>(DAEMONS, 0).await?;
        Ok(all.into_iter().map(|d| d.value).collect())
    }

    /// Who runs `project`'s loop now.
    pub async fn project_runner(&self, project: &str) -> Result<Option<Versioned<Owner>>> {
        self.get(&run_key(project), 0).await
    }

    /// Takes `project`'s loop `owner.loop_id` for `owner.daemon` on its lease,
    /// unless someone runs the project's loop. Claiming what the same lease
    /// already holds answers with that ownership.
    pub async fn claim_loop(&self, project: &str, owner: Owner) -> Result<Claim> {
        let key = run_key(project);
        for attempt in 0..super::RETRIES {
            if let Some(current) = self.get::<Owner>(&key, 0).await? {
                if current.value.lease == owner.lease && current.value.loop_id == owner.loop_id {
                    let revision = current.meta.mod_revision;
                    return Ok(Claim::Owned(Ownership { project: project.into(), owner: current.value, revision }));
                }
                return Ok(Claim::Busy { owner: current.value, revision: current.meta.mod_revision });
            }
            let owner = Owner { since_ms: now_ms(), ..owner.clone() };
            let txn = Txn::new().when(Compare::absent(key.as_str())).then(Op::Put {
                key: key.clone().into_bytes(),
                value: super::encode_json(&owner),
                lease: owner.lease,
            });
            match self.store.txn(txn).await.map_err(lease_gone)? {
                TxnResponse::Committed { revision } => {
                    return Ok(Claim::Owned(Ownership { project: project.into(), owner, revision }));
                }
                TxnResponse::CompareFailed { .. } => super::after_lost_race(attempt).await,
            }
        }
        Err(super::lost_race("loop owner", project))
    }

    /// Gives the loop up (nothing happens when the ownership is already gone).
    pub async fn release_loop(&self, ownership: &Ownership) -> Result<()> {
        let key = run_key(&ownership.project);
        let txn = Txn::new().when(Compare::mod_revision(key.as_str(), ownership.revision)).then(Op::delete(key));
        self.store.txn(txn).await?;
        Ok(())
    }

    /// Deletes `project`'s run if it is still as written at `revision` (a run
    /// left behind: its loop ended, or its daemon let go of it without deleting it).
    pub async fn release_run(&self, project: &str, revision: Revision) -> Result<bool> {
        let key = run_key(project);
        let txn = Txn::new().when(Compare::mod_revision(key.as_str(), revision)).then(Op::delete(key));
        Ok(matches!(self.store.txn(txn).await?, TxnResponse::Committed { .. }))
    }

    /// The compare that holds while `project`'s run is as read (absent: 0).
    pub fn run_unchanged(project: &str, revision: Revision) -> Compare {
        Compare::mod_revision(run_key(project), revision)
    }

    /// Projects whose runner went away (a loop ended, or its daemon's lease did), as they go.
    pub fn follow_released_runs(&self) -> Result<BoxStream<'static, Result<String>>> {
        self.follow(RUNS, 0, store::EventKind::Delete, |kv| {
            Some(Ok(String::from_utf8_lossy(&kv.key[RUNS.len()..]).into_owned()))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::ssot::fence::{self, Fence, Tenure};
    use crate::ssot::loops::{LoopRecord, LoopState};
    use crate::ssot::sled_store::{SledOptions, SledStore};

    fn owner(loop_id: &str, daemon: &str, lease: LeaseId) -> Owner {
        Owner { loop_id: loop_id.into(), daemon: daemon.into(), address: String::new(), lease, since_ms: 0 }
    }

    /// The store refuses a fenced write once the ownership is gone, even while
    /// the writer's own clock still says its lease is alive (a clock that lies,
    /// a partition): the compare, not the clock, is what holds.
    #[tokio::test]
    async fn a_loop_write_after_its_run_passed_to_another_daemon_is_refused_by_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let ssot =
            Ssot::new(Arc::new(SledStore::open(dir.path(), SledOptions::default()).unwrap()), Default::default());
        ssot.create_project("p", "", "").await.unwrap();
        let record = ssot.create_loop(LoopRecord::new("p", "task", "/w", false, 0), vec![]).await.unwrap();
        let (a, b) = (ssot.grant_lease(60).await.unwrap().id, ssot.grant_lease(60).await.unwrap().id);

        let Claim::Owned(mine) = ssot.claim_loop("p", owner(&record.id, "a", a)).await.unwrap() else { panic!() };
        assert_eq!(ssot.claim_loop("p", owner(&record.id, "a", a)).await.unwrap(), Claim::Owned(mine.clone()));
        let Claim::Busy { owner: held, .. } = ssot.claim_loop("p", owner(&record.id, "b", b)).await.unwrap() else {
            panic!()
        };
        assert_eq!(held.daemon, "a", "one daemon runs a project's loop");

        let fence = Fence {
            loop_id: record.id.clone(),
            key: mine.key(),
            revision: mine.revision,
            tenure: Tenure::new(fence::now(), Duration::from_secs(3600)),
        };
        let mut running = record.clone();
        running.state = LoopState::Running;
        let saved = fence::scope(fence.clone(), ssot.save_loop(running.clone(), vec![])).await.unwrap();
        assert_eq!(saved.state, LoopState::Running, "the owner writes");

        // a's lease ends (as after a freeze), and b takes the loop.
        ssot.revoke_lease(a).await.unwrap();
        let Claim::Owned(theirs) = ssot.claim_loop("p", owner(&record.id, "b", b)).await.unwrap() else { panic!() };
        assert!(theirs.revision > mine.revision);
        let mut stale = saved.clone();
        stale.state = LoopState::Failed;
        let refused = fence::scope(fence.clone(), ssot.save_loop(stale, vec![])).await.unwrap_err();
        assert!(matches!(refused, SsotError::Fenced(_)), "{refused:?}");
        assert_eq!(ssot.get_loop(&record.id).await.unwrap().value.state, LoopState::Running, "nothing was written");
        // Lease calls of a loop whose tenure ended are refused before they reach the store.
        fence.tenure.end();
        let lease = fence::scope(fence.clone(), ssot.grant_lease(5)).await.unwrap_err();
        assert!(matches!(lease, SsotError::Fenced(_)), "{lease:?}");

        // Releasing with a stale ownership leaves the new owner's run alone.
        ssot.release_loop(&mine).await.unwrap();
        assert_eq!(ssot.project_runner("p").await.unwrap().unwrap().value.daemon, "b");
        ssot.release_loop(&theirs).await.unwrap();
        assert!(ssot.project_runner("p").await.unwrap().is_none());
    }
}
