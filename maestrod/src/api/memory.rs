//! `maestro.v1.MemoryService`.

use std::sync::Arc;

use maestro_shared::v1::{self, memory_service_server::MemoryService};
use tonic::{Request, Response, Status};

use super::convert;
use super::status::IntoStatus;
use crate::ssot::Ssot;

pub(crate) struct Memory(pub(crate) Arc<Ssot>);

#[tonic::async_trait]
impl MemoryService for Memory {
    async fn put_memory(&self, request: Request<v1::PutMemoryRequest>) -> Result<Response<v1::MemoryEntry>, Status> {
        let r = request.into_inner();
        let entry =
            self.0.put_memory(&r.project_id, &r.agent, &r.key, &r.value, r.ttl_seconds, &r.etag).await.status()?;
        Ok(Response::new(convert::memory_entry(&r.project_id, entry)))
    }

    async fn get_memory(&self, request: Request<v1::GetMemoryRequest>) -> Result<Response<v1::MemoryEntry>, Status> {
        let r = request.into_inner();
        let entry = self.0.get_memory(&r.project_id, &r.agent, &r.key).await.status()?;
        Ok(Response::new(convert::memory_entry(&r.project_id, entry)))
    }

    async fn list_memory(
        &self,
        request: Request<v1::ListMemoryRequest>,
    ) -> Result<Response<v1::ListMemoryResponse>, Status> {
        let r = request.into_inner();
        let page = self.0.list_memory(&r.project_id, &r.agent, r.page_size, &r.page_token).await.status()?;
        Ok(Response::new(v1::ListMemoryResponse {
            entries: page.items.into_iter().map(|e| convert::memory_entry(&r.project_id, e)).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_memory(
        &self,
        request: Request<v1::DeleteMemoryRequest>,
    ) -> Result<Response<v1::DeleteMemoryResponse>, Status> {
        let r = request.into_inner();
        let revision = self.0.delete_memory(&r.project_id, &r.agent, &r.key, &r.etag).await.status()?;
        Ok(Response::new(v1::DeleteMemoryResponse { revision }))
    }
}
