//! Snapshots: named, pinned revisions of a project. Taking one is O(1) (it
//! records the current revision); compaction never drops history a snapshot
//! needs. Diff and restore cover requirements, contracts and memory; the
//! execution log is append-only and never rewound.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::clock::now_ms;
use super::paging::PageToken;
use super::store::{Compare, KeyValue, Op, RangeRequest, Revision, Txn};
use super::{Page, Result, Ssot, SsotError, keys, validate};

const KIND: &str = "snapshot";
const PREFIX: &str = "snapshots/";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    pub revision: Revision,
    pub git_commit: String,
    pub description: String,
    pub create_time_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    /// Resource path, e.g. `requirements/0000000003`.
    pub path: String,
    pub before: String,
    pub after: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub from_revision: Revision,
    pub to_revision: Revision,
    pub changes: Vec<Change>,
    /// Non-empty when more changes follow.
    pub next_page_token: String,
}

fn snapshot_key(project: &str, name: &str) -> String {
    keys::in_project(project, &format!("{PREFIX}{name}"))
}

impl Ssot {
    pub async fn create_snapshot(
        &self,
        project: &str,
        name: &str,
        git_commit: &str,
        description: &str,
    ) -> Result<Snapshot> {
        validate::ident("name", name, 64)?;
        validate::text("git_commit", git_commit, 64, false)?;
        if !git_commit.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(SsotError::invalid("git_commit", format!("{git_commit:?} is not a hex commit id")));
        }
        validate::text("description", description, 4096, false)?;
        let guard = self.project_guard(project).await?;
        let snapshot = Snapshot {
            name: name.to_string(),
            // Everything committed so far; the snapshot record itself comes after.
            revision: self.store.current_revision().await?,
            git_commit: git_commit.to_string(),
            description: description.to_string(),
            create_time_ms: now_ms(),
        };
        let key = snapshot_key(project, name);
        let txn = Txn::new()
            .when(guard)
            .when(Compare::absent(key.as_str()))
            .then(Op::put(key, super::encode_json(&snapshot)));
        match self.commit(txn).await? {
            Ok(_) => Ok(snapshot),
            Err((0, _)) => Err(SsotError::not_found("project", project)),
            Err(_) => Err(SsotError::AlreadyExists { kind: KIND, id: name.to_string() }),
        }
    }

    pub async fn get_snapshot(&self, project: &str, name: &str) -> Result<Snapshot> {
        validate::ident("name", name, 64)?;
        self.project_guard(project).await?;
        self.get::<Snapshot>(&snapshot_key(project, name), 0)
            .await?
            .map(|s| s.value)
            .ok_or_else(|| SsotError::not_found(KIND, name))
    }

    pub async fn list_snapshots(&self, project: &str, page_size: i32, page_token: &str) -> Result<Page<Snapshot>> {
        self.project_guard(project).await?;
        self.page(&keys::in_project(project, PREFIX), page_size, page_token, 0, |_| true).await
    }

    pub async fn delete_snapshot(&self, project: &str, name: &str) -> Result<()> {
        self.get_snapshot(project, name).await?;
        let txn = Txn::new().then(Op::delete(snapshot_key(project, name)));
        self.commit(txn).await?.map_err(|_| SsotError::not_found(KIND, name))?;
        Ok(())
    }

    /// The oldest revision any snapshot of any project pins, if any.
    pub async fn oldest_pinned_revision(&self) -> Result<Option<Revision>> {
        let (projects, _) = self.scan_all::<super::projects::Project>(keys::PROJECTS, 0).await?;
        let mut oldest: Option<Revision> = None;
        for project in projects {
            let (snapshots, _) = self.scan_all::<Snapshot>(&keys::in_project(&project.value.id, PREFIX), 0).await?;
            for snapshot in snapshots {
                oldest = Some(oldest.map_or(snapshot.value.revision, |o| o.min(snapshot.value.revision)));
            }
        }
        Ok(oldest)
    }

    /// The snapshot-covered resources of a project at `revision` (0: now), by resource path.
    async fn covered_state(&self, project: &str, revision: Revision) -> Result<(BTreeMap<String, KeyValue>, Revision)> {
        let mut state = BTreeMap::new();
        let mut read_at = revision;
        for path in keys::SNAPSHOT_PATHS {
            let prefix = keys::in_project(project, path);
            let response = self.store.range(RangeRequest::prefix(prefix).at(read_at)).await?;
            // Read every prefix at the same revision as the first.
            read_at = response.revision;
            for kv in response.kvs {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                state.insert(keys::resource_path(project, &key).to_string(), kv);
            }
        }
        Ok((state, read_at))
    }

    /// One page of the changes from snapshot `from` to snapshot `to` (empty:
    /// the current state), in path order: at most `page_size` changes and
    /// about PAGE_BYTES of JSON. Every page compares the same two revisions.
    pub async fn diff_snapshots(
        &self,
        project: &str,
        from: &str,
        to: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Diff> {
        let size = validate::page_size(page_size)?;
        let token = PageToken::decode(page_token)?;
        let from = self.get_snapshot(project, from).await?;
        let to_revision = match &token {
            Some(token) => token.revision,
            None if to.is_empty() => 0,
            None => self.get_snapshot(project, to).await?.revision,
        };
        let (before, from_revision) = self.covered_state(project, from.revision.max(1)).await?;
        let (after, to_revision) = self.covered_state(project, to_revision).await?;
        let text = |kv: &KeyValue| String::from_utf8_lossy(&kv.value).into_owned();
        let mut changes = Vec::new();
        for (path, old) in &before {
            match after.get(path) {
                None => changes.push(Change {
                    kind: ChangeKind::Removed,
                    path: path.clone(),
                    before: text(old),
                    after: String::new(),
                }),
                Some(new) if new.value != old.value => changes.push(Change {
                    kind: ChangeKind::Modified,
                    path: path.clone(),
                    before: text(old),
                    after: text(new),
                }),
                Some(_) => {}
            }
        }
        for (path, new) in &after {
            if !before.contains_key(path) {
                changes.push(Change {
                    kind: ChangeKind::Added,
                    path: path.clone(),
                    before: String::new(),
                    after: text(new),
                });
            }
        }
        // Bookkeeping (the id counter) is restored but is not a change anyone made.
        changes.retain(|c| !c.path.starts_with("_meta/"));
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        if let Some(token) = &token {
            let after = String::from_utf8_lossy(&token.after);
            changes.retain(|c| c.path.as_str() > after.as_ref());
        }
        let mut used = 0;
        let mut end = 0;
        for change in &changes {
            let bytes = change.path.len() + change.before.len() + change.after.len();
            if end == size || (end > 0 && used + bytes > super::PAGE_BYTES) {
                break;
            }
            used += bytes;
            end += 1;
        }
        let next_page_token = if end < changes.len() {
            PageToken { revision: to_revision, after: changes[end - 1].path.clone().into_bytes() }.encode()
        } else {
            String::new()
        };
        changes.truncate(end);
        Ok(Diff { from_revision, to_revision, changes, next_page_token })
    }

    /// Makes the snapshot's requirements, contracts and memory current again,
    /// as one new revision. Returns the revision and how many resources changed.
    /// The requirement id counter never goes back: requirements created after
    /// the snapshot are removed, and their ids are not given out again.
    pub async fn restore_snapshot(&self, project: &str, name: &str) -> Result<(Revision, usize)> {
        self.restore_where(project, name, |_, _, _| true).await
    }

    /// Restores, from snapshot `name`, only what `scope` covers: the
    /// requirements of a loop's tree (as it was then and as it is now) and
    /// the requirements, contracts and memory entries the loop changed.
    /// Everything else in the project (other runs, human edits) stays.
    pub async fn restore_scope(&self, project: &str, name: &str, scope: &RestoreScope) -> Result<(Revision, usize)> {
        self.restore_where(project, name, |path, then, now| scope.covers(path, then, now)).await
    }

    /// The restore itself: every covered resource whose path `select` accepts
    /// (given the resources then and now) is put back as it was.
    async fn restore_where(
        &self,
        project: &str,
        name: &str,
        select: impl Fn(&str, &Tree, &Tree) -> bool,
    ) -> Result<(Revision, usize)> {
        let snapshot = self.get_snapshot(project, name).await?;
        for attempt in 0..super::RETRIES {
            let guard = self.project_guard(project).await?;
            let (then, _) = self.covered_state(project, snapshot.revision.max(1)).await?;
            let (now, read_at) = self.covered_state(project, 0).await?;
            let (then_tree, now_tree) = (Tree::of(&then), Tree::of(&now));
            let mut txn = Txn::new().when(guard);
            let mut changed = 0;
            let mut structure_changed = false;
            for (path, current) in &now {
                if !select(path, &then_tree, &now_tree) {
                    continue;
                }
                txn = txn.when(Compare::mod_revision(current.key.clone(), current.mod_revision));
                match then.get(path) {
                    None => txn = txn.then(Op::delete(current.key.clone())),
                    Some(old) if old.value != current.value => {
                        txn = txn.then(Op::put(current.key.clone(), old.value.clone()))
                    }
                    Some(_) => continue,
                }
                changed += 1;
                structure_changed |= path.starts_with(super::requirements::PREFIX);
            }
            for (path, old) in &then {
                if !now.contains_key(path) && select(path, &then_tree, &now_tree) {
                    txn = txn.when(Compare::absent(old.key.clone())).then(Op::put(old.key.clone(), old.value.clone()));
                    changed += 1;
                    structure_changed |= path.starts_with(super::requirements::PREFIX);
                }
            }
            if structure_changed {
                // The tree's structure changed: rewrite its record (same id counter) so that
                // writers that checked the structure before this restore retry.
                let key = keys::in_project(project, super::requirements::STRUCTURE);
                let current = self.store.range(RangeRequest::key(key.as_str()).at(read_at)).await?;
                if let Some(kv) = current.kvs.into_iter().next() {
                    txn = txn
                        .when(Compare::mod_revision(kv.key.clone(), kv.mod_revision))
                        .then(Op::put(kv.key, kv.value));
                }
            }
            match self.commit(txn).await? {
                Ok(revision) => return Ok((revision, changed)),
                Err((0, _)) => return Err(SsotError::not_found("project", project)),
                Err(_) => super::after_lost_race(attempt).await,
            }
        }
        Err(super::lost_race(KIND, name))
    }
}

/// The requirements tree of one state: id → parent.
struct Tree {
    parents: BTreeMap<String, String>,
    ids: BTreeMap<String, String>,
}

impl Tree {
    fn of(state: &BTreeMap<String, KeyValue>) -> Tree {
        let mut parents = BTreeMap::new();
        let mut ids = BTreeMap::new();
        for (path, kv) in state.range(super::requirements::PREFIX.to_string()..) {
            if !path.starts_with(super::requirements::PREFIX) {
                break;
            }
            if let Ok(r) = serde_json::from_slice::<super::requirements::Requirement>(&kv.value) {
                parents.insert(r.id.clone(), r.parent_id);
                ids.insert(path.clone(), r.id);
            }
        }
        Tree { parents, ids }
    }

    /// The requirement id stored at a resource path.
    fn id_at(&self, path: &str) -> Option<&str> {
        self.ids.get(path).map(String::as_str)
    }

    /// Whether `id` is `root` or below it.
    fn under(&self, root: &str, id: &str) -> bool {
        let mut node = id;
        for _ in 0..=self.parents.len() {
            if node == root {
                return true;
            }
            match self.parents.get(node) {
                Some(parent) if !parent.is_empty() => node = parent,
                _ => return false,
            }
        }
        false
    }
}

/// What a loop's rollback restores: its tree as it was at the snapshot, and
/// what its agents changed. A requirement someone else adds meanwhile (even
/// under the loop's root) stays.
#[derive(Debug, Clone, Default)]
pub struct RestoreScope {
    /// The loop's root requirement: it and everything below it at the snapshot.
    pub root: String,
    /// Requirements the loop created or changed.
    pub requirements: BTreeSet<String>,
    /// Contract names the loop proposed versions of or changed.
    pub contracts: BTreeSet<String>,
    /// Memory entries the loop wrote: (agent, key).
    pub memory: BTreeSet<(String, String)>,
}

impl RestoreScope {
    fn covers(&self, path: &str, then: &Tree, now: &Tree) -> bool {
        if path.starts_with(super::requirements::PREFIX) {
            let in_tree_then = then.id_at(path).is_some_and(|id| !self.root.is_empty() && then.under(&self.root, id));
            let touched =
                [then.id_at(path), now.id_at(path)].into_iter().flatten().any(|id| self.requirements.contains(id));
            return in_tree_then || touched;
        }
        if let Some(rest) = path.strip_prefix("contracts/") {
            let name = rest.split('/').next().unwrap_or_default();
            return self.contracts.contains(name);
        }
        if let Some(rest) = path.strip_prefix("memory/") {
            let (agent, key) = rest.split_once('/').unwrap_or((rest, ""));
            return self.memory.contains(&(agent.to_string(), key.to_string()));
        }
        false
    }
}
