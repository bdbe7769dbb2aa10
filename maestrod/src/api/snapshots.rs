//! `maestro.v1.SnapshotService`.

use std::sync::Arc;

use maestro_shared::v1::{self, snapshot_service_server::SnapshotService};
use tonic::{Request, Response, Status};

use super::convert;
use super::status::IntoStatus;
use crate::ssot::Ssot;

pub(crate) struct Snapshots(pub(crate) Arc<Ssot>);

#[tonic::async_trait]
impl SnapshotService for Snapshots {
    async fn create_snapshot(
        &self,
        request: Request<v1::CreateSnapshotRequest>,
    ) -> Result<Response<v1::Snapshot>, Status> {
        let r = request.into_inner();
        let snapshot = self.0.create_snapshot(&r.project_id, &r.name, &r.git_commit, &r.description).await.status()?;
        Ok(Response::new(convert::snapshot(&r.project_id, snapshot)))
    }

    async fn get_snapshot(&self, request: Request<v1::GetSnapshotRequest>) -> Result<Response<v1::Snapshot>, Status> {
        let r = request.into_inner();
        let snapshot = self.0.get_snapshot(&r.project_id, &r.name).await.status()?;
        Ok(Response::new(convert::snapshot(&r.project_id, snapshot)))
    }

    async fn list_snapshots(
        &self,
        request: Request<v1::ListSnapshotsRequest>,
    ) -> Result<Response<v1::ListSnapshotsResponse>, Status> {
        let r = request.into_inner();
        let page = self.0.list_snapshots(&r.project_id, r.page_size, &r.page_token).await.status()?;
        Ok(Response::new(v1::ListSnapshotsResponse {
            snapshots: page.items.into_iter().map(|s| convert::snapshot(&r.project_id, s.value)).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<v1::DeleteSnapshotRequest>,
    ) -> Result<Response<v1::DeleteSnapshotResponse>, Status> {
        let r = request.into_inner();
        self.0.delete_snapshot(&r.project_id, &r.name).await.status()?;
        Ok(Response::new(v1::DeleteSnapshotResponse {}))
    }

    async fn diff_snapshots(
        &self,
        request: Request<v1::DiffSnapshotsRequest>,
    ) -> Result<Response<v1::DiffSnapshotsResponse>, Status> {
        let r = request.into_inner();
        let diff = self.0.diff_snapshots(&r.project_id, &r.from, &r.to, r.page_size, &r.page_token).await.status()?;
        Ok(Response::new(v1::DiffSnapshotsResponse {
            from_revision: diff.from_revision,
            to_revision: diff.to_revision,
            changes: diff
                .changes
                .into_iter()
                .map(|c| v1::SnapshotChange {
                    kind: convert::change_kind(c.kind) as i32,
                    key: convert::resource_path(&c.path),
                    before_json: c.before,
                    after_json: c.after,
                })
                .collect(),
            next_page_token: diff.next_page_token,
        }))
    }

    async fn restore_snapshot(
        &self,
        request: Request<v1::RestoreSnapshotRequest>,
    ) -> Result<Response<v1::RestoreSnapshotResponse>, Status> {
        let r = request.into_inner();
        let (revision, changed) = self.0.restore_snapshot(&r.project_id, &r.name).await.status()?;
        Ok(Response::new(v1::RestoreSnapshotResponse { revision, changed: u32::try_from(changed).unwrap_or(u32::MAX) }))
    }
}
