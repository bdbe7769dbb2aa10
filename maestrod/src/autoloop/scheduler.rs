//! Which requirements an epoch works on, by whom, and which agents may run
//! side by side. Ready = a PENDING leaf of the loop's tree whose
//! dependencies are DONE. Roles come from the role hint when the policy
//! knows it, else from keywords of the title and description.

use std::collections::{BTreeMap, BTreeSet};

use crate::harness::policy::Policy;
use crate::ssot::requirements::{Requirement, Status};

/// Roles that never take a requirement of their own.
const NOT_ASSIGNABLE: [&str; 2] = ["planning", "contract-validator"];

/// A requirement matched to a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub requirement: String,
    pub role: String,
}

/// Whether `id` is `root` or below it.
pub fn in_tree(all: &[Requirement], root: &str, id: &str) -> bool {
    let parents: BTreeMap<&str, &str> = all.iter().map(|r| (r.id.as_str(), r.parent_id.as_str())).collect();
    let mut node = id;
    for _ in 0..=all.len() {
        if node == root {
            return true;
        }
        match parents.get(node) {
            Some(parent) if !parent.is_empty() => node = parent,
            _ => return false,
        }
    }
    false
}

/// The leaves of the loop's tree: the requirements that are worked on (the
/// root itself while it has no children).
pub fn leaves<'a>(all: &'a [Requirement], root: &str) -> Vec<&'a Requirement> {
    let parents: BTreeSet<&str> = all.iter().map(|r| r.parent_id.as_str()).collect();
    all.iter().filter(|r| !parents.contains(r.id.as_str()) && in_tree(all, root, &r.id)).collect()
}

/// The role for `requirement`.
pub fn role_for(requirement: &Requirement, policy: &Policy) -> String {
    let hint = requirement.role_hint.as_str();
    if !hint.is_empty() && policy.roles.contains_key(hint) && !NOT_ASSIGNABLE.contains(&hint) {
        return hint.to_string();
    }
    let text = format!("{} {}", requirement.title, requirement.description).to_lowercase();
    let words: BTreeSet<&str> = text.split(|c: char| !c.is_alphanumeric()).collect();
    let any = |list: &[&str]| list.iter().any(|w| words.contains(w));
    if any(&["test", "tests", "testing", "coverage"]) {
        "test".into()
    } else if any(&["review", "audit"]) {
        "review".into()
    } else if any(&["ui", "page", "frontend", "cli", "client", "screen", "view", "html", "css"]) {
        "frontend".into()
    } else {
        "backend".into()
    }
}

/// Up to `max` ready leaves, in id order, with their roles.
pub fn ready(all: &[Requirement], root: &str, policy: &Policy, max: usize) -> Vec<Pick> {
    let done: BTreeSet<&str> = all.iter().filter(|r| r.status == Status::Done).map(|r| r.id.as_str()).collect();
    let mut picks: Vec<&Requirement> = leaves(all, root)
        .into_iter()
        .filter(|r| r.status == Status::Pending && r.depends_on.iter().all(|d| done.contains(d.as_str())))
        .collect();
    picks.sort_by_key(|r| r.id.trim_start_matches('R').parse::<u64>().unwrap_or(u64::MAX));
    picks.into_iter().take(max).map(|r| Pick { requirement: r.id.clone(), role: role_for(r, policy) }).collect()
}

/// Why the loop's tree cannot be worked as planned (empty when it can): no
/// requirement under the root, role hints the project does not define,
/// dependencies on an ancestor or a descendant (never ready), on a
/// requirement that does not exist.
pub fn plan_problems(all: &[Requirement], root: &str, policy: &Policy) -> Vec<String> {
    let mut problems = Vec::new();
    if !all.iter().any(|r| r.parent_id == root) {
        problems.push(format!("planning created no requirement under {root} (an empty plan)"));
    }
    let ids: BTreeSet<&str> = all.iter().map(|r| r.id.as_str()).collect();
    for r in all.iter().filter(|r| r.id != root && r.status != Status::Done && in_tree(all, root, &r.id)) {
        let hint = r.role_hint.as_str();
        if !hint.is_empty() && (!policy.roles.contains_key(hint) || NOT_ASSIGNABLE.contains(&hint)) {
            let roles: Vec<&str> =
                policy.roles.keys().map(String::as_str).filter(|k| !NOT_ASSIGNABLE.contains(k)).collect();
            problems.push(format!(
                "{} has role {hint:?}, which no agent of this project takes (roles: {})",
                r.id,
                roles.join(", ")
            ));
        }
        for dep in &r.depends_on {
            if !ids.contains(dep.as_str()) {
                problems.push(format!("{} depends on {dep}, which does not exist", r.id));
            } else if in_tree(all, dep, &r.id) {
                problems.push(format!("{} depends on {dep}, which contains it: it could never be ready", r.id));
            } else if in_tree(all, &r.id, dep) {
                problems.push(format!("{} depends on {dep}, which is part of it: it could never be ready", r.id));
            }
        }
    }
    problems
}

/// The literal directory prefixes of a role's write globs ("src/api/" for "src/api/**").
fn write_prefixes(policy: &Policy, role: &str) -> Vec<String> {
    let globs = policy.roles.get(role).and_then(|r| r.source.write.clone()).unwrap_or_default();
    globs.iter().map(|g| g[..g.find(['*', '?', '[', '{']).unwrap_or(g.len())].to_string()).collect()
}

/// Whether two roles may write the same files: the same role, or write
/// globs whose literal prefixes nest. Roles that write nothing overlap nothing.
pub fn overlap(policy: &Policy, a: &str, b: &str) -> bool {
    let (pa, pb) = (write_prefixes(policy, a), write_prefixes(policy, b));
    if pa.is_empty() || pb.is_empty() {
        return false;
    }
    a == b || pa.iter().any(|x| pb.iter().any(|y| x.starts_with(y.as_str()) || y.starts_with(x.as_str())))
}

/// Splits the epoch's picks into waves: agents of one wave run at the same
/// time and their write sets don't overlap; waves run one after another.
pub fn waves(picks: &[Pick], policy: &Policy) -> Vec<Vec<Pick>> {
    let mut waves: Vec<Vec<Pick>> = Vec::new();
    for pick in picks {
        match waves.iter_mut().find(|w| w.iter().all(|p| !overlap(policy, &p.role, &pick.role))) {
            Some(wave) => wave.push(pick.clone()),
            None => waves.push(vec![pick.clone()]),
        }
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, parent: &str, hint: &str, title: &str, status: Status, deps: &[&str]) -> Requirement {
        Requirement {
            id: id.into(),
            parent_id: parent.into(),
            title: title.into(),
            description: String::new(),
            role_hint: hint.into(),
            acceptance: Vec::new(),
            status,
            status_reason: String::new(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            assignee: String::new(),
            attempts: 0,
            create_time_ms: 0,
            update_time_ms: 0,
        }
    }

    #[test]
    fn ready_leaves_get_roles_and_waves() {
        let policy = Policy::from_raw(Default::default()).unwrap();
        let all = vec![
            req("R1", "", "", "To-do app", Status::Pending, &[]),
            req("R2", "R1", "backend", "REST API", Status::Done, &[]),
            req("R3", "R1", "", "Web page for the list", Status::Pending, &["R2"]),
            req("R4", "R1", "", "Tests of the API", Status::Pending, &["R2"]),
            req("R5", "R1", "planning", "Store to-dos", Status::Pending, &[]),
            req("R6", "R1", "backend", "Delete", Status::Pending, &["R3"]),
            req("R7", "", "backend", "Another tree", Status::Pending, &[]),
        ];
        let picks = ready(&all, "R1", &policy, 10);
        let got: Vec<(&str, &str)> = picks.iter().map(|p| (p.requirement.as_str(), p.role.as_str())).collect();
        assert_eq!(got, [("R3", "frontend"), ("R4", "test"), ("R5", "backend")]);
        assert_eq!(ready(&all, "R1", &policy, 2).len(), 2);
        // frontend, test and backend write disjoint trees: one wave. Two backends: two waves.
        assert_eq!(waves(&picks, &policy).len(), 1);
        let two = [picks[2].clone(), Pick { requirement: "R9".into(), role: "backend".into() }];
        assert_eq!(waves(&two, &policy).len(), 2);
        // A root without children is itself the work.
        assert_eq!(ready(&all, "R7", &policy, 10)[0].requirement, "R7");
    }

    #[test]
    fn plans_that_cannot_work_are_named() {
        let policy = Policy::from_raw(Default::default()).unwrap();
        let good = vec![
            req("R1", "", "", "App", Status::Pending, &[]),
            req("R2", "R1", "backend", "API", Status::Pending, &[]),
            req("R3", "R1", "", "Tests", Status::Pending, &["R2"]),
        ];
        assert!(plan_problems(&good, "R1", &policy).is_empty());
        let empty = vec![req("R1", "", "", "App", Status::Pending, &[])];
        assert!(plan_problems(&empty, "R1", &policy)[0].contains("empty plan"));
        let bad = vec![
            req("R1", "", "", "App", Status::Pending, &[]),
            req("R2", "R1", "wizard", "Magic", Status::Pending, &[]),
            req("R3", "R1", "planning", "Plan more", Status::Pending, &[]),
            req("R4", "R1", "backend", "API", Status::Pending, &["R1"]),
            req("R5", "R1", "backend", "Parts", Status::Pending, &["R6"]),
            req("R6", "R5", "backend", "A part", Status::Pending, &["R9"]),
        ];
        let problems = plan_problems(&bad, "R1", &policy);
        let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
        assert!(has("R2 has role \"wizard\""), "{problems:?}");
        assert!(has("R3 has role \"planning\""), "{problems:?}");
        assert!(has("R4 depends on R1, which contains it"), "{problems:?}");
        assert!(has("R5 depends on R6, which is part of it"), "{problems:?}");
        assert!(has("R6 depends on R9, which does not exist"), "{problems:?}");
        assert_eq!(problems.len(), 5, "{problems:?}");
    }
}
