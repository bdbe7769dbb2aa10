//! This daemon's membership of the SSOT: a registration on a lease of its
//! own, kept alive a few times per TTL. Each lease is one [`Term`]: the loops
//! the daemon runs are owned on it, and stop when it is lost (expired, or not
//! renewed in time); the daemon then joins again on a new lease.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ssot::fence::{self, Tenure};
use crate::ssot::owners::{DaemonInfo, Owner};
use crate::ssot::store::LeaseId;
use crate::ssot::{Result, Ssot, SsotError};

/// Who this daemon is to the others.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// Unique per process: `host-pid-random`.
    pub id: String,
    /// Where clients reach it.
    pub address: String,
    /// How long the daemon's loops outlive it: another daemon takes them once this passes.
    pub ttl: Duration,
    /// Where the lease id is kept, so a daemon restarted on its data dir takes its loops back at once.
    pub lease_file: Option<PathBuf>,
}

pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

fn host() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".into())
}

impl Default for MemberConfig {
    fn default() -> Self {
        let mut random = [0u8; 2];
        let _ = getrandom::fill(&mut random);
        MemberConfig {
            id: format!("{}-{}-{:04x}", host(), std::process::id(), u16::from_le_bytes(random)),
            address: String::new(),
            ttl: DEFAULT_TTL,
            lease_file: None,
        }
    }
}

/// One lease's worth of membership.
#[derive(Debug, Clone)]
pub struct Term {
    pub lease: LeaseId,
    pub tenure: Arc<Tenure>,
    /// Cancelled when the term ends: every loop run on it stops.
    pub stop: CancellationToken,
}

/// What a keep-alive found.
pub enum Renewal {
    Renewed,
    /// Not confirmed, but the lease may still be alive.
    Unconfirmed(SsotError),
    /// The lease is gone, or has run out by this daemon's clock.
    Lost(String),
}

pub struct Membership {
    ssot: Arc<Ssot>,
    config: MemberConfig,
    shutdown: CancellationToken,
    term: Mutex<Term>,
}

impl Membership {
    /// Registers the daemon on a new lease. The lease a previous run of this
    /// daemon left behind (killed) is revoked first: its loops are free at once.
    pub async fn join(ssot: Arc<Ssot>, config: MemberConfig, shutdown: CancellationToken) -> Result<Arc<Membership>> {
        let previous = config.lease_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok());
        if let Some(lease) = previous.and_then(|p| p.trim().parse::<LeaseId>().ok()) {
            match ssot.revoke_lease(lease).await {
                Ok(_) => info!(lease, "revoked the lease this daemon held before it stopped"),
                Err(SsotError::NotFound { .. }) => {}
                Err(error) => warn!(lease, %error, "cannot revoke this daemon's previous lease"),
            }
        }
        let term = Self::begin(&ssot, &config, &shutdown).await?;
        info!(daemon = %config.id, lease = term.lease, ttl = ?config.ttl, "joined the SSOT");
        Ok(Arc::new(Membership { ssot, config, shutdown, term: Mutex::new(term) }))
    }

    async fn begin(ssot: &Ssot, config: &MemberConfig, shutdown: &CancellationToken) -> Result<Term> {
        let sent = fence::now();
        let lease = ssot.grant_lease(config.ttl.as_secs().max(1)).await?;
        let info = DaemonInfo {
            id: config.id.clone(),
            address: config.address.clone(),
            host: host(),
            pid: std::process::id(),
            lease: lease.id,
            start_time_ms: crate::ssot::clock::now_ms(),
        };
        if let Err(error) = ssot.register_daemon(&info).await {
            let _ = ssot.revoke_lease(lease.id).await;
            return Err(error);
        }
        if let Some(file) = &config.lease_file {
            let temporary = file.with_extension("tmp");
            let written =
                std::fs::write(&temporary, lease.id.to_string()).and_then(|()| std::fs::rename(&temporary, file));
            if let Err(error) = written {
                warn!(file = %file.display(), %error, "cannot note the daemon's lease");
            }
        }
        Ok(Term { lease: lease.id, tenure: Tenure::new(sent, config.ttl), stop: shutdown.child_token() })
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    pub fn ttl(&self) -> Duration {
        self.config.ttl
    }

    /// The current term (maybe ended: see its token).
    pub fn term(&self) -> Term {
        self.term.lock().expect("term lock").clone()
    }

    /// An owner record for `loop_id` on `term`.
    pub fn owner(&self, loop_id: &str, term: &Term) -> Owner {
        Owner {
            loop_id: loop_id.to_string(),
            daemon: self.config.id.clone(),
            address: self.config.address.clone(),
            lease: term.lease,
            since_ms: 0,
        }
    }

    /// Renews the current term's lease once.
    pub async fn renew(&self) -> Renewal {
        let term = self.term();
        if term.stop.is_cancelled() {
            return Renewal::Lost("the term has ended".into());
        }
        let sent = fence::now();
        match self.ssot.keep_alive(term.lease).await {
            Ok(_) => {
                term.tenure.renewed(sent, self.config.ttl);
                Renewal::Renewed
            }
            Err(SsotError::NotFound { .. }) => Renewal::Lost(format!("lease {} has expired", term.lease)),
            Err(_) if !term.tenure.is_valid() => {
                Renewal::Lost(format!("lease {} could not be renewed before it ran out", term.lease))
            }
            Err(error) => Renewal::Unconfirmed(error),
        }
    }

    /// Ends the current term: nothing more may be done on its lease, and its loops stop.
    pub fn stop_term(&self) -> Term {
        let term = self.term();
        term.tenure.end();
        term.stop.cancel();
        term
    }

    /// Revokes an ended term's lease if it still exists (once its loops have stopped:
    /// another daemon takes them at once).
    pub async fn revoke(&self, term: &Term) {
        let _ = self.ssot.revoke_lease(term.lease).await;
    }

    /// Starts a new term after the last one ended.
    pub async fn rejoin(&self) -> Result<Term> {
        let term = Self::begin(&self.ssot, &self.config, &self.shutdown).await?;
        info!(daemon = %self.config.id, lease = term.lease, "joined the SSOT again on a new lease");
        *self.term.lock().expect("term lock") = term.clone();
        Ok(term)
    }

    /// Leaves on shutdown: the lease is revoked, so other daemons take this
    /// daemon's loops at once; the lease file goes.
    pub async fn leave(&self) {
        let term = self.stop_term();
        self.revoke(&term).await;
        if let Some(file) = &self.config.lease_file {
            let _ = std::fs::remove_file(file);
        }
    }
}
