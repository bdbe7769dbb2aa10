//! The contract registry: every version of every contract is kept; status
//! moves DRAFT → PROPOSED → ACCEPTED → VIOLATED | DEPRECATED.

use serde::{Deserialize, Serialize};

use super::clock::now_ms;
use super::paging::PageToken;
use super::store::{Compare, Op, Txn};
use super::{Edit, Meta, Page, Result, Ssot, SsotError, Target, Versioned, check_etag, encode_json, keys, validate};

const KIND: &str = "contract";
const PREFIX: &str = "contracts/";
pub const MAX_SPEC_LEN: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContractKind {
    Openapi,
    Protobuf,
    JsonSchema,
    FunctionSignature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContractStatus {
    Draft,
    Proposed,
    Accepted,
    Violated,
    Deprecated,
}

impl ContractStatus {
    pub fn next(self) -> &'static [ContractStatus] {
        use ContractStatus::*;
        match self {
            Draft => &[Proposed, Deprecated],
            Proposed => &[Accepted, Draft, Deprecated],
            Accepted => &[Violated, Deprecated],
            Violated => &[Accepted, Deprecated],
            Deprecated => &[],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ContractStatus::Draft => "DRAFT",
            ContractStatus::Proposed => "PROPOSED",
            ContractStatus::Accepted => "ACCEPTED",
            ContractStatus::Violated => "VIOLATED",
            ContractStatus::Deprecated => "DEPRECATED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contract {
    pub name: String,
    pub version: u32,
    pub kind: ContractKind,
    pub spec: String,
    pub owner: String,
    pub consumers: Vec<String>,
    pub status: ContractStatus,
    pub status_reason: String,
    pub create_time_ms: i64,
}

#[derive(Debug, Clone)]
pub struct NewContract {
    pub name: String,
    pub kind: ContractKind,
    pub spec: String,
    pub owner: String,
    pub consumers: Vec<String>,
    pub status: ContractStatus,
    pub etag: String,
}

fn versions_prefix(project: &str, name: &str) -> String {
    keys::in_project(project, &format!("{PREFIX}{name}/v/"))
}

fn version_key(project: &str, name: &str, version: u32) -> String {
    format!("{}{version:010}", versions_prefix(project, name))
}

fn check_new(new: &NewContract) -> Result<()> {
    validate::ident("name", &new.name, 128)?;
    validate::text("spec", &new.spec, MAX_SPEC_LEN, true)?;
    if new.kind == ContractKind::JsonSchema
        && let Err(error) = serde_json::from_str::<serde_json::Value>(&new.spec)
    {
        return Err(SsotError::invalid("spec", format!("a json-schema contract must be valid JSON: {error}")));
    }
    validate::text("owner", &new.owner, 128, false)?;
    if new.consumers.len() > 100 {
        return Err(SsotError::invalid("consumers", "more than 100 consumers"));
    }
    for consumer in &new.consumers {
        validate::text("consumers", consumer, 128, true)?;
    }
    if !matches!(new.status, ContractStatus::Draft | ContractStatus::Proposed) {
        return Err(SsotError::invalid("status", "a new version starts as DRAFT or PROPOSED"));
    }
    Ok(())
}

impl Ssot {
    async fn latest_contract(&self, project: &str, name: &str) -> Result<Option<Versioned<Contract>>> {
        let prefix = versions_prefix(project, name);
        let (all, _) = self.scan_all::<Contract>(&prefix, 0).await?;
        Ok(all.into_iter().last())
    }

    /// Stores the next version of the named contract.
    pub async fn put_contract(&self, project: &str, new: NewContract) -> Result<Versioned<Contract>> {
        check_new(&new)?;
        let expected = validate::etag(&new.etag)?;
        for attempt in 0..super::RETRIES {
            let guard = self.project_guard(project).await?;
            let latest = self.latest_contract(project, &new.name).await?;
            check_etag(KIND, &new.name, expected, latest.as_ref().map_or(0, |l| l.meta.mod_revision))?;
            let version = latest.as_ref().map_or(0, |l| l.value.version) + 1;
            let contract = Contract {
                name: new.name.clone(),
                version,
                kind: new.kind,
                spec: new.spec.clone(),
                owner: new.owner.clone(),
                consumers: new.consumers.clone(),
                status: new.status,
                status_reason: String::new(),
                create_time_ms: now_ms(),
            };
            let key = version_key(project, &new.name, version);
            let txn =
                Txn::new().when(guard).when(Compare::absent(key.as_str())).then(Op::put(key, encode_json(&contract)));
            match self.commit(txn).await? {
                Ok(revision) => {
                    return Ok(Versioned { value: contract, meta: Meta::created(revision) });
                }
                Err((0, _)) => return Err(SsotError::not_found("project", project)),
                Err((_, current)) if expected.is_some() => {
                    return Err(SsotError::StaleEtag {
                        kind: KIND,
                        id: new.name.clone(),
                        expected: expected.unwrap_or_default(),
                        current,
                    });
                }
                Err(_) => super::after_lost_race(attempt).await,
            }
        }
        Err(super::lost_race(KIND, &new.name))
    }

    /// Version `version` of the contract, or the latest when `version` is 0.
    pub async fn get_contract(&self, project: &str, name: &str, version: u32) -> Result<Versioned<Contract>> {
        validate::ident("name", name, 128)?;
        self.project_guard(project).await?;
        let found = if version == 0 {
            self.latest_contract(project, name).await?
        } else {
            self.get(&version_key(project, name, version), 0).await?
        };
        found.ok_or_else(|| {
            if version == 0 {
                SsotError::not_found(KIND, name)
            } else {
                SsotError::not_found(KIND, format!("{name} version {version}"))
            }
        })
    }

    /// The latest version of every contract, by name.
    pub async fn list_contracts(&self, project: &str, page_size: i32, page_token: &str) -> Result<Page<Contract>> {
        self.project_guard(project).await?;
        let size = validate::page_size(page_size)?;
        let prefix = keys::in_project(project, PREFIX);
        let token = PageToken::decode(page_token)?;
        if token.as_ref().is_some_and(|t| !t.after.starts_with(prefix.as_bytes())) {
            return Err(SsotError::invalid("page_token", "the page token belongs to a different listing"));
        }
        // Versions of one contract are adjacent keys: keep the last of each run.
        let (mut revision, mut after) = token.map_or((0, None), |t| (t.revision, Some(t.after)));
        let mut items: Vec<Versioned<Contract>> = Vec::new();
        // Stored bytes of the page, that of its last contract, and where that contract's run started.
        let (mut used, mut last_bytes, mut run_start) = (0, 0, after.clone());
        loop {
            let (chunk, more, read_at) = self.scan_sized::<Contract>(&prefix, after.as_deref(), revision, 256).await?;
            revision = read_at;
            for (key, bytes, contract) in chunk {
                let same_name = items.last().is_some_and(|last| last.value.name == contract.value.name);
                if same_name {
                    let last = items.len() - 1;
                    used = used - last_bytes + bytes;
                    if items.len() > 1 && used > super::PAGE_BYTES {
                        // This contract's latest version does not fit: the next page starts with it.
                        items.pop();
                        let after = run_start.unwrap_or_default();
                        return Ok(Page { items, next_page_token: PageToken { revision, after }.encode(), revision });
                    }
                    items[last] = contract;
                } else if items.len() == size || (!items.is_empty() && used + bytes > super::PAGE_BYTES) {
                    // A new name past a full page: the next page starts here.
                    let after = after.unwrap_or_default();
                    return Ok(Page { items, next_page_token: PageToken { revision, after }.encode(), revision });
                } else {
                    run_start = after.clone();
                    used += bytes;
                    items.push(contract);
                }
                last_bytes = bytes;
                after = Some(key.into_bytes());
            }
            if !more {
                return Ok(Page { items, next_page_token: String::new(), revision });
            }
        }
    }

    /// Every version of one contract, oldest first.
    pub async fn list_contract_versions(
        &self,
        project: &str,
        name: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Contract>> {
        validate::ident("name", name, 128)?;
        self.project_guard(project).await?;
        let page = self.page(&versions_prefix(project, name), page_size, page_token, 0, |_| true).await?;
        if page.items.is_empty() && page_token.is_empty() {
            return Err(SsotError::not_found(KIND, name));
        }
        Ok(page)
    }

    pub async fn set_contract_status(
        &self,
        project: &str,
        name: &str,
        version: u32,
        status: ContractStatus,
        reason: &str,
        etag: &str,
    ) -> Result<Versioned<Contract>> {
        validate::ident("name", name, 128)?;
        let expected = validate::etag(etag)?;
        validate::text("reason", reason, 4096, false)?;
        let version = if version == 0 { self.get_contract(project, name, 0).await?.value.version } else { version };
        let key = version_key(project, name, version);
        let id = format!("{name} version {version}");
        let target = Target { kind: KIND, id: &id, key: &key, project: Some(project) };
        self.modify(target, expected, super::nothing, |mut c: Contract, ()| {
            if c.status != status && !c.status.next().contains(&status) {
                let allowed: Vec<&str> = c.status.next().iter().map(|s| s.as_str()).collect();
                return Err(SsotError::FailedPrecondition(format!(
                    "contract {name} version {version} cannot move from {} to {}; allowed: {}",
                    c.status.as_str(),
                    status.as_str(),
                    if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
                )));
            }
            c.status = status;
            c.status_reason = reason.to_string();
            Ok(Edit::value(c))
        })
        .await
    }
}
