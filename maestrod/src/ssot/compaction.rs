//! Compaction policy: history is kept for `retention` revisions, and never
//! past the oldest revision a snapshot pins.

use super::store::Revision;
use super::{Result, Ssot, SsotError};

impl Ssot {
    /// Compacts to `revision`, or (with 0) to what the retention setting allows.
    /// Returns the compaction revision in force afterwards.
    pub async fn compact(&self, revision: Revision, retention: u64) -> Result<Revision> {
        let status = self.store.status();
        let pinned = self.oldest_pinned_revision().await?;
        let target = if revision == 0 {
            let by_retention = status.revision.saturating_sub(retention);
            pinned.map_or(by_retention, |p| by_retention.min(p))
        } else {
            if revision > status.revision {
                return Err(SsotError::invalid(
                    "revision",
                    format!("{revision} is in the future; the current revision is {}", status.revision),
                ));
            }
            if let Some(pinned) = pinned.filter(|p| revision > *p) {
                return Err(SsotError::FailedPrecondition(format!(
                    "a snapshot pins revision {pinned}; delete it or compact to at most {pinned}"
                )));
            }
            revision
        };
        if target <= status.compact_revision {
            return Ok(status.compact_revision);
        }
        Ok(self.store.compact(target).await?)
    }
}
