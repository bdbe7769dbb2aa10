//! `maestroctl memory …` and `maestroctl lock …`.

use maestro_shared::Conn;
use maestro_shared::v1::{self, lock_service_client::LockServiceClient, memory_service_client::MemoryServiceClient};

use super::{ExitStatus, need};
use crate::cli::{LockCmd, MemoryCmd, Output};
use crate::client::{all_pages, reply};
use crate::output::{Table, emit, etag, time};

fn memory_table(entries: &[v1::MemoryEntry]) {
    let mut table = Table::new(&["AGENT", "KEY", "VALUE", "EXPIRES", "ETAG"]);
    for e in entries {
        let value: String = e.value.chars().take(60).collect();
        table.row(vec![e.agent.clone(), e.key.clone(), value, time(e.expire_time_ms), etag(e.meta.as_ref())]);
    }
    table.print();
}

pub(super) async fn run(
    cmd: MemoryCmd,
    project: Option<&str>,
    channel: Conn,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let mut client = MemoryServiceClient::new(channel);
    match cmd {
        MemoryCmd::Put { agent, key, value, ttl, etag } => {
            let request =
                v1::PutMemoryRequest { project_id: need(project)?, agent, key, value, ttl_seconds: ttl, etag };
            let entry = reply(client.put_memory(request).await)?;
            emit(output, &entry, || memory_table(std::slice::from_ref(&entry)))?;
        }
        MemoryCmd::Get { agent, key } => {
            let entry =
                reply(client.get_memory(v1::GetMemoryRequest { project_id: need(project)?, agent, key }).await)?;
            emit(output, &entry, || println!("{}", entry.value))?;
        }
        MemoryCmd::List { agent } => {
            let project_id = need(project)?;
            let all = all_pages(0, |page_token| {
                let mut client = client.clone();
                let request = v1::ListMemoryRequest {
                    project_id: project_id.clone(),
                    agent: agent.clone().unwrap_or_default(),
                    page_size: 1000,
                    page_token,
                };
                async move {
                    let page = client.list_memory(request).await?.into_inner();
                    Ok((page.entries, page.next_page_token))
                }
            })
            .await?;
            emit(output, &all, || memory_table(&all))?;
        }
        MemoryCmd::Delete { agent, key } => {
            let request =
                v1::DeleteMemoryRequest { project_id: need(project)?, agent, key: key.clone(), etag: String::new() };
            let deleted = reply(client.delete_memory(request).await)?;
            emit(output, &deleted, || println!("deleted {key} at revision {}", deleted.revision))?;
        }
    }
    Ok(0)
}

fn lock_table(locks: &[v1::Lock]) {
    let mut table = Table::new(&["NAME", "HOLDER", "LEASE", "ACQUIRED", "ETAG"]);
    for l in locks {
        table.row(vec![
            l.name.clone(),
            l.holder.clone(),
            l.lease_id.to_string(),
            time(l.acquire_time_ms),
            etag(l.meta.as_ref()),
        ]);
    }
    table.print();
}

fn lease_line(lease: &v1::Lease) {
    println!("lease {} (ttl {}s) expires {}", lease.id, lease.ttl_seconds, time(lease.expire_time_ms));
}

pub(super) async fn run_lock(
    cmd: LockCmd,
    project: Option<&str>,
    channel: Conn,
    output: Output,
) -> anyhow::Result<ExitStatus> {
    let mut client = LockServiceClient::new(channel);
    match cmd {
        LockCmd::Acquire { name, holder, ttl, lease } => {
            let request =
                v1::AcquireLockRequest { project_id: need(project)?, name, holder, lease_id: lease, ttl_seconds: ttl };
            let lock = reply(client.acquire_lock(request).await)?;
            emit(output, &lock, || lock_table(std::slice::from_ref(&lock)))?;
        }
        LockCmd::Release { name, lease } => {
            let request = v1::ReleaseLockRequest { project_id: need(project)?, name: name.clone(), lease_id: lease };
            let released = reply(client.release_lock(request).await)?;
            emit(output, &released, || println!("released {name} at revision {}", released.revision))?;
        }
        LockCmd::List => {
            let project_id = need(project)?;
            let all = all_pages(0, |page_token| {
                let mut client = client.clone();
                let request = v1::ListLocksRequest { project_id: project_id.clone(), page_size: 1000, page_token };
                async move {
                    let page = client.list_locks(request).await?.into_inner();
                    Ok((page.locks, page.next_page_token))
                }
            })
            .await?;
            emit(output, &all, || lock_table(&all))?;
        }
        LockCmd::KeepAlive { lease } => {
            let lease = reply(client.keep_alive(v1::KeepAliveRequest { lease_id: lease }).await)?;
            emit(output, &lease, || lease_line(&lease))?;
        }
        LockCmd::Revoke { lease } => {
            let revoked = reply(client.revoke_lease(v1::RevokeLeaseRequest { lease_id: lease }).await)?;
            emit(output, &revoked, || println!("revoked lease {lease} at revision {}", revoked.revision))?;
        }
    }
    Ok(0)
}
