//! `maestro.v1.SystemService`: ping (the benchmark's ceiling), info and compaction.

use std::sync::Arc;

use maestro_shared::v1::{self, system_service_server::SystemService};
use tonic::{Request, Response, Status};

use super::status::IntoStatus;
use crate::ssot::Ssot;

pub(crate) struct System {
    pub(crate) ssot: Arc<Ssot>,
    pub(crate) data_dir: String,
    pub(crate) retention: u64,
    pub(crate) sandbox: crate::harness::sandbox::Confinement,
}

#[tonic::async_trait]
impl SystemService for System {
    async fn ping(&self, _request: Request<v1::PingRequest>) -> Result<Response<v1::PingResponse>, Status> {
        Ok(Response::new(v1::PingResponse {}))
    }

    async fn get_info(&self, _request: Request<v1::GetInfoRequest>) -> Result<Response<v1::GetInfoResponse>, Status> {
        let status = self.ssot.store().status();
        Ok(Response::new(v1::GetInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: status.revision,
            compact_revision: status.compact_revision,
            data_dir: self.data_dir.clone(),
            retention_revisions: self.retention,
            sandbox: Some(super::harness::confinement(&self.sandbox)),
        }))
    }

    async fn compact(&self, request: Request<v1::CompactRequest>) -> Result<Response<v1::CompactResponse>, Status> {
        let compact_revision = self.ssot.compact(request.into_inner().revision, self.retention).await.status()?;
        Ok(Response::new(v1::CompactResponse { compact_revision }))
    }
}
