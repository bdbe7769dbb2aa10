//! Compaction: history below a revision is given up.
//!
//! The compaction point itself is a logged write, acknowledged as soon as it
//! is durable; from then on reads and watches below it are refused. The old
//! records are then removed in bounded steps between groups (the sweep), so
//! a compaction never holds writes up for more than one step. A sweep cut off
//! by a crash starts again at the next open (the `swept` mark is behind the
//! compaction point until a sweep finishes).
//!
//! Each record names its author, so entries that survive a compaction still
//! do. Revision records go by group: one is removed once its group's last
//! revision is below the target.

use tracing::{error, info};

use super::layout::{self, KvRecord, decode, encode, meta};
use super::wal::WalOp;
use super::writer::{Group, Writer};
use crate::ssot::store::{Revision, StoreError};

/// Most records one sweep step looks at: a step holds the writer up, so it
/// must stay in the order of a millisecond (sled copies a leaf per removal).
const STEP: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `r` records of groups that end below the target.
    Revisions,
    /// History entries no read at or after the target needs.
    History,
}

/// A sweep in progress.
pub(super) struct Sweep {
    target: Revision,
    phase: Phase,
    /// The last raw key looked at in this phase.
    cursor: Option<Vec<u8>>,
    /// Per key, the newest entry at or below the target seen so far: removed
    /// when a newer one at or below the target turns up, or (for a delete
    /// older than the target) when the key's entries end.
    candidate: Option<(Vec<u8>, sled::IVec, bool)>,
    removed: usize,
    /// Tombstones to remove in the next step, once the older entries of their
    /// key are gone: a reader (or a checkpoint) walking the history while the
    /// steps apply then never sees an old value without the delete after it.
    tombstones: Vec<sled::IVec>,
    /// A later compaction point asked for while this sweep runs.
    next: Option<Revision>,
}

impl Sweep {
    fn new(target: Revision) -> Self {
        Sweep {
            target,
            phase: Phase::Revisions,
            cursor: None,
            candidate: None,
            removed: 0,
            tombstones: Vec::new(),
            next: None,
        }
    }
}

impl Writer {
    /// Moves the compaction point to `target` in this group.
    pub(super) fn compact(&mut self, group: &mut Group, target: Revision) -> Result<Revision, StoreError> {
        let target = group.compacted.map_or(target, |pending| pending.max(target));
        if target <= self.compacted {
            return Ok(self.compacted);
        }
        if target > self.revision {
            return Err(StoreError::FutureRevision { requested: target, current: self.revision });
        }
        group.ops.push(WalOp::put(layout::meta(meta::COMPACTED), encode(&target)));
        group.compacted = Some(target);
        self.compacted = target;
        Ok(target)
    }

    /// Sweeps up to `target` once the compaction point is durable.
    pub(super) fn start_sweep(&mut self, target: Revision) {
        match &mut self.sweep {
            Some(sweep) => sweep.next = Some(target),
            None => self.sweep = Some(Sweep::new(target)),
        }
    }

    /// One bounded step of the sweep.
    pub(super) fn sweep_step(&mut self) {
        let Some(mut sweep) = self.sweep.take() else { return };
        fail::fail_point!("compact-step", |_| super::crash());
        let before = sweep.removed;
        let stepped = self.step(&mut sweep);
        self.reopen.applied(sweep.removed - before + 1);
        match stepped {
            Ok(false) => self.sweep = Some(sweep),
            Ok(true) => {
                info!(revision = sweep.target, removed = sweep.removed, "history compacted");
                if let Some(next) = sweep.next {
                    self.sweep = Some(Sweep::new(next));
                }
            }
            Err(error) => {
                error!(%error, "sweeping old history failed; it is retried at the next start");
                self.sweep = sweep.next.map(Sweep::new);
            }
        }
    }

    /// Returns true when the sweep is done.
    fn step(&self, sweep: &mut Sweep) -> Result<bool, StoreError> {
        let tree = self.tree();
        let mut batch = sled::Batch::default();
        // Tombstones found in the previous step: their key's older entries went with it.
        for tombstone in sweep.tombstones.drain(..) {
            batch.remove(tombstone);
            sweep.removed += 1;
        }
        let (start, end) = match sweep.phase {
            Phase::Revisions => (layout::rev(0), layout::rev(sweep.target)),
            Phase::History => (vec![layout::HIST], vec![layout::HIST + 1]),
        };
        let from = match &sweep.cursor {
            Some(cursor) => std::ops::Bound::Excluded(cursor.clone()),
            None => std::ops::Bound::Included(start),
        };
        let mut seen = 0;
        for item in tree.range::<Vec<u8>, _>((from, std::ops::Bound::Excluded(end))) {
            let (raw_key, raw) = item?;
            seen += 1;
            sweep.cursor = Some(raw_key.to_vec());
            if sweep.phase != Phase::History {
                batch.remove(raw_key);
                sweep.removed += 1;
            } else if let Some((key, revision)) = layout::parse_hist(&raw_key)
                && revision <= sweep.target
            {
                // Per key, keep the newest entry at or below the target (what a read at
                // the target needs) unless it is a delete older than the target.
                if let Some((candidate_key, older, drop_it)) = &sweep.candidate {
                    if candidate_key.as_slice() == key {
                        batch.remove(older.clone());
                        sweep.removed += 1;
                    } else if *drop_it {
                        sweep.tombstones.push(older.clone());
                    }
                }
                let is_delete = decode::<Option<KvRecord>>(&raw)?.is_none();
                sweep.candidate = Some((key.to_vec(), raw_key, is_delete && revision < sweep.target));
            }
            if seen == STEP {
                break;
            }
        }
        let finished = seen < STEP;
        if finished && sweep.phase == Phase::History {
            if let Some((_, raw_key, true)) = sweep.candidate.take() {
                sweep.tombstones.push(raw_key);
            }
            if sweep.tombstones.is_empty() {
                batch.insert(layout::meta(meta::SWEPT), encode(&sweep.target));
            }
        }
        tree.apply_batch(batch)?;
        self.shared.sweeps.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if finished {
            match sweep.phase {
                Phase::Revisions => sweep.phase = Phase::History,
                // One more step removes the last tombstones and marks the sweep done.
                Phase::History if !sweep.tombstones.is_empty() => return Ok(false),
                Phase::History => return Ok(true),
            }
            sweep.cursor = None;
        }
        Ok(false)
    }
}
