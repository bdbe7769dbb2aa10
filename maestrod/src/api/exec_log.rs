//! `maestro.v1.ExecutionLogService`: append and read only.

use std::sync::Arc;

use maestro_shared::v1::{self, execution_log_service_server::ExecutionLogService};
use tonic::{Request, Response, Status};

use super::convert;
use super::status::IntoStatus;
use crate::ssot::Ssot;
use crate::ssot::exec_log::NewLogEntry;

pub(crate) struct ExecutionLog(pub(crate) Arc<Ssot>);

#[tonic::async_trait]
impl ExecutionLogService for ExecutionLog {
    async fn append_log_entry(
        &self,
        request: Request<v1::AppendLogEntryRequest>,
    ) -> Result<Response<v1::LogEntry>, Status> {
        let r = request.into_inner();
        let entry = NewLogEntry {
            loop_id: r.loop_id,
            epoch: r.epoch,
            agent: r.agent,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            tokens: r.tokens,
            duration_ms: r.duration_ms,
            detail: r.detail,
            requirement: r.requirement,
            tokens_in: r.tokens_in,
            tokens_out: r.tokens_out,
        };
        let appended = self.0.append_log(&r.project_id, entry).await.status()?;
        Ok(Response::new(convert::log_entry(&r.project_id, appended)))
    }

    async fn list_log_entries(
        &self,
        request: Request<v1::ListLogEntriesRequest>,
    ) -> Result<Response<v1::ListLogEntriesResponse>, Status> {
        let r = request.into_inner();
        let page = self
            .0
            .list_log(&r.project_id, r.from_seq, &r.agent, &r.loop_id, r.page_size, &r.page_token)
            .await
            .status()?;
        Ok(Response::new(v1::ListLogEntriesResponse {
            entries: page.items.into_iter().map(|e| convert::log_entry(&r.project_id, e)).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn verify_log(
        &self,
        request: Request<v1::VerifyLogRequest>,
    ) -> Result<Response<v1::VerifyLogResponse>, Status> {
        let r = request.into_inner();
        let v = self.0.verify_log(&r.project_id).await.status()?;
        Ok(Response::new(v1::VerifyLogResponse {
            ok: v.first_bad_seq == 0,
            entries: v.entries,
            first_bad_seq: v.first_bad_seq,
            problem: v.problem,
            head_hash: v.head_hash,
        }))
    }
}
