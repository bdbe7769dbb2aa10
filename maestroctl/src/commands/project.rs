//! `maestroctl project …`

use anyhow::Context;
use maestro_shared::Conn;
use maestro_shared::v1::{self, project_service_client::ProjectServiceClient};

use super::ExitStatus;
use crate::cli::{Output, ProjectCmd};
use crate::client::{all_pages, reply};
use crate::output::{Table, emit, etag, time};

fn table(projects: &[v1::Project]) {
    let mut table = Table::new(&["ID", "NAME", "WORKSPACE", "CREATED", "ETAG"]);
    for p in projects {
        table.row(vec![
            p.id.clone(),
            p.display_name.clone(),
            p.workspace.clone(),
            time(p.create_time_ms),
            etag(p.meta.as_ref()),
        ]);
    }
    table.print();
}

pub(super) async fn run(cmd: ProjectCmd, channel: Conn, output: Output) -> anyhow::Result<ExitStatus> {
    let mut client = ProjectServiceClient::new(channel);
    match cmd {
        ProjectCmd::Create { id, name, workspace } => {
            let workspace = match workspace {
                Some(path) => std::path::absolute(&path)
                    .with_context(|| format!("--workspace {}", path.display()))?
                    .display()
                    .to_string(),
                None => String::new(),
            };
            let project =
                reply(client.create_project(v1::CreateProjectRequest { id, display_name: name, workspace }).await)?;
            emit(output, &project, || table(std::slice::from_ref(&project)))?;
        }
        ProjectCmd::List => {
            let projects = all_pages(0, |page_token| {
                let mut client = client.clone();
                async move {
                    let page = client
                        .list_projects(v1::ListProjectsRequest { page_size: 1000, page_token })
                        .await?
                        .into_inner();
                    Ok((page.projects, page.next_page_token))
                }
            })
            .await?;
            emit(output, &projects, || table(&projects))?;
        }
        ProjectCmd::Show { id } => {
            let project = reply(client.get_project(v1::GetProjectRequest { id }).await)?;
            emit(output, &project, || table(std::slice::from_ref(&project)))?;
        }
        ProjectCmd::Delete { id, etag, yes } => {
            super::confirm(yes, &format!("Delete project {id} and all of its data"))?;
            let deleted = reply(client.delete_project(v1::DeleteProjectRequest { id: id.clone(), etag }).await)?;
            emit(output, &deleted, || println!("deleted project {id} at revision {}", deleted.revision))?;
        }
    }
    Ok(0)
}
