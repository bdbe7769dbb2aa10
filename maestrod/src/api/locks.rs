//! `maestro.v1.LockService`: leases and the locks they own.

use std::sync::Arc;

use maestro_shared::v1::{self, lock_service_server::LockService};
use tonic::{Request, Response, Status};

use super::convert;
use super::status::IntoStatus;
use crate::ssot::Ssot;

pub(crate) struct Locks(pub(crate) Arc<Ssot>);

#[tonic::async_trait]
impl LockService for Locks {
    async fn grant_lease(&self, request: Request<v1::GrantLeaseRequest>) -> Result<Response<v1::Lease>, Status> {
        let info = self.0.grant_lease(request.into_inner().ttl_seconds).await.status()?;
        Ok(Response::new(convert::lease(info)))
    }

    async fn keep_alive(&self, request: Request<v1::KeepAliveRequest>) -> Result<Response<v1::Lease>, Status> {
        let info = self.0.keep_alive(request.into_inner().lease_id).await.status()?;
        Ok(Response::new(convert::lease(info)))
    }

    async fn revoke_lease(
        &self,
        request: Request<v1::RevokeLeaseRequest>,
    ) -> Result<Response<v1::RevokeLeaseResponse>, Status> {
        let revision = self.0.revoke_lease(request.into_inner().lease_id).await.status()?;
        Ok(Response::new(v1::RevokeLeaseResponse { revision }))
    }

    async fn get_lease(&self, request: Request<v1::GetLeaseRequest>) -> Result<Response<v1::Lease>, Status> {
        let info = self.0.get_lease(request.into_inner().lease_id).await.status()?;
        Ok(Response::new(convert::lease(info)))
    }

    async fn acquire_lock(&self, request: Request<v1::AcquireLockRequest>) -> Result<Response<v1::Lock>, Status> {
        let r = request.into_inner();
        let (lock, _) =
            self.0.acquire_lock(&r.project_id, &r.name, &r.holder, r.lease_id, r.ttl_seconds).await.status()?;
        Ok(Response::new(convert::lock(&r.project_id, lock)))
    }

    async fn release_lock(
        &self,
        request: Request<v1::ReleaseLockRequest>,
    ) -> Result<Response<v1::ReleaseLockResponse>, Status> {
        let r = request.into_inner();
        let revision = self.0.release_lock(&r.project_id, &r.name, r.lease_id).await.status()?;
        Ok(Response::new(v1::ReleaseLockResponse { revision }))
    }

    async fn list_locks(
        &self,
        request: Request<v1::ListLocksRequest>,
    ) -> Result<Response<v1::ListLocksResponse>, Status> {
        let r = request.into_inner();
        let page = self.0.list_locks(&r.project_id, r.page_size, &r.page_token).await.status()?;
        Ok(Response::new(v1::ListLocksResponse {
            locks: page.items.into_iter().map(|l| convert::lock(&r.project_id, l)).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
