//! `maestro.v1.LockService`: leases and the locks they own.

use std::sync::Arc;

use maestro_shared::v1::{self, lock_service_server::LockService};
use tonic::{Request, Response, Status};

use super::auth::Caller;
use super::convert;
use super::status::IntoStatus;
use crate::auth::{ALL_PROJECTS, Role};
use crate::ssot::Ssot;

pub(crate) struct Locks(pub(crate) Arc<Ssot>);

impl Locks {
    /// A lease is its grantee's: others (but a daemon admin) may not keep it
    /// alive, revoke it, read it, or hang their locks on it. Leases the daemon
    /// granted itself (a loop's claims) are a daemon admin's only.
    async fn check_owner<T>(&self, request: &Request<T>, lease: u64) -> Result<(), Status> {
        let Some(Caller(user)) = request.extensions().get::<Caller>() else { return Ok(()) };
        if user.role_in(ALL_PROJECTS) >= Some(Role::Admin) {
            return Ok(());
        }
        match self.0.lease_owner(lease).await.status()? {
            Some(owner) if owner == user.name => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "lease {lease} is not yours (user {}): only the user it was granted to, or a daemon admin, may use it",
                user.name
            ))),
        }
    }

    async fn record_owner<T>(&self, request: &Request<T>, lease: u64) -> Result<(), Status> {
        if let Some(Caller(user)) = request.extensions().get::<Caller>() {
            self.0.set_lease_owner(lease, &user.name).await.status()?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl LockService for Locks {
    async fn grant_lease(&self, request: Request<v1::GrantLeaseRequest>) -> Result<Response<v1::Lease>, Status> {
        let info = self.0.grant_lease(request.get_ref().ttl_seconds).await.status()?;
        self.record_owner(&request, info.id).await?;
        Ok(Response::new(convert::lease(info)))
    }

    async fn keep_alive(&self, request: Request<v1::KeepAliveRequest>) -> Result<Response<v1::Lease>, Status> {
        self.check_owner(&request, request.get_ref().lease_id).await?;
        let info = self.0.keep_alive(request.into_inner().lease_id).await.status()?;
        Ok(Response::new(convert::lease(info)))
    }

    async fn revoke_lease(
        &self,
        request: Request<v1::RevokeLeaseRequest>,
    ) -> Result<Response<v1::RevokeLeaseResponse>, Status> {
        self.check_owner(&request, request.get_ref().lease_id).await?;
        let revision = self.0.revoke_lease(request.into_inner().lease_id).await.status()?;
        Ok(Response::new(v1::RevokeLeaseResponse { revision }))
    }

    async fn get_lease(&self, request: Request<v1::GetLeaseRequest>) -> Result<Response<v1::Lease>, Status> {
        self.check_owner(&request, request.get_ref().lease_id).await?;
        let info = self.0.get_lease(request.into_inner().lease_id).await.status()?;
        Ok(Response::new(convert::lease(info)))
    }

    async fn acquire_lock(&self, request: Request<v1::AcquireLockRequest>) -> Result<Response<v1::Lock>, Status> {
        if request.get_ref().lease_id != 0 {
            self.check_owner(&request, request.get_ref().lease_id).await?;
        }
        let r = request.get_ref();
        let (lock, lease) =
            self.0.acquire_lock(&r.project_id, &r.name, &r.holder, r.lease_id, r.ttl_seconds).await.status()?;
        if r.lease_id == 0 {
            // The lease made for this lock is the caller's to keep alive.
            self.record_owner(&request, lease).await?;
        }
        Ok(Response::new(convert::lock(&request.get_ref().project_id, lock)))
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
