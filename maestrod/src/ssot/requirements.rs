//! The requirements tree: parent/children, dependencies (cycles rejected) and
//! the status state machine PENDING → CLAIMED → IN_PROGRESS → DONE | FAILED | BLOCKED.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::clock::now_ms;
use super::store::{Compare, Op, Revision, Txn};
use super::{Edit, Meta, Page, Result, Ssot, SsotError, Target, Versioned, check_etag, encode_json, keys, validate};

const KIND: &str = "requirement";
/// The per-project record whose mod revision versions the tree's structure
/// (ids, parents, dependencies); every structural change rewrites it.
pub(super) const STRUCTURE: &str = "_meta/requirements";
pub(super) const PREFIX: &str = "requirements/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pending,
    Claimed,
    InProgress,
    Done,
    Failed,
    Blocked,
}

impl Status {
    pub const ALL: [Status; 6] =
        [Status::Pending, Status::Claimed, Status::InProgress, Status::Done, Status::Failed, Status::Blocked];

    /// The moves the state machine allows from `self`.
    pub fn next(self) -> &'static [Status] {
        use Status::*;
        match self {
            Pending => &[Claimed, Blocked],
            Claimed => &[InProgress, Pending],
            InProgress => &[Done, Failed, Blocked, Pending],
            Failed | Blocked => &[Pending],
            Done => &[],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Claimed => "CLAIMED",
            Status::InProgress => "IN_PROGRESS",
            Status::Done => "DONE",
            Status::Failed => "FAILED",
            Status::Blocked => "BLOCKED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requirement {
    pub id: String,
    pub parent_id: String,
    pub title: String,
    pub description: String,
    pub role_hint: String,
    pub acceptance: Vec<String>,
    pub status: Status,
    pub status_reason: String,
    pub depends_on: Vec<String>,
    pub assignee: String,
    pub attempts: u32,
    pub create_time_ms: i64,
    pub update_time_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct NewRequirement {
    pub parent_id: String,
    pub title: String,
    pub description: String,
    pub role_hint: String,
    pub acceptance: Vec<String>,
    pub depends_on: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RequirementUpdate {
    pub title: Option<String>,
    pub description: Option<String>,
    pub role_hint: Option<String>,
    pub acceptance: Option<Vec<String>>,
    pub assignee: Option<String>,
    pub etag: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Structure {
    last_id: u64,
}

/// "R12" → 12.
/// The number of a requirement id. Only the canonical form is an id: `R1`,
/// never `R01` or `R+1`, so that one requirement has one name everywhere.
pub fn parse_id(field: &str, id: &str) -> Result<u64> {
    id.strip_prefix('R')
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0'))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| SsotError::invalid(field, format!("{} is not a requirement id (like R12)", validate::shown(id))))
}

/// Dependencies one requirement may have, and may gain or lose in one request.
pub const MAX_DEPENDENCIES: usize = 256;

fn check_dependency_count(field: &str, count: usize) -> Result<()> {
    if count > MAX_DEPENDENCIES {
        return Err(SsotError::invalid(field, format!("has {count} requirements, the limit is {MAX_DEPENDENCIES}")));
    }
    Ok(())
}

fn key(project: &str, number: u64) -> String {
    keys::in_project(project, &format!("{PREFIX}{number:010}"))
}

fn check_fields(title: &str, description: &str, role_hint: &str, acceptance: &[String]) -> Result<()> {
    validate::text("title", title, 200, true)?;
    validate::text("description", description, 64 << 10, false)?;
    if !role_hint.is_empty() {
        validate::ident("role_hint", role_hint, 32)?;
    }
    if acceptance.len() > 50 {
        return Err(SsotError::invalid("acceptance", format!("has {} criteria, the limit is 50", acceptance.len())));
    }
    for criterion in acceptance {
        validate::text("acceptance", criterion, 2000, true)?;
    }
    Ok(())
}

/// Finds a dependency path from one of `from` to `to` in `graph` (id →
/// depends_on): one breadth-first search over the whole graph, however many
/// starting points, so its cost is bounded by the size of the tree.
fn path(graph: &HashMap<String, Vec<String>>, from: &[String], to: &str) -> Option<Vec<String>> {
    let mut came_from: HashMap<&str, Option<&str>> = from.iter().map(|f| (f.as_str(), None)).collect();
    let mut queue: std::collections::VecDeque<&str> = from.iter().map(String::as_str).collect();
    while let Some(node) = queue.pop_front() {
        if node == to {
            let mut trail = vec![node.to_string()];
            let mut at = node;
            while let Some(Some(previous)) = came_from.get(at) {
                trail.push(previous.to_string());
                at = previous;
            }
            trail.reverse();
            return Some(trail);
        }
        for next in graph.get(node).into_iter().flatten() {
            if !came_from.contains_key(next.as_str()) {
                came_from.insert(next, Some(node));
                queue.push_back(next);
            }
        }
    }
    None
}

impl Ssot {
    async fn structure(&self, project: &str) -> Result<(Structure, Revision)> {
        Ok(match self.get::<Structure>(&keys::in_project(project, STRUCTURE), 0).await? {
            Some(found) => (found.value, found.meta.mod_revision),
            None => (Structure::default(), 0),
        })
    }

    /// Reads requirement `id` for a check; `field` names it in errors.
    async fn existing(&self, project: &str, field: &str, id: &str) -> Result<Versioned<Requirement>> {
        let number = parse_id(field, id)?;
        self.get(&key(project, number), 0).await?.ok_or_else(|| SsotError::not_found(KIND, id))
    }

    pub async fn create_requirement(&self, project: &str, new: NewRequirement) -> Result<Versioned<Requirement>> {
        check_fields(&new.title, &new.description, &new.role_hint, &new.acceptance)?;
        check_dependency_count("depends_on", new.depends_on.len())?;
        let mut deps = BTreeSet::new();
        for dep in &new.depends_on {
            parse_id("depends_on", dep)?;
            if !deps.insert(dep.as_str()) {
                return Err(SsotError::invalid("depends_on", format!("{dep} is listed twice")));
            }
        }
        if !new.parent_id.is_empty() {
            parse_id("parent_id", &new.parent_id)?;
        }
        for attempt in 0..super::RETRIES {
            let guard = self.project_guard(project).await?;
            let (structure, structure_rev) = self.structure(project).await?;
            let mut txn =
                Txn::new().when(guard).when(Compare::mod_revision(keys::in_project(project, STRUCTURE), structure_rev));
            let mut referenced = Vec::new();
            if !new.parent_id.is_empty() {
                let parent = self.existing(project, "parent_id", &new.parent_id).await?;
                txn = txn.when(Compare::mod_revision(
                    key(project, parse_id("parent_id", &new.parent_id)?),
                    parent.meta.mod_revision,
                ));
                referenced.push(new.parent_id.clone());
            }
            for dep in &new.depends_on {
                let found = self.existing(project, "depends_on", dep).await?;
                txn = txn
                    .when(Compare::mod_revision(key(project, parse_id("depends_on", dep)?), found.meta.mod_revision));
                referenced.push(dep.clone());
            }
            let number = structure.last_id + 1;
            let now = now_ms();
            let requirement = Requirement {
                id: format!("R{number}"),
                parent_id: new.parent_id.clone(),
                title: new.title.clone(),
                description: new.description.clone(),
                role_hint: new.role_hint.clone(),
                acceptance: new.acceptance.clone(),
                status: Status::Pending,
                status_reason: String::new(),
                depends_on: new.depends_on.clone(),
                assignee: String::new(),
                attempts: 0,
                create_time_ms: now,
                update_time_ms: now,
            };
            let txn = txn
                .then(Op::put(keys::in_project(project, STRUCTURE), encode_json(&Structure { last_id: number })))
                .then(Op::put(key(project, number), encode_json(&requirement)));
            match self.commit(txn).await? {
                Ok(revision) => {
                    return Ok(Versioned { value: requirement, meta: Meta::created(revision) });
                }
                Err((0, _)) => return Err(SsotError::not_found("project", project)),
                Err((index, 0)) if index >= 2 => {
                    return Err(SsotError::not_found(KIND, &referenced[index - 2]));
                }
                Err(_) => super::after_lost_race(attempt).await,
            }
        }
        Err(super::lost_race(KIND, "creation"))
    }

    pub async fn get_requirement(&self, project: &str, id: &str, revision: Revision) -> Result<Versioned<Requirement>> {
        let number = parse_id("id", id)?;
        self.get_in_project(project, &key(project, number), revision, || SsotError::not_found(KIND, id)).await
    }

    pub async fn list_requirements(
        &self,
        project: &str,
        parent_id: &str,
        status: Option<Status>,
        revision: Revision,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Requirement>> {
        if !parent_id.is_empty() {
            parse_id("parent_id", parent_id)?;
        }
        self.project_guard(project).await?;
        let prefix = keys::in_project(project, PREFIX);
        self.page(&prefix, page_size, page_token, revision, |r: &Versioned<Requirement>| {
            (parent_id.is_empty() || r.value.parent_id == parent_id) && status.is_none_or(|s| r.value.status == s)
        })
        .await
    }

    /// Every requirement of the project, at one revision.
    pub async fn all_requirements(&self, project: &str) -> Result<Vec<Versioned<Requirement>>> {
        self.project_guard(project).await?;
        Ok(self.scan_all(&keys::in_project(project, PREFIX), 0).await?.0)
    }

    /// PENDING requirements whose dependencies are all DONE.
    pub async fn ready_requirements(&self, project: &str) -> Result<Vec<Versioned<Requirement>>> {
        let all = self.all_requirements(project).await?;
        let done: BTreeSet<&str> =
            all.iter().filter(|r| r.value.status == Status::Done).map(|r| r.value.id.as_str()).collect();
        Ok(all
            .iter()
            .filter(|r| {
                r.value.status == Status::Pending && r.value.depends_on.iter().all(|d| done.contains(d.as_str()))
            })
            .cloned()
            .collect())
    }

    pub async fn update_requirement(
        &self,
        project: &str,
        id: &str,
        update: RequirementUpdate,
    ) -> Result<Versioned<Requirement>> {
        let number = parse_id("id", id)?;
        let expected = validate::etag(&update.etag)?;
        check_fields(
            update.title.as_deref().unwrap_or("x"),
            update.description.as_deref().unwrap_or(""),
            update.role_hint.as_deref().unwrap_or(""),
            update.acceptance.as_deref().unwrap_or(&[]),
        )?;
        if let Some(assignee) = &update.assignee {
            validate::text("assignee", assignee, 128, false)?;
        }
        let own_key = key(project, number);
        let target = Target { kind: KIND, id, key: &own_key, project: Some(project) };
        self.modify(target, expected, super::nothing, |mut r: Requirement, ()| {
            if let Some(title) = &update.title {
                r.title.clone_from(title);
            }
            if let Some(description) = &update.description {
                r.description.clone_from(description);
            }
            if let Some(role_hint) = &update.role_hint {
                r.role_hint.clone_from(role_hint);
            }
            if let Some(acceptance) = &update.acceptance {
                r.acceptance.clone_from(acceptance);
            }
            if let Some(assignee) = &update.assignee {
                r.assignee.clone_from(assignee);
            }
            r.update_time_ms = now_ms();
            Ok(Edit::value(r))
        })
        .await
    }

    pub async fn set_requirement_status(
        &self,
        project: &str,
        id: &str,
        status: Status,
        reason: &str,
        assignee: &str,
        etag: &str,
    ) -> Result<Versioned<Requirement>> {
        let number = parse_id("id", id)?;
        let expected = validate::etag(etag)?;
        validate::text("reason", reason, 4096, false)?;
        validate::text("assignee", assignee, 128, false)?;
        if status == Status::Claimed && assignee.trim().is_empty() {
            return Err(SsotError::invalid("assignee", "is required when claiming a requirement"));
        }
        let own_key = key(project, number);
        let target = Target { kind: KIND, id, key: &own_key, project: Some(project) };
        let prepare = move || async move {
            // Claiming needs the dependencies' state; other moves need nothing.
            if status == Status::Claimed {
                Ok(self.scan_all::<Requirement>(&keys::in_project(project, PREFIX), 0).await?.0)
            } else {
                Ok(Vec::new())
            }
        };
        self.modify(target, expected, prepare, |mut r: Requirement, all: Vec<Versioned<Requirement>>| {
            if !r.status.next().contains(&status) {
                let allowed: Vec<&str> = r.status.next().iter().map(|s| s.as_str()).collect();
                return Err(SsotError::FailedPrecondition(format!(
                    "requirement {id} cannot move from {} to {}; allowed from {}: {}",
                    r.status.as_str(),
                    status.as_str(),
                    r.status.as_str(),
                    if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
                )));
            }
            let mut compares = Vec::new();
            if status == Status::Claimed {
                // Only a ready requirement can be claimed; the compares keep it ready until commit.
                for dep in &r.depends_on {
                    let found =
                        all.iter().find(|n| &n.value.id == dep).ok_or_else(|| SsotError::not_found(KIND, dep))?;
                    if found.value.status != Status::Done {
                        return Err(SsotError::FailedPrecondition(format!(
                            "requirement {id} is not ready: it depends on {dep}, which is {}",
                            found.value.status.as_str()
                        )));
                    }
                    compares.push(Compare::mod_revision(
                        key(project, parse_id("depends_on", dep)?),
                        found.meta.mod_revision,
                    ));
                }
                r.assignee = assignee.to_string();
            }
            if status == Status::Pending {
                r.assignee.clear();
            }
            if status == Status::InProgress {
                r.attempts += 1;
            }
            r.status = status;
            r.status_reason = reason.to_string();
            r.update_time_ms = now_ms();
            Ok(Edit { value: r, compares, ops: Vec::new() })
        })
        .await
    }

    /// Adds and removes dependencies of `id`; rejects a change that closes a cycle.
    pub async fn set_dependencies(
        &self,
        project: &str,
        id: &str,
        add: &[String],
        remove: &[String],
        etag: &str,
    ) -> Result<Versioned<Requirement>> {
        let number = parse_id("id", id)?;
        let expected = validate::etag(etag)?;
        check_dependency_count("add", add.len())?;
        check_dependency_count("remove", remove.len())?;
        for dep in add {
            parse_id("add", dep)?;
            if dep == id {
                return Err(SsotError::FailedPrecondition(format!("requirement {id} cannot depend on itself")));
            }
        }
        for dep in remove {
            parse_id("remove", dep)?;
        }
        let own_key = key(project, number);
        let target = Target { kind: KIND, id, key: &own_key, project: Some(project) };
        let prepare = move || async move {
            let (structure, structure_rev) = self.structure(project).await?;
            let all = self.scan_all::<Requirement>(&keys::in_project(project, PREFIX), 0).await?.0;
            Ok((structure, structure_rev, all))
        };
        self.modify(target, expected, prepare, |mut r: Requirement, (structure, structure_rev, all)| {
            let mut graph: HashMap<String, Vec<String>> =
                all.iter().map(|n| (n.value.id.clone(), n.value.depends_on.clone())).collect();
            let mut compares = vec![Compare::mod_revision(keys::in_project(project, STRUCTURE), structure_rev)];
            let revisions: HashMap<&str, Revision> =
                all.iter().map(|n| (n.value.id.as_str(), n.meta.mod_revision)).collect();
            for dep in add {
                let Some(revision) = revisions.get(dep.as_str()) else {
                    return Err(SsotError::not_found(KIND, dep));
                };
                compares.push(Compare::mod_revision(key(project, parse_id("add", dep)?), *revision));
            }
            r.depends_on.retain(|d| !remove.contains(d));
            for dep in add {
                if !r.depends_on.contains(dep) {
                    r.depends_on.push(dep.clone());
                }
            }
            check_dependency_count("depends_on", r.depends_on.len())?;
            graph.insert(id.to_string(), r.depends_on.clone());
            if let Some(mut cycle) = path(&graph, add, id) {
                let dep = cycle[0].clone();
                cycle.insert(0, id.to_string());
                let steps = cycle.len() - 1;
                if cycle.len() > 12 {
                    cycle.splice(8..cycle.len() - 3, [format!("… ({steps} steps in all) …")]);
                }
                return Err(SsotError::FailedPrecondition(format!(
                    "making {id} depend on {dep} would create the cycle {}",
                    cycle.join(" → ")
                )));
            }
            r.update_time_ms = now_ms();
            let bump = Op::put(keys::in_project(project, STRUCTURE), encode_json(&structure));
            Ok(Edit { value: r, compares, ops: vec![bump] })
        })
        .await
    }

    /// Deletes a requirement that has no children and nothing depending on it.
    pub async fn delete_requirement(&self, project: &str, id: &str, etag: &str) -> Result<Revision> {
        let number = parse_id("id", id)?;
        let expected = validate::etag(etag)?;
        for attempt in 0..super::RETRIES {
            let guard = self.project_guard(project).await?;
            let (structure, structure_rev) = self.structure(project).await?;
            let all = self.scan_all::<Requirement>(&keys::in_project(project, PREFIX), 0).await?.0;
            let Some(node) = all.iter().find(|n| n.value.id == id) else {
                return Err(SsotError::not_found(KIND, id));
            };
            check_etag(KIND, id, expected, node.meta.mod_revision)?;
            let children: Vec<&str> =
                all.iter().filter(|n| n.value.parent_id == id).map(|n| n.value.id.as_str()).collect();
            if !children.is_empty() {
                return Err(SsotError::FailedPrecondition(format!(
                    "requirement {id} has children {}; delete them first",
                    children.join(", ")
                )));
            }
            let dependents: Vec<&str> = all
                .iter()
                .filter(|n| n.value.depends_on.iter().any(|d| d == id))
                .map(|n| n.value.id.as_str())
                .collect();
            if !dependents.is_empty() {
                return Err(SsotError::FailedPrecondition(format!(
                    "requirement {id} is a dependency of {}; remove those dependencies first",
                    dependents.join(", ")
                )));
            }
            let txn = Txn::new()
                .when(guard)
                .when(Compare::mod_revision(key(project, number), node.meta.mod_revision))
                .when(Compare::mod_revision(keys::in_project(project, STRUCTURE), structure_rev))
                .then(Op::delete(key(project, number)))
                .then(Op::put(keys::in_project(project, STRUCTURE), encode_json(&structure)));
            match self.commit(txn).await? {
                Ok(revision) => return Ok(revision),
                Err((0, _)) => return Err(SsotError::not_found("project", project)),
                Err((1, 0)) => return Err(SsotError::not_found(KIND, id)),
                Err((1, current)) if expected.is_some() => {
                    return Err(SsotError::StaleEtag {
                        kind: KIND,
                        id: id.to_string(),
                        expected: node.meta.mod_revision,
                        current,
                    });
                }
                Err(_) => super::after_lost_race(attempt).await,
            }
        }
        Err(super::lost_race(KIND, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine() {
        use Status::*;
        let check = |from: Status, to: Status, ok: bool| assert_eq!(from.next().contains(&to), ok, "{from:?} → {to:?}");
        check(Pending, Claimed, true);
        check(Pending, Done, false);
        check(Pending, InProgress, false);
        check(Claimed, InProgress, true);
        check(InProgress, Done, true);
        check(InProgress, Failed, true);
        check(InProgress, Blocked, true);
        check(Done, Pending, false);
        check(Failed, Pending, true);
        check(Failed, Done, false);
        for status in Status::ALL {
            assert!(!status.next().contains(&status), "{status:?} moves to itself");
        }
    }

    #[test]
    fn ids_and_cycles() {
        assert_eq!(parse_id("id", "R12").unwrap(), 12);
        for bad in ["12", "R", "R0", "r1", "R-1", "R1x", "R01", "R+1", "R 1", "R１"] {
            assert!(parse_id("id", bad).is_err(), "{bad}");
        }
        let graph: HashMap<String, Vec<String>> = [("R1", vec!["R2"]), ("R2", vec!["R3"]), ("R3", vec![])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
            .collect();
        let from = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(path(&graph, &from(&["R1"]), "R3").unwrap(), ["R1", "R2", "R3"]);
        assert_eq!(path(&graph, &from(&["R3", "R2"]), "R3").unwrap(), ["R3"]);
        assert!(path(&graph, &from(&["R3"]), "R1").is_none());
    }

    /// A long chain and the most dependencies one request may add: one search, not one per dependency.
    #[tokio::test]
    async fn dependency_checks_are_bounded() {
        let data = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(
            crate::ssot::sled_store::SledStore::open(data.path(), crate::ssot::sled_store::SledOptions::default())
                .unwrap(),
        );
        let ssot = Ssot::new(store, Default::default());
        ssot.create_project("p", "", "").await.unwrap();
        let chain = 600;
        for n in 1..=chain {
            let depends_on = if n > 1 { vec![format!("R{}", n - 1)] } else { vec![] };
            let new = NewRequirement { title: format!("step {n}"), depends_on, ..Default::default() };
            ssot.create_requirement("p", new).await.unwrap();
        }
        let too_many: Vec<String> = (1..=257).map(|n| format!("R{n}")).collect();
        let error = ssot.set_dependencies("p", "R1", &too_many, &[], "").await.unwrap_err().to_string();
        assert!(error.contains("the limit is 256"), "{error}");
        // R1 depending on any later step closes the chain into a cycle, found with its path.
        let most: Vec<String> = (chain - 255..=chain).map(|n| format!("R{n}")).collect();
        let error = ssot.set_dependencies("p", "R1", &most, &[], "").await.unwrap_err().to_string();
        assert!(error.contains("would create the cycle R1 → R345 → R344") && error.ends_with("→ R1"), "{error:.300}");
        let fine: Vec<String> = (2..=257).map(|n| format!("R{n}")).collect();
        let error = ssot.set_dependencies("p", "R600", &fine, &[], "").await.unwrap_err().to_string();
        assert!(error.contains("the limit is 256"), "R600 has one already: {error}");
        let fine: Vec<String> = (2..=256).map(|n| format!("R{n}")).collect();
        let r = ssot.set_dependencies("p", "R600", &fine, &[], "").await.unwrap();
        assert_eq!(r.value.depends_on.len(), 256);
    }
}
