//! `UserService`: the user registry over gRPC. The permission table lets in
//! anyone who administers some project; here each call is narrowed to what the
//! caller administers: a daemon admin manages every user, a project's admin
//! only users whose grants all lie in projects they administer.

use std::sync::Arc;

use maestro_shared::v1;
use maestro_shared::v1::user_service_server::UserService;
use tonic::{Request, Response, Status};
use tracing::info;

use super::auth::Caller;
use crate::auth::{ALL_PROJECTS, AuthError, Grant, Role, User, Users};

pub(crate) struct UsersApi(pub(crate) Arc<Users>);

fn auth_status(error: AuthError) -> Status {
    match error {
        AuthError::Invalid(message) => Status::invalid_argument(super::status::capped(message)),
        AuthError::Exists(_) => Status::already_exists(super::status::capped(error.to_string())),
        AuthError::NotFound(_) => Status::not_found(super::status::capped(error.to_string())),
        AuthError::Io { .. } | AuthError::Corrupt { .. } => {
            tracing::error!(%error, "the user registry failed");
            Status::internal("the user registry cannot be read or written; the daemon log has the details")
        }
    }
}

fn role_to_wire(role: Role) -> i32 {
    match role {
        Role::Viewer => v1::Role::Viewer as i32,
        Role::Developer => v1::Role::Developer as i32,
        Role::Admin => v1::Role::Admin as i32,
    }
}

fn role_from_wire(role: i32) -> Result<Role, Status> {
    match v1::Role::try_from(role) {
        Ok(v1::Role::Viewer) => Ok(Role::Viewer),
        Ok(v1::Role::Developer) => Ok(Role::Developer),
        Ok(v1::Role::Admin) => Ok(Role::Admin),
        _ => Err(Status::invalid_argument("grants: each needs a role (ROLE_VIEWER, ROLE_DEVELOPER or ROLE_ADMIN)")),
    }
}

fn user_to_wire(user: &User) -> v1::User {
    v1::User {
        name: user.name.clone(),
        grants: user
            .grants
            .iter()
            .map(|g| v1::Grant { project: g.project.clone(), role: role_to_wire(g.role) })
            .collect(),
        created_ms: i64::try_from(user.created_ms).unwrap_or(i64::MAX),
    }
}

/// Whether `caller` administers every project `grants` name (`*`: the daemon).
/// A user without grants is a daemon admin's to manage.
fn administers(caller: &User, grants: &[Grant]) -> bool {
    if grants.is_empty() {
        return caller.role_in(ALL_PROJECTS) == Some(Role::Admin);
    }
    grants.iter().all(|g| caller.role_in(&g.project) == Some(Role::Admin))
}

fn caller<T>(request: &Request<T>) -> Result<User, Status> {
    request
        .extensions()
        .get::<Caller>()
        .map(|c| c.0.clone())
        .ok_or_else(|| Status::unauthenticated("no authenticated user for this call"))
}

#[tonic::async_trait]
impl UserService for UsersApi {
    async fn add_user(&self, request: Request<v1::AddUserRequest>) -> Result<Response<v1::AddUserResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let grants = r
            .grants
            .iter()
            .map(|g| Ok(Grant { project: g.project.clone(), role: role_from_wire(g.role)? }))
            .collect::<Result<Vec<_>, Status>>()?;
        if grants.is_empty() {
            return Err(Status::invalid_argument("grants: give the user a role in a project, or in \"*\""));
        }
        if !administers(&caller, &grants) {
            return Err(Status::permission_denied(format!(
                "user {} may only give roles in projects they administer",
                caller.name
            )));
        }
        let users = self.0.clone();
        let (name, given) = (r.name.clone(), grants.clone());
        let token = tokio::task::spawn_blocking(move || users.add(&name, given))
            .await
            .map_err(|_| Status::internal("adding the user was interrupted"))?
            .map_err(auth_status)?;
        info!(user = %r.name, by = %caller.name, "user added");
        let user = User { name: r.name, token_sha256: String::new(), grants, created_ms: 0 };
        let mut user = user_to_wire(&user);
        if let Ok(Some(stored)) = self.0.authenticate(&token) {
            user.created_ms = i64::try_from(stored.created_ms).unwrap_or(i64::MAX);
        }
        Ok(Response::new(v1::AddUserResponse { user: Some(user), token }))
    }

    async fn list_users(
        &self,
        request: Request<v1::ListUsersRequest>,
    ) -> Result<Response<v1::ListUsersResponse>, Status> {
        let caller = caller(&request)?;
        let users = self.0.list().map_err(auth_status)?;
        let users = users.iter().filter(|u| administers(&caller, &u.grants)).map(user_to_wire).collect();
        Ok(Response::new(v1::ListUsersResponse { users }))
    }

    async fn revoke_user(
        &self,
        request: Request<v1::RevokeUserRequest>,
    ) -> Result<Response<v1::RevokeUserResponse>, Status> {
        let caller = caller(&request)?;
        let name = request.into_inner().name;
        let all = self.0.list().map_err(auth_status)?;
        // Someone the caller may not manage is as good as absent: no probing for names.
        let Some(target) = all.iter().find(|u| u.name == name && administers(&caller, &u.grants)) else {
            return Err(Status::not_found(format!("no user {} that you manage", crate::ssot::validate::shown(&name))));
        };
        let users = self.0.clone();
        let target = target.name.clone();
        tokio::task::spawn_blocking(move || users.revoke(&target))
            .await
            .map_err(|_| Status::internal("revoking the user was interrupted"))?
            .map_err(auth_status)?;
        info!(user = %name, by = %caller.name, "user revoked");
        Ok(Response::new(v1::RevokeUserResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(grants: &[(&str, Role)]) -> User {
        User {
            name: "u".into(),
            token_sha256: String::new(),
            grants: grants.iter().map(|(p, r)| Grant { project: p.to_string(), role: *r }).collect(),
            created_ms: 0,
        }
    }

    #[test]
    fn a_project_admin_manages_only_users_of_their_projects() {
        let pat = user(&[("shop", Role::Admin), ("blog", Role::Viewer)]);
        let root = user(&[(ALL_PROJECTS, Role::Admin)]);
        let shop_dev = [Grant { project: "shop".into(), role: Role::Developer }];
        let both = [shop_dev[0].clone(), Grant { project: "blog".into(), role: Role::Viewer }];
        let everywhere = [Grant { project: ALL_PROJECTS.into(), role: Role::Viewer }];
        assert!(administers(&pat, &shop_dev));
        assert!(!administers(&pat, &both), "blog is not pat's to give");
        assert!(!administers(&pat, &everywhere), "nor the daemon");
        for grants in [&shop_dev[..], &both, &everywhere, &[]] {
            assert!(administers(&root, grants));
        }
        assert!(!administers(&pat, &[]), "a user without grants is the daemon admin's");
    }
}
