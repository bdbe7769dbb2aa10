//! `maestro.v1.RequirementService`.

use std::sync::Arc;

use maestro_shared::v1::{self, requirement_service_server::RequirementService};
use tonic::{Request, Response, Status};

use super::convert;
use super::status::IntoStatus;
use crate::ssot::Ssot;
use crate::ssot::requirements::{NewRequirement, RequirementUpdate};

pub(crate) struct Requirements(pub(crate) Arc<Ssot>);

#[tonic::async_trait]
impl RequirementService for Requirements {
    async fn create_requirement(
        &self,
        request: Request<v1::CreateRequirementRequest>,
    ) -> Result<Response<v1::Requirement>, Status> {
        let r = request.into_inner();
        let new = NewRequirement {
            parent_id: r.parent_id,
            title: r.title,
            description: r.description,
            role_hint: r.role_hint,
            acceptance: r.acceptance,
            depends_on: r.depends_on,
        };
        let created = self.0.create_requirement(&r.project_id, new).await.status()?;
        Ok(Response::new(convert::requirement(&r.project_id, created)))
    }

    async fn get_requirement(
        &self,
        request: Request<v1::GetRequirementRequest>,
    ) -> Result<Response<v1::Requirement>, Status> {
        let r = request.into_inner();
        let found = self.0.get_requirement(&r.project_id, &r.id, r.revision).await.status()?;
        Ok(Response::new(convert::requirement(&r.project_id, found)))
    }

    async fn list_requirements(
        &self,
        request: Request<v1::ListRequirementsRequest>,
    ) -> Result<Response<v1::ListRequirementsResponse>, Status> {
        let r = request.into_inner();
        let status = convert::req_status_from_wire("status", r.status, true)?;
        let page = self
            .0
            .list_requirements(&r.project_id, &r.parent_id, status, r.revision, r.page_size, &r.page_token)
            .await
            .status()?;
        Ok(Response::new(v1::ListRequirementsResponse {
            requirements: page.items.into_iter().map(|x| convert::requirement(&r.project_id, x)).collect(),
            next_page_token: page.next_page_token,
            revision: page.revision,
        }))
    }

    async fn update_requirement(
        &self,
        request: Request<v1::UpdateRequirementRequest>,
    ) -> Result<Response<v1::Requirement>, Status> {
        let r = request.into_inner();
        let update = RequirementUpdate {
            title: r.title,
            description: r.description,
            role_hint: r.role_hint,
            acceptance: r.acceptance.map(|a| a.values),
            assignee: r.assignee,
            etag: r.etag,
        };
        let updated = self.0.update_requirement(&r.project_id, &r.id, update).await.status()?;
        Ok(Response::new(convert::requirement(&r.project_id, updated)))
    }

    async fn delete_requirement(
        &self,
        request: Request<v1::DeleteRequirementRequest>,
    ) -> Result<Response<v1::DeleteRequirementResponse>, Status> {
        let r = request.into_inner();
        let revision = self.0.delete_requirement(&r.project_id, &r.id, &r.etag).await.status()?;
        Ok(Response::new(v1::DeleteRequirementResponse { revision }))
    }

    async fn set_requirement_status(
        &self,
        request: Request<v1::SetRequirementStatusRequest>,
    ) -> Result<Response<v1::Requirement>, Status> {
        let r = request.into_inner();
        let status = convert::req_status_from_wire("status", r.status, false)?
            .ok_or_else(|| Status::invalid_argument("status: required"))?;
        let updated = self
            .0
            .set_requirement_status(&r.project_id, &r.id, status, &r.reason, &r.assignee, &r.etag)
            .await
            .status()?;
        Ok(Response::new(convert::requirement(&r.project_id, updated)))
    }

    async fn set_dependencies(
        &self,
        request: Request<v1::SetDependenciesRequest>,
    ) -> Result<Response<v1::Requirement>, Status> {
        let r = request.into_inner();
        let updated = self.0.set_dependencies(&r.project_id, &r.id, &r.add, &r.remove, &r.etag).await.status()?;
        Ok(Response::new(convert::requirement(&r.project_id, updated)))
    }

    async fn list_ready_requirements(
        &self,
        request: Request<v1::ListReadyRequirementsRequest>,
    ) -> Result<Response<v1::ListRequirementsResponse>, Status> {
        let r = request.into_inner();
        let ready = self.0.ready_requirements(&r.project_id).await.status()?;
        Ok(Response::new(v1::ListRequirementsResponse {
            requirements: ready.into_iter().map(|x| convert::requirement(&r.project_id, x)).collect(),
            next_page_token: String::new(),
            revision: self.0.store().status().revision,
        }))
    }
}
