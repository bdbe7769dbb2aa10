//! End-to-end tests: the real `maestrod` binary on an ephemeral loopback port,
//! driven over gRPC and through the real `maestroctl`. One test binary, one
//! module per area.

mod api;
mod auth;
mod budgets;
mod cli;
mod crash;
mod durability;
#[cfg(feature = "etcd")]
mod etcd;
mod fairness;
mod harness;
mod keys;
mod lifecycle;
mod limits;
mod loops;
mod misbehaving;
mod model_server;
mod real_model;
mod replay;
mod rollback;
mod settings;
mod telemetry;
mod terminal;
mod transport;
mod watch;

use maestro_shared::v1::{
    self, contract_service_client::ContractServiceClient, execution_log_service_client::ExecutionLogServiceClient,
    lock_service_client::LockServiceClient, memory_service_client::MemoryServiceClient,
    project_service_client::ProjectServiceClient, requirement_service_client::RequirementServiceClient,
    snapshot_service_client::SnapshotServiceClient, system_service_client::SystemServiceClient,
    watch_service_client::WatchServiceClient,
};
use maestro_tests::Daemon;

/// A client for every service over one connection.
#[derive(Clone)]
struct Clients {
    projects: ProjectServiceClient<maestro_tests::Conn>,
    requirements: RequirementServiceClient<maestro_tests::Conn>,
    contracts: ContractServiceClient<maestro_tests::Conn>,
    log: ExecutionLogServiceClient<maestro_tests::Conn>,
    memory: MemoryServiceClient<maestro_tests::Conn>,
    locks: LockServiceClient<maestro_tests::Conn>,
    snapshots: SnapshotServiceClient<maestro_tests::Conn>,
    watch: WatchServiceClient<maestro_tests::Conn>,
    system: SystemServiceClient<maestro_tests::Conn>,
}

impl Clients {
    async fn connect(daemon: &Daemon) -> Clients {
        let channel = daemon.channel().await.expect("connects to the daemon");
        Clients {
            projects: ProjectServiceClient::new(channel.clone()),
            requirements: RequirementServiceClient::new(channel.clone()),
            contracts: ContractServiceClient::new(channel.clone()),
            log: ExecutionLogServiceClient::new(channel.clone()),
            memory: MemoryServiceClient::new(channel.clone()),
            locks: LockServiceClient::new(channel.clone()),
            snapshots: SnapshotServiceClient::new(channel.clone()),
            watch: WatchServiceClient::new(channel.clone()),
            system: SystemServiceClient::new(channel),
        }
    }

    async fn project(&mut self, id: &str) -> v1::Project {
        self.projects
            .create_project(v1::CreateProjectRequest {
                id: id.into(),
                display_name: String::new(),
                workspace: String::new(),
            })
            .await
            .expect("creates the project")
            .into_inner()
    }

    async fn requirement(&mut self, project: &str, title: &str, parent: &str, depends_on: &[&str]) -> v1::Requirement {
        self.requirements
            .create_requirement(v1::CreateRequirementRequest {
                project_id: project.into(),
                parent_id: parent.into(),
                title: title.into(),
                depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
                ..Default::default()
            })
            .await
            .expect("creates the requirement")
            .into_inner()
    }

    async fn revision(&mut self) -> u64 {
        self.system.get_info(v1::GetInfoRequest {}).await.expect("get info").into_inner().revision
    }
}
