//! The ContractValidator: rule-based, no model. For the project's contracts it
//! checks that every contract a requirement references exists (`contract:NAME`
//! or `contract:NAME@vN` in its description or acceptance criteria; only
//! requirements someone has started on, since a planned consumer may name a
//! contract its producer has not written yet), that a
//! new version keeps what the previous one offered (operations, fields,
//! signatures), that producer and consumers agree (an owner, consumers that
//! are known roles other than the owner), and that each operation of a
//! contract is present in the producer's code. It sets each checked
//! contract's status (PROPOSED → ACCEPTED, ACCEPTED ⇄ VIOLATED) and logs every
//! violation.

use std::collections::BTreeSet;
use std::path::Path;

use regex::Regex;

use crate::harness::policy::Policy;
use crate::ssot::contracts::{Contract, ContractKind, ContractStatus};
use crate::ssot::exec_log::NewLogEntry;
use crate::ssot::{Result, Ssot};

const AGENT: &str = "contract-validator";

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub contract: String,
    pub rule: &'static str,
    pub detail: String,
}

/// What one validation pass found and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// (contract, new status) for every status that changed.
    pub status_changes: Vec<(String, ContractStatus)>,
}

/// One operation a contract declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// How reports name it: "POST /todos", "add", "field title".
    pub label: String,
    /// For HTTP operations: the method and the path up to its first parameter.
    pub route: Option<(String, String)>,
    /// Names that identify it in code (operationId, function or rpc name).
    pub names: Vec<String>,
}

impl Operation {
    fn named(label: String) -> Self {
        Self { names: vec![label.clone()], label, route: None }
    }

    /// Whether `code` implements it: one of its names appears, or a line holds
    /// both the method and the path (`@app.post("/todos")`, `router.post('/todos'`).
    /// Data fields are not looked for.
    pub fn present_in(&self, code: &str) -> bool {
        if self.label.starts_with("field ") {
            return true;
        }
        if self.names.iter().any(|n| !n.is_empty() && code.contains(n.as_str())) {
            return true;
        }
        let Some((method, path)) = &self.route else { return false };
        code.lines().any(|line| line.to_lowercase().contains(method.as_str()) && line.contains(path.as_str()))
    }
}

/// The operations a contract declares.
pub fn operations(contract: &Contract) -> Vec<Operation> {
    match contract.kind {
        ContractKind::Openapi => {
            let Ok(spec) = yaml_serde::from_str::<yaml_serde::Value>(&contract.spec) else { return Vec::new() };
            let Some(paths) = spec.get("paths").and_then(|p| p.as_mapping()) else { return Vec::new() };
            let mut out = Vec::new();
            for (path, methods) in paths {
                let Some(path) = path.as_str() else { continue };
                let Some(methods) = methods.as_mapping() else { continue };
                for (method, operation) in methods {
                    let Some(method) =
                        method.as_str().filter(|m| ["get", "post", "put", "patch", "delete"].contains(m))
                    else {
                        continue;
                    };
                    let prefix = path.split('{').next().unwrap_or(path).to_string();
                    let names =
                        operation.get("operationId").and_then(|o| o.as_str()).map(String::from).into_iter().collect();
                    out.push(Operation {
                        label: format!("{} {path}", method.to_uppercase()),
                        route: Some((method.to_string(), prefix)),
                        names,
                    });
                }
            }
            out
        }
        ContractKind::FunctionSignature => {
            let name = Regex::new(r"(?:fn|def|function)\s+([A-Za-z_][A-Za-z0-9_]*)").expect("valid regex");
            contract.spec.lines().filter_map(|l| name.captures(l).map(|c| Operation::named(c[1].to_string()))).collect()
        }
        ContractKind::Protobuf => {
            let rpc = Regex::new(r"rpc\s+([A-Za-z_][A-Za-z0-9_]*)").expect("valid regex");
            rpc.captures_iter(&contract.spec).map(|c| Operation::named(c[1].to_string())).collect()
        }
        ContractKind::JsonSchema => {
            let Ok(schema) = serde_json::from_str::<serde_json::Value>(&contract.spec) else { return Vec::new() };
            schema["properties"]
                .as_object()
                .map(|p| {
                    p.keys()
                        .map(|k| Operation { label: format!("field {k}"), route: None, names: Vec::new() })
                        .collect()
                })
                .unwrap_or_default()
        }
    }
}

/// Every file below `root` whose relative path the producer may write.
fn producer_sources(root: &Path, policy: &Policy, owner: &str) -> String {
    let Ok(role) = policy.role(owner) else { return String::new() };
    let mut text = String::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(relative) = path.strip_prefix(root) else { continue };
            let relative = relative.to_string_lossy().to_string();
            if relative == ".git" {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if role.write.is_match(&relative)
                && let Ok(content) = std::fs::read_to_string(&path)
            {
                text.push_str(&content);
                text.push('\n');
            }
        }
    }
    text
}

/// Runs every rule over the project and applies the resulting statuses.
pub async fn validate(ssot: &Ssot, project: &str, workspace: &Path, policy: &Policy) -> Result<Report> {
    let latest = ssot.list_contracts(project, 1000, "").await?.items;
    let mut report = Report::default();
    let mut violated: BTreeSet<String> = BTreeSet::new();
    let mut flag = |contract: &str, rule: &'static str, detail: String, report: &mut Report| {
        violated.insert(contract.to_string());
        report.violations.push(Violation { contract: contract.to_string(), rule, detail });
    };

    // References from requirements.
    let reference = Regex::new(r"contract:([a-z0-9](?:[a-z0-9._-]*[a-z0-9])?)(?:@v([0-9]+))?").expect("valid regex");
    for requirement in ssot.all_requirements(project).await? {
        let r = &requirement.value;
        if r.status == crate::ssot::requirements::Status::Pending {
            continue;
        }
        let text = format!("{}\n{}", r.description, r.acceptance.join("\n"));
        for capture in reference.captures_iter(&text) {
            let name = &capture[1];
            match latest.iter().find(|c| c.value.name == name) {
                None => flag(
                    name,
                    "reference.missing",
                    format!("{} references contract {name}, which does not exist", r.id),
                    &mut report,
                ),
                Some(found) => {
                    if let Some(version) = capture.get(2).and_then(|v| v.as_str().parse::<u32>().ok())
                        && version > found.value.version
                    {
                        flag(
                            name,
                            "reference.version",
                            format!("{} references {name}@v{version}; the latest is v{}", r.id, found.value.version),
                            &mut report,
                        );
                    }
                }
            }
        }
    }

    for contract in latest.iter().map(|c| &c.value) {
        if matches!(contract.status, ContractStatus::Deprecated | ContractStatus::Draft) {
            continue;
        }
        let name = contract.name.as_str();
        // Producer and consumers.
        if contract.owner.is_empty() {
            flag(name, "parties.owner", format!("{name} v{} has no owner (producer)", contract.version), &mut report);
        } else if policy.role(&contract.owner).is_err() {
            flag(
                name,
                "parties.owner",
                format!("{name}: owner {} is not a role of this project", contract.owner),
                &mut report,
            );
        }
        for consumer in &contract.consumers {
            if consumer == &contract.owner {
                flag(
                    name,
                    "parties.consumer",
                    format!("{name}: {consumer} is both producer and consumer"),
                    &mut report,
                );
            } else if policy.role(consumer).is_err() {
                flag(
                    name,
                    "parties.consumer",
                    format!("{name}: consumer {consumer} is not a role of this project"),
                    &mut report,
                );
            }
        }
        // Compatibility with the previous version.
        if contract.version > 1 {
            let previous = ssot.get_contract(project, name, contract.version - 1).await?.value;
            let now: BTreeSet<String> = operations(contract).into_iter().map(|op| op.label).collect();
            for gone in operations(&previous).into_iter().map(|op| op.label).filter(|op| !now.contains(op)) {
                flag(
                    name,
                    "version.incompatible",
                    format!("{name} v{} drops {gone} of v{}", contract.version, previous.version),
                    &mut report,
                );
            }
        }
        // Operations present in the producer's code.
        if !contract.owner.is_empty() {
            let code = producer_sources(workspace, policy, &contract.owner);
            for operation in operations(contract).into_iter().filter(|op| !op.present_in(&code)) {
                let detail =
                    format!("{name} v{}: {} is not in {}'s code", contract.version, operation.label, contract.owner);
                flag(name, "operation.missing", detail, &mut report);
            }
        }
    }

    for violation in &report.violations {
        let entry = NewLogEntry {
            agent: AGENT.into(),
            action: "contract_check".into(),
            target: violation.contract.clone(),
            outcome: "violated".into(),
            detail: format!("{}: {}", violation.rule, violation.detail),
            ..NewLogEntry::default()
        };
        ssot.append_log(project, entry).await?;
    }
    for contract in latest.iter().map(|c| &c.value) {
        let target = match (contract.status, violated.contains(&contract.name)) {
            (ContractStatus::Proposed | ContractStatus::Violated, false) => ContractStatus::Accepted,
            (ContractStatus::Accepted, true) => ContractStatus::Violated,
            _ => continue,
        };
        let reason = if target == ContractStatus::Violated {
            "the contract validator found violations; see the log"
        } else {
            "all contract rules pass"
        };
        ssot.set_contract_status(project, &contract.name, contract.version, target, reason, "").await?;
        report.status_changes.push((contract.name.clone(), target));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ssot::contracts::NewContract;
    use crate::ssot::requirements::NewRequirement;
    use crate::ssot::sled_store::{SledOptions, SledStore};

    const TODO_API: &str = "openapi: 3.1.0\ninfo: {title: todos, version: '1'}\npaths:\n  /todos:\n    get: {operationId: listTodos}\n    post: {operationId: addTodo}\n  /todos/{id}/done:\n    put: {operationId: completeTodo}\n";

    async fn setup() -> (tempfile::TempDir, tempfile::TempDir, Ssot, Policy) {
        let data = tempfile::tempdir().unwrap();
        let workspace = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(workspace.path().join("src/api")).unwrap();
        let ssot =
            Ssot::new(Arc::new(SledStore::open(data.path(), SledOptions::default()).unwrap()), Default::default());
        ssot.create_project("p", "", "").await.unwrap();
        let policy = Policy::from_raw(Default::default()).unwrap();
        (data, workspace, ssot, policy)
    }

    fn contract(name: &str, kind: ContractKind, spec: &str, owner: &str, consumers: &[&str]) -> NewContract {
        NewContract {
            name: name.into(),
            kind,
            spec: spec.into(),
            owner: owner.into(),
            consumers: consumers.iter().map(|c| c.to_string()).collect(),
            status: ContractStatus::Proposed,
            etag: String::new(),
        }
    }

    #[test]
    fn operations_are_read_from_each_kind() {
        let openapi = Contract {
            name: "t".into(),
            version: 1,
            kind: ContractKind::Openapi,
            spec: TODO_API.into(),
            owner: String::new(),
            consumers: Vec::new(),
            status: ContractStatus::Proposed,
            status_reason: String::new(),
            create_time_ms: 0,
        };
        let labels = |c: &Contract| operations(c).into_iter().map(|op| op.label).collect::<Vec<_>>();
        assert_eq!(labels(&openapi), ["GET /todos", "POST /todos", "PUT /todos/{id}/done"]);
        let put = operations(&openapi).pop().unwrap();
        assert_eq!(put.route, Some(("put".into(), "/todos/".into())));
        assert!(put.present_in("@app.put('/todos/<int:id>/done')"));
        assert!(put.present_in("def completeTodo(id): ..."), "by operationId");
        assert!(!put.present_in("@app.get('/todos/<int:id>/done')"));
        let functions = Contract {
            kind: ContractKind::FunctionSignature,
            spec: "def add(x: int) -> int\nfn remove(id: u64)".into(),
            ..openapi
        };
        assert_eq!(labels(&functions), ["add", "remove"]);
    }

    #[tokio::test]
    async fn a_consistent_contract_is_accepted() {
        let (_data, workspace, ssot, policy) = setup().await;
        std::fs::write(
            workspace.path().join("src/api/app.py"),
            "@app.get('/todos')\ndef list_todos(): ...\n@app.post('/todos')\ndef add(): ...\n@app.put('/todos/<id>/done')\ndef done(id): ...\n",
        )
        .unwrap();
        ssot.put_contract("p", contract("todo-api", ContractKind::Openapi, TODO_API, "backend", &["frontend"]))
            .await
            .unwrap();
        let report = validate(&ssot, "p", workspace.path(), &policy).await.unwrap();
        assert_eq!(report.violations, []);
        assert_eq!(report.status_changes, [("todo-api".to_string(), ContractStatus::Accepted)]);
    }

    #[tokio::test]
    async fn mismatches_and_missing_operations_are_violations() {
        let (_data, workspace, ssot, policy) = setup().await;
        // The code implements only the listing.
        std::fs::write(workspace.path().join("src/api/app.py"), "@app.get('/todos')\ndef list_todos(): ...\n").unwrap();
        ssot.put_contract("p", contract("todo-api", ContractKind::Openapi, TODO_API, "backend", &["frontend"]))
            .await
            .unwrap();
        ssot.set_contract_status("p", "todo-api", 1, ContractStatus::Accepted, "", "").await.unwrap();
        // Producer and consumer disagree: the backend lists itself as a consumer of its own contract.
        ssot.put_contract(
            "p",
            contract(
                "stats",
                ContractKind::FunctionSignature,
                "def count_done() -> int",
                "backend",
                &["backend", "mobile"],
            ),
        )
        .await
        .unwrap();
        for title in ["page", "later"] {
            let new = NewRequirement {
                title: title.into(),
                description: format!("uses contract:todo-api@v3 and contract:users-{title}."),
                ..Default::default()
            };
            ssot.create_requirement("p", new).await.unwrap();
        }
        // Only started work is held to its references: "later" is still PENDING.
        ssot.set_requirement_status("p", "R1", crate::ssot::requirements::Status::Claimed, "", "frontend-1", "")
            .await
            .unwrap();
        let report = validate(&ssot, "p", workspace.path(), &policy).await.unwrap();
        let rules: BTreeSet<(&str, &str)> = report.violations.iter().map(|v| (v.contract.as_str(), v.rule)).collect();
        assert!(rules.contains(&("todo-api", "operation.missing")), "{report:?}");
        assert!(rules.contains(&("todo-api", "reference.version")));
        assert!(
            rules.contains(&("users-page", "reference.missing")),
            "the sentence's full stop is not part of the name"
        );
        assert!(!rules.contains(&("users-later", "reference.missing")));
        assert!(rules.contains(&("stats", "parties.consumer")));
        assert!(rules.contains(&("stats", "operation.missing")));
        assert!(report.violations.iter().any(|v| v.detail.contains("POST /todos")));
        assert_eq!(ssot.get_contract("p", "todo-api", 0).await.unwrap().value.status, ContractStatus::Violated);
        let logged = ssot.list_log("p", 0, "contract-validator", "", 100, "").await.unwrap().items;
        assert_eq!(logged.len(), report.violations.len());

        // A version that drops an operation is incompatible.
        let smaller = "openapi: 3.1.0\npaths:\n  /todos:\n    get: {operationId: listTodos}\n";
        ssot.put_contract("p", contract("todo-api", ContractKind::Openapi, smaller, "backend", &["frontend"]))
            .await
            .unwrap();
        let report = validate(&ssot, "p", workspace.path(), &policy).await.unwrap();
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.rule == "version.incompatible" && v.detail.contains("drops POST /todos")),
            "{report:?}"
        );
    }
}
