//! Conversions between domain records and `maestro.v1` wire types. Prost types
//! stop here: they are never stored.

use maestro_shared::v1;
use tonic::Status;

use crate::ssot::contracts::{Contract, ContractKind, ContractStatus};
use crate::ssot::exec_log::LogEntry;
use crate::ssot::locks::Lock;
use crate::ssot::memory::MemoryEntry;
use crate::ssot::projects::Project;
use crate::ssot::requirements::{Requirement, Status as ReqStatus};
use crate::ssot::snapshots::{ChangeKind, Snapshot};
use crate::ssot::store::LeaseInfo;
use crate::ssot::{Meta, Versioned};

pub(crate) fn meta(meta: Meta) -> v1::ResourceMeta {
    v1::ResourceMeta {
        create_revision: meta.create_revision,
        mod_revision: meta.mod_revision,
        version: meta.version,
        etag: meta.mod_revision.to_string(),
        modified_by: meta.modified_by,
    }
}

pub(crate) fn project(p: Versioned<Project>) -> v1::Project {
    v1::Project {
        id: p.value.id,
        display_name: p.value.display_name,
        workspace: p.value.workspace,
        create_time_ms: p.value.create_time_ms,
        meta: Some(meta(p.meta)),
    }
}

pub(crate) fn req_status_to_wire(status: ReqStatus) -> v1::RequirementStatus {
    match status {
        ReqStatus::Pending => v1::RequirementStatus::Pending,
        ReqStatus::Claimed => v1::RequirementStatus::Claimed,
        ReqStatus::InProgress => v1::RequirementStatus::InProgress,
        ReqStatus::Done => v1::RequirementStatus::Done,
        ReqStatus::Failed => v1::RequirementStatus::Failed,
        ReqStatus::Blocked => v1::RequirementStatus::Blocked,
    }
}

/// A status from the wire; `None` for UNSPECIFIED when `optional`.
pub(crate) fn req_status_from_wire(field: &str, raw: i32, optional: bool) -> Result<Option<ReqStatus>, Status> {
    let status = v1::RequirementStatus::try_from(raw)
        .map_err(|_| Status::invalid_argument(format!("{field}: {raw} is not a requirement status")))?;
    Ok(Some(match status {
        v1::RequirementStatus::Unspecified if optional => return Ok(None),
        v1::RequirementStatus::Unspecified => {
            return Err(Status::invalid_argument(format!("{field}: a requirement status is required")));
        }
        v1::RequirementStatus::Pending => ReqStatus::Pending,
        v1::RequirementStatus::Claimed => ReqStatus::Claimed,
        v1::RequirementStatus::InProgress => ReqStatus::InProgress,
        v1::RequirementStatus::Done => ReqStatus::Done,
        v1::RequirementStatus::Failed => ReqStatus::Failed,
        v1::RequirementStatus::Blocked => ReqStatus::Blocked,
    }))
}

pub(crate) fn requirement(project_id: &str, r: Versioned<Requirement>) -> v1::Requirement {
    let value = r.value;
    v1::Requirement {
        project_id: project_id.to_string(),
        id: value.id,
        parent_id: value.parent_id,
        title: value.title,
        description: value.description,
        role_hint: value.role_hint,
        acceptance: value.acceptance,
        status: req_status_to_wire(value.status) as i32,
        depends_on: value.depends_on,
        assignee: value.assignee,
        attempts: value.attempts,
        create_time_ms: value.create_time_ms,
        update_time_ms: value.update_time_ms,
        meta: Some(meta(r.meta)),
        status_reason: value.status_reason,
    }
}

pub(crate) fn contract_kind_from_wire(raw: i32) -> Result<ContractKind, Status> {
    match v1::ContractKind::try_from(raw) {
        Ok(v1::ContractKind::Openapi) => Ok(ContractKind::Openapi),
        Ok(v1::ContractKind::Protobuf) => Ok(ContractKind::Protobuf),
        Ok(v1::ContractKind::JsonSchema) => Ok(ContractKind::JsonSchema),
        Ok(v1::ContractKind::FunctionSignature) => Ok(ContractKind::FunctionSignature),
        Ok(v1::ContractKind::Unspecified) => {
            Err(Status::invalid_argument("kind: required (openapi, protobuf, json-schema or function-signature)"))
        }
        Err(_) => Err(Status::invalid_argument(format!("kind: {raw} is not a contract kind"))),
    }
}

fn contract_kind_to_wire(kind: ContractKind) -> v1::ContractKind {
    match kind {
        ContractKind::Openapi => v1::ContractKind::Openapi,
        ContractKind::Protobuf => v1::ContractKind::Protobuf,
        ContractKind::JsonSchema => v1::ContractKind::JsonSchema,
        ContractKind::FunctionSignature => v1::ContractKind::FunctionSignature,
    }
}

pub(crate) fn contract_status_from_wire(raw: i32, default: Option<ContractStatus>) -> Result<ContractStatus, Status> {
    match v1::ContractStatus::try_from(raw) {
        Ok(v1::ContractStatus::Unspecified) => {
            default.ok_or_else(|| Status::invalid_argument("status: a contract status is required"))
        }
        Ok(v1::ContractStatus::Draft) => Ok(ContractStatus::Draft),
        Ok(v1::ContractStatus::Proposed) => Ok(ContractStatus::Proposed),
        Ok(v1::ContractStatus::Accepted) => Ok(ContractStatus::Accepted),
        Ok(v1::ContractStatus::Violated) => Ok(ContractStatus::Violated),
        Ok(v1::ContractStatus::Deprecated) => Ok(ContractStatus::Deprecated),
        Err(_) => Err(Status::invalid_argument(format!("status: {raw} is not a contract status"))),
    }
}

fn contract_status_to_wire(status: ContractStatus) -> v1::ContractStatus {
    match status {
        ContractStatus::Draft => v1::ContractStatus::Draft,
        ContractStatus::Proposed => v1::ContractStatus::Proposed,
        ContractStatus::Accepted => v1::ContractStatus::Accepted,
        ContractStatus::Violated => v1::ContractStatus::Violated,
        ContractStatus::Deprecated => v1::ContractStatus::Deprecated,
    }
}

pub(crate) fn contract(project_id: &str, c: Versioned<Contract>) -> v1::Contract {
    let value = c.value;
    v1::Contract {
        project_id: project_id.to_string(),
        name: value.name,
        version: value.version,
        kind: contract_kind_to_wire(value.kind) as i32,
        spec: value.spec,
        owner: value.owner,
        consumers: value.consumers,
        status: contract_status_to_wire(value.status) as i32,
        status_reason: value.status_reason,
        create_time_ms: value.create_time_ms,
        meta: Some(meta(c.meta)),
    }
}

pub(crate) fn log_entry(project_id: &str, e: Versioned<LogEntry>) -> v1::LogEntry {
    let value = e.value;
    v1::LogEntry {
        project_id: project_id.to_string(),
        seq: value.seq,
        time_ms: value.time_ms,
        loop_id: value.body.loop_id,
        epoch: value.body.epoch,
        agent: value.body.agent,
        action: value.body.action,
        target: value.body.target,
        outcome: value.body.outcome,
        tokens: value.body.tokens,
        duration_ms: value.body.duration_ms,
        detail: value.body.detail,
        requirement: value.body.requirement,
        tokens_in: value.body.tokens_in,
        tokens_out: value.body.tokens_out,
        prev_hash: value.prev_hash,
        hash: value.hash,
        revision: e.meta.mod_revision,
    }
}

pub(crate) fn memory_entry(project_id: &str, m: Versioned<MemoryEntry>) -> v1::MemoryEntry {
    v1::MemoryEntry {
        project_id: project_id.to_string(),
        agent: m.value.agent,
        key: m.value.key,
        value: m.value.value,
        expire_time_ms: m.value.expire_time_ms,
        update_time_ms: m.value.update_time_ms,
        meta: Some(meta(m.meta)),
    }
}

pub(crate) fn lease(info: LeaseInfo) -> v1::Lease {
    v1::Lease { id: info.id, ttl_seconds: info.ttl.as_secs(), expire_time_ms: info.deadline_ms }
}

pub(crate) fn lock(project_id: &str, l: Versioned<Lock>) -> v1::Lock {
    v1::Lock {
        project_id: project_id.to_string(),
        name: l.value.name,
        holder: l.value.holder,
        lease_id: l.value.lease_id,
        acquire_time_ms: l.value.acquire_time_ms,
        meta: Some(meta(l.meta)),
    }
}

pub(crate) fn snapshot(project_id: &str, s: Snapshot) -> v1::Snapshot {
    v1::Snapshot {
        project_id: project_id.to_string(),
        name: s.name,
        revision: s.revision,
        git_commit: s.git_commit,
        description: s.description,
        create_time_ms: s.create_time_ms,
    }
}

pub(crate) fn change_kind(kind: ChangeKind) -> v1::ChangeKind {
    match kind {
        ChangeKind::Added => v1::ChangeKind::Added,
        ChangeKind::Removed => v1::ChangeKind::Removed,
        ChangeKind::Modified => v1::ChangeKind::Modified,
    }
}

/// Requirement and contract paths carry zero-padded numbers in storage; show
/// them the way the API names the resources.
pub(crate) fn resource_path(path: &str) -> String {
    if let Some(number) = path.strip_prefix("requirements/")
        && let Ok(n) = number.parse::<u64>()
    {
        return format!("requirements/R{n}");
    }
    if let Some((name, version)) = path.strip_prefix("contracts/").and_then(|rest| rest.split_once("/v/"))
        && let Ok(v) = version.parse::<u32>()
    {
        return format!("contracts/{name}/v/{v}");
    }
    path.to_string()
}
