//! Authentication and authorization of every `maestro.v1` RPC, as a tower
//! layer in front of the services (health and reflection stay open).
//!
//! A request carries `authorization: Bearer <token>`; the token names a user
//! (`auth::Users`). One table, [`RULES`], gives each RPC the role it needs and
//! where the project comes from: field 1 of the request (a project id, or a
//! loop id whose loop names the project), the daemon as a whole, or any project
//! of the user's. An RPC without a row is refused: a new RPC cannot ship open.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tonic::Status;
use tonic::body::Body;
use tracing::warn;

use super::quota::{GuardedBody, Quotas};

use crate::auth::{ALL_PROJECTS, Role, User, Users};
use crate::ssot::Ssot;

/// Where the project a request acts on is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Field 1 is a project id (empty: every project, which needs a `*` grant).
    Project,
    /// Field 1 is a loop id; the loop's project decides.
    Loop,
    /// The daemon as a whole: a `*` grant.
    Daemon,
    /// Resources not tied to one project (leases): the role in any project will do.
    AnyProject,
    /// Any authenticated user (ping, info, listing the projects one may see).
    Authenticated,
}

/// One row of the permission table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub method: &'static str,
    pub role: Role,
    pub scope: Scope,
}

const fn rule(method: &'static str, role: Role, scope: Scope) -> Rule {
    Rule { method, role, scope }
}

use Role::{Admin, Developer, Viewer};
use Scope::{AnyProject, Authenticated, Daemon, Loop, Project};

/// Every RPC of `maestro.v1`, with what it needs.
pub const RULES: &[Rule] = &[
    rule("/maestro.v1.ProjectService/CreateProject", Admin, Daemon),
    rule("/maestro.v1.ProjectService/GetProject", Viewer, Project),
    rule("/maestro.v1.ProjectService/ListProjects", Viewer, Authenticated),
    rule("/maestro.v1.ProjectService/UpdateProject", Admin, Project),
    rule("/maestro.v1.ProjectService/DeleteProject", Admin, Project),
    rule("/maestro.v1.RequirementService/CreateRequirement", Developer, Project),
    rule("/maestro.v1.RequirementService/GetRequirement", Viewer, Project),
    rule("/maestro.v1.RequirementService/ListRequirements", Viewer, Project),
    rule("/maestro.v1.RequirementService/UpdateRequirement", Developer, Project),
    rule("/maestro.v1.RequirementService/DeleteRequirement", Developer, Project),
    rule("/maestro.v1.RequirementService/SetRequirementStatus", Developer, Project),
    rule("/maestro.v1.RequirementService/SetDependencies", Developer, Project),
    rule("/maestro.v1.RequirementService/ListReadyRequirements", Viewer, Project),
    rule("/maestro.v1.ContractService/PutContract", Developer, Project),
    rule("/maestro.v1.ContractService/GetContract", Viewer, Project),
    rule("/maestro.v1.ContractService/ListContracts", Viewer, Project),
    rule("/maestro.v1.ContractService/ListContractVersions", Viewer, Project),
    rule("/maestro.v1.ContractService/SetContractStatus", Developer, Project),
    rule("/maestro.v1.ExecutionLogService/AppendLogEntry", Developer, Project),
    rule("/maestro.v1.ExecutionLogService/ListLogEntries", Viewer, Project),
    rule("/maestro.v1.ExecutionLogService/VerifyLog", Viewer, Project),
    rule("/maestro.v1.MemoryService/PutMemory", Developer, Project),
    rule("/maestro.v1.MemoryService/GetMemory", Viewer, Project),
    rule("/maestro.v1.MemoryService/ListMemory", Viewer, Project),
    rule("/maestro.v1.MemoryService/DeleteMemory", Developer, Project),
    rule("/maestro.v1.LockService/GrantLease", Developer, AnyProject),
    rule("/maestro.v1.LockService/KeepAlive", Developer, AnyProject),
    rule("/maestro.v1.LockService/RevokeLease", Developer, AnyProject),
    rule("/maestro.v1.LockService/GetLease", Viewer, AnyProject),
    rule("/maestro.v1.LockService/AcquireLock", Developer, Project),
    rule("/maestro.v1.LockService/ReleaseLock", Developer, Project),
    rule("/maestro.v1.LockService/ListLocks", Viewer, Project),
    rule("/maestro.v1.SnapshotService/CreateSnapshot", Developer, Project),
    rule("/maestro.v1.SnapshotService/GetSnapshot", Viewer, Project),
    rule("/maestro.v1.SnapshotService/ListSnapshots", Viewer, Project),
    rule("/maestro.v1.SnapshotService/DeleteSnapshot", Developer, Project),
    rule("/maestro.v1.SnapshotService/DiffSnapshots", Viewer, Project),
    rule("/maestro.v1.SnapshotService/RestoreSnapshot", Admin, Project),
    rule("/maestro.v1.WatchService/Watch", Viewer, Project),
    rule("/maestro.v1.SystemService/Ping", Viewer, Authenticated),
    rule("/maestro.v1.SystemService/GetInfo", Viewer, Authenticated),
    rule("/maestro.v1.SystemService/Compact", Admin, Daemon),
    // Narrowed by the service to the users of the projects the caller administers.
    rule("/maestro.v1.UserService/AddUser", Admin, AnyProject),
    rule("/maestro.v1.UserService/ListUsers", Admin, AnyProject),
    rule("/maestro.v1.UserService/RevokeUser", Admin, AnyProject),
    rule("/maestro.v1.HarnessService/GetPolicy", Viewer, Project),
    rule("/maestro.v1.HarnessService/CheckAction", Viewer, Project),
    rule("/maestro.v1.HarnessService/ListBudgetUsage", Viewer, Project),
    rule("/maestro.v1.LoopService/StartLoop", Developer, Project),
    rule("/maestro.v1.LoopService/GetLoop", Viewer, Loop),
    rule("/maestro.v1.LoopService/ListLoops", Viewer, Project),
    rule("/maestro.v1.LoopService/CancelLoop", Developer, Loop),
    rule("/maestro.v1.LoopService/PauseLoop", Developer, Loop),
    rule("/maestro.v1.LoopService/ResumeLoop", Developer, Loop),
    rule("/maestro.v1.LoopService/ApproveLoop", Developer, Loop),
    rule("/maestro.v1.LoopService/RetryLoop", Developer, Loop),
    rule("/maestro.v1.LoopService/AbortLoop", Developer, Loop),
    rule("/maestro.v1.LoopService/StreamLoopEvents", Viewer, Loop),
];

/// The rule of an RPC path, if it has one.
pub fn rule_for(method: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.method == method)
}

/// Who made a request: in the request's extensions for the handlers.
#[derive(Debug, Clone)]
pub struct Caller(pub User);

/// The first field of a request, as a string: the project or loop id it names.
#[derive(Clone, PartialEq, prost::Message)]
struct FirstField {
    #[prost(string, tag = "1")]
    id: String,
}

/// Services anyone may call: health checks and server reflection.
const OPEN: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection.v1.", "/grpc.reflection.v1alpha."];

/// Largest request body looked into (the server's message limit, and the frame header).
const MAX_BODY: usize = (4 << 20) + 5;

/// The layer: authenticate, find the rule, check the role where the request acts.
#[derive(Clone)]
pub struct AuthLayer {
    users: Arc<Users>,
    ssot: Arc<Ssot>,
    quotas: Arc<Quotas>,
}

impl AuthLayer {
    pub fn new(users: Arc<Users>, ssot: Arc<Ssot>, quotas: Arc<Quotas>) -> Self {
        AuthLayer { users, ssot, quotas }
    }
}

/// The RPCs that answer with a stream (held open: counted as streams, ended on revocation).
pub const STREAMING: &[&str] = &["/maestro.v1.WatchService/Watch", "/maestro.v1.LoopService/StreamLoopEvents"];

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorized { inner, auth: self.clone() }
    }
}

/// A service behind [`AuthLayer`].
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    auth: AuthLayer,
}

impl<S> tower_service::Service<http::Request<Body>> for Authorized<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready serves this request (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            // Only health and reflection are open; every other path needs a token and a rule
            // (so a path the router might match some other way is refused, not let through).
            if OPEN.iter().any(|prefix| request.uri().path().starts_with(prefix)) {
                return inner.call(request).await;
            }
            let user = match auth.user(&request) {
                Ok(user) => user,
                Err(status) => return Ok(status.into_http()),
            };
            // Counted before authorization: refused calls spend the user's quota too.
            let stream = STREAMING.contains(&request.uri().path());
            let (permit, revoked) = match auth.quotas.admit(&user.token_sha256, &user.name, stream) {
                Ok(admitted) => admitted,
                // Not logged one by one (a flood would fill the log); counted in the metrics.
                Err(status) => return Ok(status.into_http()),
            };
            let request = match auth.check(request, user.clone()).await {
                Ok(request) => request,
                Err(status) => return Ok(status.into_http()),
            };
            // Whatever the call changes is recorded as the user's.
            let response = crate::ssot::actor::scope(user.name.clone(), inner.call(request)).await?;
            if !stream {
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            Ok(http::Response::from_parts(parts, Body::new(GuardedBody::new(body, permit, revoked))))
        })
    }
}

impl AuthLayer {
    async fn check(&self, request: http::Request<Body>, user: User) -> Result<http::Request<Body>, Status> {
        let method = request.uri().path().to_string();
        let Some(rule) = rule_for(&method) else {
            warn!(user = %user.name, %method, "refused: the RPC has no permission rule");
            return Err(Status::permission_denied(format!("{method} has no permission rule; nobody may call it")));
        };
        let (mut parts, body) = request.into_parts();
        let project = match rule.scope {
            Scope::Authenticated => None,
            Scope::Daemon => Some(ALL_PROJECTS.to_string()),
            Scope::AnyProject => {
                if user.grants.iter().any(|g| g.role >= rule.role) {
                    None
                } else {
                    return Err(denied(&user, &method, rule.role, "any project", None));
                }
            }
            Scope::Project | Scope::Loop => {
                let bytes = http_body_util::Limited::new(body, MAX_BODY)
                    .collect()
                    .await
                    .map_err(|_| Status::invalid_argument("the request could not be read (larger than 4 MiB?)"))?
                    .to_bytes();
                let id = first_field(&bytes)?;
                let project = match rule.scope {
                    Scope::Project if id.is_empty() => ALL_PROJECTS.to_string(),
                    Scope::Project => id,
                    // A loop decides by its project. One that is not there is NOT_FOUND, said here
                    // (a loop created between this check and the handler's must not slip through);
                    // a malformed id is the handler's INVALID_ARGUMENT.
                    _ => match self.ssot.get_loop(&id).await {
                        Ok(found) => found.value.project,
                        Err(crate::ssot::SsotError::InvalidArgument { .. }) => String::new(),
                        Err(crate::ssot::SsotError::NotFound { .. }) => {
                            return Err(Status::not_found(format!("loop {id} not found")));
                        }
                        Err(error) => {
                            warn!(%error, "cannot look up a loop to authorize a request");
                            return Err(Status::unavailable("cannot check the loop's project now; retry"));
                        }
                    },
                };
                parts.extensions.insert(Caller(user.clone()));
                let request = http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)));
                if !project.is_empty() {
                    let has = user.role_in(&project);
                    if has.is_none_or(|r| r < rule.role) {
                        // Of a loop, the message does not name its project.
                        let place = if rule.scope == Scope::Loop { "that loop's project" } else { project.as_str() };
                        return Err(denied(&user, &method, rule.role, place, has));
                    }
                }
                return Ok(request);
            }
        };
        if let Some(project) = project {
            let has = user.role_in(&project);
            if has.is_none_or(|r| r < rule.role) {
                return Err(denied(&user, &method, rule.role, &project, has));
            }
        }
        parts.extensions.insert(Caller(user));
        Ok(http::Request::from_parts(parts, body))
    }

    fn user(&self, request: &http::Request<Body>) -> Result<User, Status> {
        let header = request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).filter(|t| !t.is_empty())
        else {
            return Err(Status::unauthenticated(
                "no token: pass --token or set MAESTRO_TOKEN (an admin finds one in the daemon's data dir, admin.token, \
                 and makes more with `maestrod user add`)",
            ));
        };
        match self.users.authenticate(token) {
            Ok(Some(user)) => Ok(user),
            Ok(None) => {
                Err(Status::unauthenticated("the token is not valid here (mistyped, revoked, or another daemon's)"))
            }
            Err(error) => {
                warn!(%error, "cannot read the user registry");
                Err(Status::unavailable("the daemon cannot read its user registry; the daemon log has the details"))
            }
        }
    }
}

fn denied(user: &User, method: &str, needs: Role, project: &str, has: Option<Role>) -> Status {
    let rpc = method.rsplit('/').next().unwrap_or(method);
    let place =
        if project == ALL_PROJECTS { "on this daemon (every project)".to_string() } else { format!("in {project}") };
    warn!(user = %user.name, %method, project, "permission denied");
    Status::permission_denied(format!(
        "user {} may not call {rpc} {place}: it needs the {} role, and has {}",
        user.name,
        needs.as_str(),
        has.map_or("none", Role::as_str)
    ))
}

/// Field 1 of the request in a gRPC frame (uncompressed), as a string.
fn first_field(frame: &[u8]) -> Result<String, Status> {
    use prost::Message;
    let bad = || Status::invalid_argument("the request is not one uncompressed gRPC message");
    if frame.len() < 5 || frame[0] != 0 {
        return Err(bad());
    }
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    // Exactly one message: the service must read the same one that was authorized.
    if frame.len() != 5 + len {
        return Err(bad());
    }
    let message = &frame[5..];
    FirstField::decode(message).map(|f| f.id).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// The id the layer judges is the one the service will read: one uncompressed
    /// message, and of a repeated field 1 the last (protobuf's rule, as prost decodes).
    #[test]
    fn the_id_is_read_as_the_service_reads_it() {
        use prost::Message;
        let shop = FirstField { id: "shop".into() }.encode_to_vec();
        assert_eq!(first_field(&frame(&shop)).unwrap(), "shop");
        let mut twice = FirstField { id: "mine".into() }.encode_to_vec();
        twice.extend_from_slice(&FirstField { id: "victim".into() }.encode_to_vec());
        assert_eq!(first_field(&frame(&twice)).unwrap(), "victim");
        let mut two_messages = frame(&FirstField { id: "mine".into() }.encode_to_vec());
        two_messages.extend_from_slice(&frame(&shop));
        assert!(first_field(&two_messages).is_err(), "a second message is refused");
        let mut compressed = frame(&shop);
        compressed[0] = 1;
        assert!(first_field(&compressed).is_err());
        assert!(first_field(&frame(&shop)[..6]).is_err(), "a cut message is refused");
        assert_eq!(first_field(&frame(&[])).unwrap(), "", "an empty message names no project");
    }

    /// Every RPC in the published descriptor has exactly one row, and every
    /// row names an RPC that exists: a new RPC fails this test until it has one.
    #[test]
    fn every_rpc_has_one_permission_rule() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(maestro_shared::v1::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                }
            }
        }
        for method in &methods {
            assert_eq!(RULES.iter().filter(|r| r.method == method).count(), 1, "{method} needs one rule");
        }
        // The streams the layer guards are exactly the streaming RPCs.
        let mut streaming: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(move |s| (f, s)))
            .flat_map(|(f, s)| {
                s.method
                    .iter()
                    .filter(|m| m.server_streaming())
                    .map(move |m| format!("/{}.{}/{}", f.package(), s.name(), m.name()))
            })
            .collect();
        streaming.sort();
        let mut listed: Vec<String> = STREAMING.iter().map(|s| s.to_string()).collect();
        listed.sort();
        assert_eq!(streaming, listed);
        for rule in RULES {
            assert!(methods.iter().any(|m| m == rule.method), "{} is not an RPC", rule.method);
        }
        // Anything that changes state needs at least a developer; reading needs at most a viewer's role
        // in the project (the daemon-wide ones aside).
        for rule in RULES {
            let name = rule.method.rsplit('/').next().unwrap();
            let reads = ["Get", "List", "Verify", "Diff", "Watch", "Stream", "Ping", "Check"]
                .iter()
                .any(|p| name.starts_with(p));
            // Who the users are is for those who manage them.
            if name == "ListUsers" {
                assert!(rule.role == Role::Admin, "{name} is an admin's read");
            } else if reads {
                assert!(rule.role == Role::Viewer, "{name} only reads");
            } else {
                assert!(rule.role >= Role::Developer, "{name} changes state");
            }
        }
        // Rules scoped by field 1 only where field 1 is a string id.
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let rule = rule_for(&path).unwrap();
                    if matches!(rule.scope, Scope::Project | Scope::Loop) {
                        let input = method.input_type().rsplit('.').next().unwrap();
                        let message =
                            set.file.iter().flat_map(|f| &f.message_type).find(|m| m.name() == input).unwrap();
                        let first = message.field.iter().find(|f| f.number() == 1).unwrap();
                        let expected = if rule.scope == Scope::Loop { "loop_id" } else { "project_id" };
                        assert!(
                            first.r#type() == prost_types::field_descriptor_proto::Type::String
                                && (first.name() == expected
                                    || (service.name() == "ProjectService" && first.name() == "id")),
                            "{path}: field 1 is {}",
                            first.name()
                        );
                    }
                }
            }
        }
    }
}
