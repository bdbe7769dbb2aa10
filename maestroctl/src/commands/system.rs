//! `maestroctl watch` and `maestroctl info`.

use futures::StreamExt;
use maestro_shared::Conn;
use maestro_shared::v1::{self, system_service_client::SystemServiceClient, watch_service_client::WatchServiceClient};

use super::ExitStatus;
use crate::cli::Output;
use crate::client::{reply, status_error};
use crate::output::{Table, emit, item};

pub(super) async fn info(channel: Conn, output: Output) -> anyhow::Result<ExitStatus> {
    let info = reply(SystemServiceClient::new(channel).get_info(v1::GetInfoRequest {}).await)?;
    emit(output, &info, || {
        let mut table = Table::new(&["VERSION", "REVISION", "COMPACTED", "RETENTION", "DATA DIR"]);
        table.row(vec![
            info.version.clone(),
            info.revision.to_string(),
            info.compact_revision.to_string(),
            info.retention_revisions.to_string(),
            info.data_dir.clone(),
        ]);
        table.print();
    })?;
    Ok(0)
}

pub(super) async fn status(channel: Conn, output: Output, project: Option<&str>) -> anyhow::Result<ExitStatus> {
    let info = reply(SystemServiceClient::new(channel.clone()).get_info(v1::GetInfoRequest {}).await)?;
    let snapshot = match project {
        Some(project) if output == Output::Table => Some(crate::tui::fetch(&channel, project, None).await?),
        _ => None,
    };
    emit(output, &info, || {
        let sandbox = info.sandbox.clone().unwrap_or_default();
        let yes_no = |b: bool| if b { "enforced" } else { "NOT enforced" };
        println!("maestrod {} — revision {}, data in {}", info.version, info.revision, info.data_dir);
        println!(
            "sandbox: filesystem confinement {}, network isolation {}",
            yes_no(sandbox.filesystem),
            yes_no(sandbox.network)
        );
        if !sandbox.layers.is_empty() {
            println!("sandbox layers: {}", sandbox.layers.join(", "));
        }
        for note in &sandbox.notes {
            println!("  weaker confinement: {note}");
        }
        if let Some(snapshot) = &snapshot {
            crate::tui::print(snapshot);
        }
    })?;
    Ok(0)
}

/// Prints events until Ctrl-C (exit 0) or the stream fails (exit 1).
pub(super) async fn watch(
    channel: Conn,
    output: Output,
    project: &str,
    prefix: &str,
    from_revision: u64,
) -> anyhow::Result<ExitStatus> {
    let request =
        v1::WatchRequest { project_id: project.to_string(), prefix: prefix.to_string(), start_revision: from_revision };
    let mut stream = reply(WatchServiceClient::new(channel).watch(request).await)?;
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        let Some(message) = message else {
            anyhow::bail!("the daemon ended the watch (it is shutting down); resume with --from-revision");
        };
        let message = message.map_err(status_error)?;
        if message.start_revision != 0 && output == Output::Table {
            eprintln!("watching {project}/{prefix} from revision {} (Ctrl-C to stop)", message.start_revision);
        }
        for event in &message.events {
            match output {
                Output::Json | Output::Yaml => item(output, event)?,
                Output::Table => {
                    let kind = v1::EventType::try_from(event.r#type)
                        .map_or("?", |t| t.as_str_name().trim_start_matches("EVENT_TYPE_"));
                    println!("{:>8} {:<6} {} {}", event.mod_revision, kind, event.key, event.value_json);
                }
            }
        }
        use std::io::Write;
        std::io::stdout().flush()?;
    }
}
