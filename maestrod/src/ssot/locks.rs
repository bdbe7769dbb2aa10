//! Named locks owned by leases (the LockManager). A lock is a key attached to
//! a lease: when the lease expires or is revoked, the store deletes the key,
//! which releases the lock and emits a watch event.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::now_ms;
use super::store::{Compare, LeaseId, LeaseInfo, Op, Revision, StoreError, Txn};
use super::{Meta, Page, Result, Ssot, SsotError, Versioned, keys, validate};

const KIND: &str = "lock";
const PREFIX: &str = "locks/";
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub name: String,
    pub holder: String,
    pub lease_id: LeaseId,
    pub acquire_time_ms: i64,
}

fn lock_key(project: &str, name: &str) -> String {
    keys::in_project(project, &format!("{PREFIX}{name}"))
}

fn check_name(name: &str) -> Result<()> {
    validate::text("name", name, 256, true)?;
    if name.chars().any(char::is_control) {
        return Err(SsotError::invalid("name", "must not contain control characters"));
    }
    Ok(())
}

/// `lease_error` of a domain error that came from the store.
fn store_lease_error(error: SsotError) -> SsotError {
    match error {
        SsotError::Store(store) => lease_error(store),
        other => other,
    }
}

/// Maps a store lease error to one that names the lease.
fn lease_error(error: StoreError) -> SsotError {
    match error {
        StoreError::LeaseNotFound(id) => SsotError::not_found("lease", id.to_string()),
        StoreError::InvalidArgument(reason) => SsotError::invalid("ttl_seconds", reason),
        other => other.into(),
    }
}

impl Ssot {
    pub async fn grant_lease(&self, ttl_seconds: u64) -> Result<LeaseInfo> {
        super::fence::check()?;
        if ttl_seconds == 0 {
            return Err(SsotError::invalid("ttl_seconds", "must be at least 1"));
        }
        self.store.lease_grant(Duration::from_secs(ttl_seconds)).await.map_err(lease_error)
    }

    pub async fn keep_alive(&self, lease: LeaseId) -> Result<LeaseInfo> {
        super::fence::check()?;
        self.store.lease_keep_alive(lease).await.map_err(lease_error)
    }

    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<Revision> {
        super::fence::check()?;
        self.store.lease_revoke(lease).await.map_err(lease_error)
    }

    /// Records the user a lease was granted to; the record is attached to the
    /// lease, so it ends with it.
    pub async fn set_lease_owner(&self, lease: LeaseId, owner: &str) -> Result<()> {
        let txn = Txn::new().then(Op::Put {
            key: keys::lease_owner(lease).into_bytes(),
            value: super::encode_json(&owner.to_string()),
            lease,
        });
        self.txn(txn).await.map_err(store_lease_error)?;
        Ok(())
    }

    /// The user a lease was granted to (`None`: granted by the daemon itself, or unknown).
    pub async fn lease_owner(&self, lease: LeaseId) -> Result<Option<String>> {
        Ok(self.get::<String>(&keys::lease_owner(lease), 0).await?.map(|v| v.value))
    }

    pub async fn get_lease(&self, lease: LeaseId) -> Result<LeaseInfo> {
        self.store.lease_get(lease).await.map_err(lease_error)
    }

    /// Takes the lock for `lease` (a new lease of `ttl_seconds` when 0). Taking a
    /// lock the same lease already holds succeeds; one held by another lease is
    /// a conflict that names the holder.
    pub async fn acquire_lock(
        &self,
        project: &str,
        name: &str,
        holder: &str,
        lease: LeaseId,
        ttl_seconds: u64,
    ) -> Result<(Versioned<Lock>, LeaseId)> {
        check_name(name)?;
        validate::text("holder", holder, 128, true)?;
        let guard = self.project_guard(project).await?;
        let key = lock_key(project, name);
        let (lease, granted) = if lease == 0 {
            let ttl = if ttl_seconds == 0 { DEFAULT_TTL.as_secs() } else { ttl_seconds };
            (self.grant_lease(ttl).await?.id, true)
        } else {
            self.get_lease(lease).await?;
            (lease, false)
        };
        let result = self.try_acquire(project, name, holder, lease, guard, &key).await;
        if result.is_err() && granted {
            // The lease was made for this lock only.
            let _ = self.store.lease_revoke(lease).await;
        }
        result.map(|lock| (lock, lease))
    }

    async fn try_acquire(
        &self,
        project: &str,
        name: &str,
        holder: &str,
        lease: LeaseId,
        guard: Compare,
        key: &str,
    ) -> Result<Versioned<Lock>> {
        if let Some(existing) = self.get::<Lock>(key, 0).await? {
            if existing.value.lease_id == lease {
                return Ok(existing);
            }
            return Err(self.held_error(name, &existing.value).await);
        }
        let lock =
            Lock { name: name.to_string(), holder: holder.to_string(), lease_id: lease, acquire_time_ms: now_ms() };
        let txn = Txn::new().when(guard).when(Compare::absent(key)).then(Op::Put {
            key: key.as_bytes().to_vec(),
            value: super::encode_json(&lock),
            lease,
        });
        match self.txn(txn).await.map_err(store_lease_error)? {
            super::store::TxnResponse::Committed { revision } => {
                Ok(Versioned { value: lock, meta: Meta::created(revision) })
            }
            super::store::TxnResponse::CompareFailed { index: 0, .. } => Err(SsotError::not_found("project", project)),
            super::store::TxnResponse::CompareFailed { .. } => match self.get::<Lock>(key, 0).await? {
                Some(existing) => Err(self.held_error(name, &existing.value).await),
                None => Err(SsotError::Conflict(format!("lock {name} changed hands while acquiring; try again"))),
            },
        }
    }

    async fn held_error(&self, name: &str, lock: &Lock) -> SsotError {
        let until = match self.store.lease_get(lock.lease_id).await {
            Ok(info) => format!(" until {} unless kept alive", humanize_ms(info.deadline_ms)),
            Err(_) => String::new(),
        };
        SsotError::Conflict(format!("lock {name} is held by {} (lease {}){until}", lock.holder, lock.lease_id))
    }

    /// Releases the lock; `lease` must be the one holding it.
    pub async fn release_lock(&self, project: &str, name: &str, lease: LeaseId) -> Result<Revision> {
        check_name(name)?;
        self.project_guard(project).await?;
        let key = lock_key(project, name);
        let existing = self.get::<Lock>(&key, 0).await?.ok_or_else(|| SsotError::not_found(KIND, name))?;
        if existing.value.lease_id != lease {
            return Err(SsotError::FailedPrecondition(format!(
                "lock {name} is held by lease {} ({}), not lease {lease}",
                existing.value.lease_id, existing.value.holder
            )));
        }
        let txn =
            Txn::new().when(Compare::mod_revision(key.as_str(), existing.meta.mod_revision)).then(Op::delete(key));
        match self.commit(txn).await? {
            Ok(revision) => Ok(revision),
            Err(_) => Err(SsotError::not_found(KIND, name)),
        }
    }

    pub async fn list_locks(&self, project: &str, page_size: i32, page_token: &str) -> Result<Page<Lock>> {
        self.project_guard(project).await?;
        self.page(&keys::in_project(project, PREFIX), page_size, page_token, 0, |_| true).await
    }
}

/// Unix milliseconds as RFC 3339 (UTC, seconds).
fn humanize_ms(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}
