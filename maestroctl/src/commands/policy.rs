//! `maestroctl policy …`: the harness policy of a project's workspace.

use anyhow::Context;
use maestro_shared::Conn;
use maestro_shared::v1::{self, harness_service_client::HarnessServiceClient};

use super::{ExitStatus, need};
use crate::cli::{Output, PolicyAction, PolicyCmd};
use crate::client::reply;
use crate::output::{Table, emit};

fn show(policy: &v1::HarnessPolicy) {
    println!("workspace: {}", policy.workspace);
    let mut roles = Table::new(&["ROLE", "READ", "WRITE", "DENY", "COMMANDS", "SHELL", "NETWORK", "SSOT"]);
    for role in &policy.roles {
        let commands: Vec<String> = role.commands.iter().map(|c| c.argv.join(" ")).collect();
        roles.row(vec![
            role.name.clone(),
            role.read.join(", "),
            role.write.join(", "),
            role.deny.join(", "),
            commands.join("; "),
            role.shell.to_string(),
            role.network.to_string(),
            role.ssot.join(", "),
        ]);
    }
    roles.print();
    println!("\nno role reads or writes: {}", policy.deny.join(", "));
    println!("no role writes: {}", policy.protected.join(", "));
    println!(
        "deletions: at most {} files and {} lines per action\n",
        policy.max_deleted_files, policy.max_deleted_lines
    );
    let mut rules = Table::new(&["RULE", "APPLIES TO", "REASON"]);
    for rule in &policy.rules {
        rules.row(vec![rule.id.clone(), rule.applies_to.clone(), rule.reason.clone()]);
    }
    rules.print();
    if let Some(sandbox) = &policy.confinement {
        println!("\nsandbox: filesystem {}, network {}", sandbox.filesystem, sandbox.network);
        if !sandbox.layers.is_empty() {
            println!("  layers: {}", sandbox.layers.join(", "));
        }
        for note in &sandbox.notes {
            println!("  weaker confinement: {note}");
        }
    }
}

pub(super) async fn run(
    cmd: PolicyCmd,
    project: Option<&str>,
    channel: Conn,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let mut client = HarnessServiceClient::new(channel);
    match cmd {
        PolicyCmd::Show => {
            let policy = reply(client.get_policy(v1::GetPolicyRequest { project_id: need(project)? }).await)?;
            emit(output, &policy, || show(&policy))?;
            Ok(0)
        }
        PolicyCmd::Check { role, action } => {
            use v1::check_action_request::Action;
            let action = match action {
                PolicyAction::Read { path } => Action::Read(path),
                PolicyAction::List { path } => Action::List(path),
                PolicyAction::Delete { path } => Action::Delete(path),
                PolicyAction::Run { argv } => Action::Run(v1::CommandPrefix { argv }),
                PolicyAction::Write { path, content_file } => {
                    let content = match content_file {
                        Some(file) => std::fs::read_to_string(&file)
                            .with_context(|| format!("cannot read --content-file {}", file.display()))?,
                        None => String::new(),
                    };
                    Action::Write(v1::WriteAction { path, content })
                }
            };
            let request = v1::CheckActionRequest { project_id: need(project)?, role, action: Some(action) };
            let decision = reply(client.check_action(request).await)?;
            emit(output, &decision, || {
                if decision.allowed {
                    println!("allow");
                } else {
                    println!("deny: {}: {}", decision.rule, decision.reason);
                }
            })?;
            Ok(if decision.allowed { 0 } else { 1 })
        }
    }
}
