//! Projects: the unit of isolation. Every other resource lives under one.

use serde::{Deserialize, Serialize};

use super::clock::now_ms;
use super::store::{Compare, Op, Revision, Txn};
use super::{Edit, Meta, Page, Result, Ssot, SsotError, Target, Versioned, check_etag, encode_json, keys, validate};

pub const MAX_ID_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub display_name: String,
    pub workspace: String,
    pub create_time_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct ProjectUpdate {
    pub display_name: Option<String>,
    pub workspace: Option<String>,
    pub etag: String,
}

fn check_workspace(workspace: &str) -> Result<()> {
    validate::text("workspace", workspace, 4096, false)?;
    if !workspace.is_empty() && !workspace.starts_with('/') {
        return Err(SsotError::invalid("workspace", format!("{workspace:?} must be an absolute path")));
    }
    Ok(())
}

impl Ssot {
    pub async fn create_project(&self, id: &str, display_name: &str, workspace: &str) -> Result<Versioned<Project>> {
        validate::ident("id", id, MAX_ID_LEN)?;
        validate::text("display_name", display_name, 200, false)?;
        check_workspace(workspace)?;
        let project = Project {
            id: id.to_string(),
            display_name: if display_name.is_empty() { id.to_string() } else { display_name.to_string() },
            workspace: workspace.to_string(),
            create_time_ms: now_ms(),
        };
        let key = keys::project(id);
        let tombstone = keys::deleted_project(id);
        let txn = Txn::new()
            .when(Compare::absent(key.as_str()))
            .when(Compare::absent(tombstone.as_str()))
            .then(Op::put(key, encode_json(&project)));
        match self.commit(txn).await? {
            Ok(revision) => Ok(Versioned { value: project, meta: Meta::created(revision) }),
            Err(_) if self.get::<i64>(&tombstone, 0).await?.is_some() => Err(SsotError::AlreadyExists {
                kind: "project",
                id: format!("{id} (deleted earlier; a project id is never reused, so its history stays its own)"),
            }),
            Err(_) => Err(SsotError::AlreadyExists { kind: "project", id: id.to_string() }),
        }
    }

    /// Whether `id` is in use, or was used by a project since deleted (ids are never reused).
    pub async fn project_id_taken(&self, id: &str) -> Result<bool> {
        validate::ident("id", id, MAX_ID_LEN)?;
        Ok(self.get::<Project>(&keys::project(id), 0).await?.is_some()
            || self.get::<i64>(&keys::deleted_project(id), 0).await?.is_some())
    }

    pub async fn get_project(&self, id: &str) -> Result<Versioned<Project>> {
        validate::ident("id", id, MAX_ID_LEN)?;
        self.get(&keys::project(id), 0).await?.ok_or_else(|| SsotError::not_found("project", id))
    }

    pub async fn list_projects(&self, page_size: i32, page_token: &str) -> Result<Page<Project>> {
        self.page(keys::PROJECTS, page_size, page_token, 0, |_| true).await
    }

    pub async fn update_project(&self, id: &str, update: ProjectUpdate) -> Result<Versioned<Project>> {
        validate::ident("id", id, MAX_ID_LEN)?;
        let expected = validate::etag(&update.etag)?;
        if let Some(name) = &update.display_name {
            validate::text("display_name", name, 200, true)?;
        }
        if let Some(workspace) = &update.workspace {
            check_workspace(workspace)?;
        }
        let key = keys::project(id);
        let target = Target { kind: "project", id, key: &key, project: None };
        self.modify(target, expected, super::nothing, |mut project: Project, ()| {
            if let Some(name) = &update.display_name {
                project.display_name.clone_from(name);
            }
            if let Some(workspace) = &update.workspace {
                project.workspace.clone_from(workspace);
            }
            Ok(Edit::value(project))
        })
        .await
    }

    /// Deletes the project and everything under it.
    pub async fn delete_project(&self, id: &str, etag: &str) -> Result<Revision> {
        let expected = validate::etag(etag)?;
        let current = self.get_project(id).await?;
        check_etag("project", id, expected, current.meta.mod_revision)?;
        let key = keys::project(id);
        let txn = Txn::new()
            .when(Compare::mod_revision(key.as_str(), current.meta.mod_revision))
            .then(Op::delete(key))
            .then(Op::delete_prefix(keys::project_data(id)))
            .then(Op::put(keys::deleted_project(id), encode_json(&now_ms())));
        match self.commit(txn).await? {
            Ok(revision) => Ok(revision),
            Err((_, 0)) => Err(SsotError::not_found("project", id)),
            Err((_, now)) => Err(SsotError::StaleEtag {
                kind: "project",
                id: id.to_string(),
                expected: current.meta.mod_revision,
                current: now,
            }),
        }
    }
}
