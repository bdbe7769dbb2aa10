//! `maestroctl user …`: the daemon's users over `UserService`.

use maestro_shared::Conn;
use maestro_shared::v1::{self, user_service_client::UserServiceClient};

use super::{ExitStatus, need};
use crate::cli::{Output, UserCmd};
use crate::client::reply;
use crate::output::{Table, emit, time};

fn role_name(role: i32) -> &'static str {
    match v1::Role::try_from(role) {
        Ok(v1::Role::Viewer) => "viewer",
        Ok(v1::Role::Developer) => "developer",
        Ok(v1::Role::Admin) => "admin",
        _ => "?",
    }
}

fn parse_role(role: &str) -> anyhow::Result<v1::Role> {
    match role {
        "viewer" => Ok(v1::Role::Viewer),
        "developer" => Ok(v1::Role::Developer),
        "admin" => Ok(v1::Role::Admin),
        other => Err(anyhow::anyhow!("--role {other:?}: use viewer, developer or admin")),
    }
}

fn table(users: &[v1::User]) {
    let mut table = Table::new(&["NAME", "GRANTS", "CREATED"]);
    for u in users {
        let grants: Vec<String> = u.grants.iter().map(|g| format!("{}:{}", g.project, role_name(g.role))).collect();
        table.row(vec![u.name.clone(), grants.join(", "), time(u.created_ms)]);
    }
    table.print();
}

pub(super) async fn run(
    cmd: UserCmd,
    project: Option<&str>,
    channel: Conn,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let mut client = UserServiceClient::new(channel);
    match cmd {
        UserCmd::Add { name, role, all } => {
            let role = parse_role(&role)?;
            let project = if all { "*".to_string() } else { need(project)? };
            let added = reply(
                client
                    .add_user(v1::AddUserRequest {
                        name: name.clone(),
                        grants: vec![v1::Grant { project, role: role as i32 }],
                    })
                    .await,
            )?;
            match output {
                Output::Json | Output::Yaml => emit(output, &added, || {})?,
                Output::Table => {
                    println!("{}", added.token);
                    eprintln!("maestroctl: user {name} added; the token above is shown only now");
                }
            }
        }
        UserCmd::List => {
            let users = reply(client.list_users(v1::ListUsersRequest {}).await)?.users;
            emit(output, &users, || table(&users))?;
        }
        UserCmd::Revoke { name } => {
            reply(client.revoke_user(v1::RevokeUserRequest { name: name.clone() }).await)?;
            if output != Output::Table {
                emit(output, &serde_json::json!({ "revoked": name }), || {})?;
            } else {
                eprintln!("maestroctl: user {name} revoked");
            }
        }
    }
    Ok(0)
}
