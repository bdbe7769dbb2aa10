//! The gRPC API: one module per `maestro.v1` service, plus `convert`
//! (wire ↔ domain) and `status` (errors → gRPC status). Only this module and
//! `server` know tonic.

pub mod auth;
mod contracts;
mod convert;
mod exec_log;
mod harness;
mod locks;
mod loops;
mod memory;
pub mod metrics;
mod projects;
pub mod quota;
mod requirements;
mod snapshots;
mod status;
mod system;
mod users;
mod watch;

use std::sync::Arc;

use maestro_shared::v1;
use tonic::service::Routes;
use tonic::service::RoutesBuilder;

use crate::harness::sandbox::Confinement;
use crate::ssot::Ssot;

/// Every `maestro.v1` service, plus `grpc.health.v1` and server reflection.
pub async fn routes(
    ssot: Arc<Ssot>,
    loops: Arc<crate::autoloop::manager::LoopManager>,
    data_dir: String,
    retention: u64,
    sandbox: Confinement,
    users: Arc<crate::auth::Users>,
) -> Routes {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<v1::project_service_server::ProjectServiceServer<projects::Projects>>().await;
    health.set_serving::<v1::requirement_service_server::RequirementServiceServer<requirements::Requirements>>().await;
    health.set_serving::<v1::contract_service_server::ContractServiceServer<contracts::Contracts>>().await;
    health.set_serving::<v1::execution_log_service_server::ExecutionLogServiceServer<exec_log::ExecutionLog>>().await;
    health.set_serving::<v1::memory_service_server::MemoryServiceServer<memory::Memory>>().await;
    health.set_serving::<v1::lock_service_server::LockServiceServer<locks::Locks>>().await;
    health.set_serving::<v1::snapshot_service_server::SnapshotServiceServer<snapshots::Snapshots>>().await;
    health.set_serving::<v1::watch_service_server::WatchServiceServer<watch::Watch>>().await;
    health.set_serving::<v1::system_service_server::SystemServiceServer<system::System>>().await;
    health.set_serving::<v1::harness_service_server::HarnessServiceServer<harness::Harness>>().await;
    health.set_serving::<v1::loop_service_server::LoopServiceServer<loops::Loops>>().await;
    health.set_serving::<v1::user_service_server::UserServiceServer<users::UsersApi>>().await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor set is valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the embedded descriptor set is valid");

    let mut builder = RoutesBuilder::default();
    builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(v1::project_service_server::ProjectServiceServer::new(projects::Projects(
            ssot.clone(),
            Some(users.clone()),
            loops.clone(),
        )))
        .add_service(v1::user_service_server::UserServiceServer::new(users::UsersApi(users)))
        .add_service(v1::requirement_service_server::RequirementServiceServer::new(requirements::Requirements(
            ssot.clone(),
        )))
        .add_service(v1::contract_service_server::ContractServiceServer::new(contracts::Contracts(ssot.clone())))
        .add_service(v1::execution_log_service_server::ExecutionLogServiceServer::new(exec_log::ExecutionLog(
            ssot.clone(),
        )))
        .add_service(v1::memory_service_server::MemoryServiceServer::new(memory::Memory(ssot.clone())))
        .add_service(v1::lock_service_server::LockServiceServer::new(locks::Locks(ssot.clone())))
        .add_service(v1::snapshot_service_server::SnapshotServiceServer::new(snapshots::Snapshots(ssot.clone())))
        .add_service(v1::watch_service_server::WatchServiceServer::new(watch::Watch(ssot.clone())))
        .add_service(v1::loop_service_server::LoopServiceServer::new(loops::Loops(loops)))
        .add_service(v1::harness_service_server::HarnessServiceServer::new(harness::Harness {
            ssot: ssot.clone(),
            confinement: sandbox.clone(),
        }))
        .add_service(v1::system_service_server::SystemServiceServer::new(system::System {
            ssot,
            data_dir,
            retention,
            sandbox,
        }));
    builder.routes()
}
