//! `maestro.v1.ProjectService`.

use std::sync::Arc;

use maestro_shared::v1::{self, project_service_server::ProjectService};
use tonic::{Request, Response, Status};

use super::convert;
use super::status::IntoStatus;
use crate::ssot::Ssot;
use crate::ssot::projects::ProjectUpdate;

/// The projects, and the users whose grants name them.
pub(crate) struct Projects(
    pub(crate) Arc<Ssot>,
    pub(crate) Option<Arc<crate::auth::Users>>,
    /// Decides where workspaces may be.
    pub(crate) Arc<crate::autoloop::manager::LoopManager>,
);

#[tonic::async_trait]
impl ProjectService for Projects {
    async fn create_project(
        &self,
        request: Request<v1::CreateProjectRequest>,
    ) -> Result<Response<v1::Project>, Status> {
        let r = request.into_inner();
        self.2.check_workspace(&r.workspace).status()?;
        let project = self.0.create_project(&r.id, &r.display_name, &r.workspace).await.status()?;
        Ok(Response::new(convert::project(project)))
    }

    async fn get_project(&self, request: Request<v1::GetProjectRequest>) -> Result<Response<v1::Project>, Status> {
        let project = self.0.get_project(&request.into_inner().id).await.status()?;
        Ok(Response::new(convert::project(project)))
    }

    async fn list_projects(
        &self,
        request: Request<v1::ListProjectsRequest>,
    ) -> Result<Response<v1::ListProjectsResponse>, Status> {
        // Only the projects the caller has a role in (a page may hold fewer than asked).
        let caller = request.extensions().get::<super::auth::Caller>().cloned();
        let r = request.into_inner();
        let page = self.0.list_projects(r.page_size, &r.page_token).await.status()?;
        let visible = |p: &crate::ssot::Versioned<crate::ssot::projects::Project>| {
            caller.as_ref().is_none_or(|c| c.0.role_in(&p.value.id).is_some())
        };
        Ok(Response::new(v1::ListProjectsResponse {
            projects: page.items.into_iter().filter(visible).map(convert::project).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_project(
        &self,
        request: Request<v1::UpdateProjectRequest>,
    ) -> Result<Response<v1::Project>, Status> {
        let caller = request.extensions().get::<super::auth::Caller>().cloned();
        let r = request.into_inner();
        // Only a daemon admin points a project at a directory.
        if let (Some(caller), Some(_)) = (&caller, &r.workspace)
            && caller.0.role_in(crate::auth::ALL_PROJECTS) < Some(crate::auth::Role::Admin)
        {
            return Err(Status::permission_denied(format!(
                "user {} may not change the workspace of {}: only a daemon admin sets workspaces",
                caller.0.name, r.id
            )));
        }
        if let Some(workspace) = &r.workspace {
            self.2.check_workspace(workspace).status()?;
        }
        let update = ProjectUpdate { display_name: r.display_name, workspace: r.workspace, etag: r.etag };
        let project = self.0.update_project(&r.id, update).await.status()?;
        Ok(Response::new(convert::project(project)))
    }

    async fn delete_project(
        &self,
        request: Request<v1::DeleteProjectRequest>,
    ) -> Result<Response<v1::DeleteProjectResponse>, Status> {
        let r = request.into_inner();
        let revision = self.0.delete_project(&r.id, &r.etag).await.status()?;
        // Grants name projects: those of a deleted one must not carry over to a new project of that id.
        if let Some(users) = &self.1
            && let Err(error) = users.forget_project(&r.id)
        {
            tracing::error!(%error, project = %r.id, "the project is deleted but its grants could not be dropped");
            return Err(Status::internal(
                "the project is deleted, but its users' grants could not be dropped; the daemon log has the details",
            ));
        }
        Ok(Response::new(v1::DeleteProjectResponse { revision }))
    }
}
