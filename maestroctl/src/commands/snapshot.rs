//! `maestroctl snapshot …`

use maestro_shared::Conn;
use maestro_shared::v1::{self, snapshot_service_client::SnapshotServiceClient};

use super::{ExitStatus, need};
use crate::cli::{Output, SnapshotCmd};
use crate::client::{all_pages, reply};
use crate::output::{Table, emit, time};

fn table(snapshots: &[v1::Snapshot]) {
    let mut table = Table::new(&["NAME", "REVISION", "GIT COMMIT", "CREATED", "DESCRIPTION"]);
    for s in snapshots {
        table.row(vec![
            s.name.clone(),
            s.revision.to_string(),
            s.git_commit.chars().take(12).collect(),
            time(s.create_time_ms),
            s.description.clone(),
        ]);
    }
    table.print();
}

pub(super) async fn run(
    cmd: SnapshotCmd,
    project: Option<&str>,
    channel: Conn,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let mut client = SnapshotServiceClient::new(channel);
    match cmd {
        SnapshotCmd::Create { name, git_commit, description } => {
            let request = v1::CreateSnapshotRequest { project_id: need(project)?, name, git_commit, description };
            let snapshot = reply(client.create_snapshot(request).await)?;
            emit(output, &snapshot, || table(std::slice::from_ref(&snapshot)))?;
        }
        SnapshotCmd::List => {
            let project_id = need(project)?;
            let all = all_pages(0, |page_token| {
                let mut client = client.clone();
                let request = v1::ListSnapshotsRequest { project_id: project_id.clone(), page_size: 1000, page_token };
                async move {
                    let page = client.list_snapshots(request).await?.into_inner();
                    Ok((page.snapshots, page.next_page_token))
                }
            })
            .await?;
            emit(output, &all, || table(&all))?;
        }
        SnapshotCmd::Diff { from, to } => {
            let project_id = need(project)?;
            let to = to.unwrap_or_default();
            // Pages compare the same two revisions; the first page says which.
            let revisions = std::cell::Cell::new(None);
            let changes = all_pages(0, |page_token| {
                let mut client = client.clone();
                let request = v1::DiffSnapshotsRequest {
                    project_id: project_id.clone(),
                    from: from.clone(),
                    to: to.clone(),
                    page_size: 1000,
                    page_token,
                };
                let revisions = &revisions;
                async move {
                    let page = client.diff_snapshots(request).await?.into_inner();
                    if revisions.get().is_none() {
                        revisions.set(Some((page.from_revision, page.to_revision)));
                    }
                    Ok((page.changes, page.next_page_token))
                }
            })
            .await?;
            let (from_revision, to_revision) = revisions.get().unwrap_or_default();
            let diff =
                v1::DiffSnapshotsResponse { from_revision, to_revision, changes, next_page_token: String::new() };
            emit(output, &diff, || {
                println!("revision {} → {}: {} change(s)", diff.from_revision, diff.to_revision, diff.changes.len());
                for change in &diff.changes {
                    let mark = match v1::ChangeKind::try_from(change.kind) {
                        Ok(v1::ChangeKind::Added) => "+",
                        Ok(v1::ChangeKind::Removed) => "-",
                        _ => "~",
                    };
                    println!("{mark} {}", change.key);
                }
            })?;
        }
        SnapshotCmd::Restore { name, yes } => {
            super::confirm(
                yes,
                &format!("Restore snapshot {name} over the project's requirements, contracts and memory"),
            )?;
            let request = v1::RestoreSnapshotRequest { project_id: need(project)?, name: name.clone() };
            let restored = reply(client.restore_snapshot(request).await)?;
            emit(output, &restored, || {
                println!("restored {name}: {} resource(s) changed at revision {}", restored.changed, restored.revision)
            })?;
        }
        SnapshotCmd::Delete { name } => {
            let deleted = reply(
                client
                    .delete_snapshot(v1::DeleteSnapshotRequest { project_id: need(project)?, name: name.clone() })
                    .await,
            )?;
            emit(output, &deleted, || println!("deleted snapshot {name}"))?;
        }
    }
    Ok(0)
}
