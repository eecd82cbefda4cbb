//! The `Auth` service: etcd's users, roles and permissions, and authentication.
//!
//! Changes go through Raft (see `auth`); passwords are hashed here, on a blocking
//! thread, before the change is proposed, so neither the log nor the Raft thread ever
//! sees a password. Reads (user/role get and list, status) are answered from the
//! applied store after a linearizable read barrier, with etcd's admin rules.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status};

use super::ApiContext;
use crate::auth::{AuthInfo, AuthStore};
use crate::error::RequestError;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;
use crate::proto::qetcdpb::raft_request::Request as RaftRequest;
use crate::proto::qetcdpb::{AuthChange, Authenticated, auth_change::Change};
use crate::state_machine::Applied;

/// Authentications retried when the store changed while the password was checked.
const AUTHENTICATE_ATTEMPTS: usize = 5;

pub struct AuthService {
    ctx: Arc<ApiContext>,
}

impl AuthService {
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        AuthService { ctx }
    }

    /// Proposes a change and answers with the header of the revision it applied at;
    /// an authentication also yields its token.
    async fn change(
        &self,
        caller: Option<AuthInfo>,
        change: Change,
    ) -> Result<(ResponseHeader, Option<String>), RequestError> {
        let request = RaftRequest::Auth(AuthChange {
            change: Some(change),
        });
        match self.ctx.propose_as(request, caller).await? {
            Applied::Auth { revision, token } => Ok((self.ctx.header(revision), token)),
            other => Err(RequestError::Internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    fn current_header(&self) -> ResponseHeader {
        let revision = self.ctx.node.status().revision.load(Ordering::Acquire) as i64;
        self.ctx.header(revision)
    }

    /// bcrypt on a blocking thread (tens of milliseconds at cost 10).
    async fn hash(&self, password: String) -> Result<String, RequestError> {
        let auth = self.ctx.auth.clone();
        blocking(move || auth.hash_password(&password)).await
    }

    /// A user's new password hash, or none for `--no-password` users. etcd 3.5
    /// clients may send a hash of their own (`hashedPassword`), which qetcd does not
    /// take: it could not know it was made at a sane cost.
    async fn password_hash(&self, password: &str, hashed: &str) -> Result<String, RequestError> {
        if !hashed.is_empty() && password.is_empty() {
            return Err(RequestError::NotCapable);
        }
        self.hash(password.to_owned()).await
    }

    /// A read of the store as of now, cluster-wide.
    async fn applied_store(&self) -> Result<Arc<crate::auth::AuthState>, RequestError> {
        self.ctx.read_barrier().await?;
        Ok(self.ctx.auth.state())
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Option<AuthInfo>, RequestError> {
        self.ctx.caller_of(req)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RequestError> + Send + 'static,
) -> Result<T, RequestError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RequestError::Internal(format!("password task failed: {e}")))?
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let caller = self.caller(&req)?;
        let (header, _) = self
            .change(caller, Change::Enable(req.into_inner()))
            .await?;
        Ok(Response::new(AuthEnableResponse {
            header: Some(header),
        }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let caller = self.caller(&req)?;
        let (header, _) = self
            .change(caller, Change::Disable(req.into_inner()))
            .await?;
        Ok(Response::new(AuthDisableResponse {
            header: Some(header),
        }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let caller = self.caller(&req)?;
        let (header, _) = self
            .change(caller, Change::UserDelete(req.into_inner()))
            .await?;
        Ok(Response::new(AuthUserDeleteResponse {
            header: Some(header),
        }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let caller = self.caller(&req)?;
        let (header, _) = self
            .change(caller, Change::UserGrantRole(req.into_inner()))
            .await?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: Some(header),
        }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let caller = self.caller(&req)?;
        let (header, _) = self
            .change(caller, Change::UserRevokeRole(req.into_inner()))
            .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: Some(header),
        }))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let caller = self.caller(&req)?;
        let (header, _) = self
            .change(caller, Change::RoleAdd(req.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleAddResponse {
            header: Some(header),
        }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let caller = self.caller(&req)?;
        let (header, _) = self
            .change(caller, Change::RoleDelete(req.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse {
            header: Some(header),
        }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.caller(&req)?;
        let (header, _) = self
            .change(caller, Change::RoleGrantPermission(req.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: Some(header),
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.caller(&req)?;
        let (header, _) = self
            .change(caller, Change::RoleRevokePermission(req.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: Some(header),
        }))
    }

    async fn auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.ctx.check_admin(&req)?;
        let store = self.applied_store().await?;
        Ok(Response::new(AuthStatusResponse {
            header: Some(self.current_header()),
            enabled: store.enabled,
            auth_revision: store.revision,
        }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let AuthenticateRequest { name, password } = req.into_inner();
        self.ctx.read_barrier().await?;
        for _ in 0..AUTHENTICATE_ATTEMPTS {
            let auth: Arc<AuthStore> = self.ctx.auth.clone();
            let (n, p) = (name.clone(), password.clone());
            let checked_at = match blocking(move || auth.check_password(&n, &p)).await {
                Ok(revision) => revision,
                Err(e) => {
                    if !matches!(e, RequestError::AuthNotEnabled) {
                        // The name only: never the password.
                        tracing::warn!(user = %name, error = %e, "invalid authentication was requested");
                    }
                    return Err(e.into());
                }
            };
            let jwt = self.ctx.auth.issues_jwt();
            let change = Change::Authenticated(Authenticated {
                name: name.clone(),
                simple_token_prefix: if jwt {
                    String::new()
                } else {
                    AuthStore::new_token_prefix()?
                },
            });
            let (header, token) = self.change(None, change).await?;
            if self.ctx.auth.state().revision == checked_at {
                let token = match token {
                    Some(simple) => simple,
                    None if jwt => {
                        let auth = self.ctx.auth.clone();
                        let n = name.clone();
                        blocking(move || auth.sign_jwt(&n, checked_at)).await?
                    }
                    None => String::new(),
                };
                return Ok(Response::new(AuthenticateResponse {
                    header: Some(header),
                    token,
                }));
            }
            tracing::info!("the auth store changed while a password was checked; checking again");
        }
        Err(RequestError::AuthFailed.into())
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let caller = self.caller(&req)?;
        // Refused before the costly hash when the caller may not add users anyway.
        self.ctx.check_admin(&req)?;
        let mut r = req.into_inner();
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        r.hashed_password = if no_password {
            String::new()
        } else {
            self.password_hash(&r.password, &r.hashed_password).await?
        };
        r.password.clear();
        let (header, _) = self.change(caller, Change::UserAdd(r)).await?;
        Ok(Response::new(AuthUserAddResponse {
            header: Some(header),
        }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let caller = self.caller(&req)?;
        self.ctx.check_admin(&req)?;
        let mut r = req.into_inner();
        r.hashed_password = self.password_hash(&r.password, &r.hashed_password).await?;
        r.password.clear();
        let (header, _) = self.change(caller, Change::UserChangePassword(r)).await?;
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: Some(header),
        }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = self.caller(&req)?.unwrap_or_default();
        let name = req.into_inner().name;
        let store = self.applied_store().await?;
        // Root may look at anyone; a user at themselves.
        if let Err(e) = store.check_admin(&caller.username)
            && name != caller.username
        {
            return Err(e.into());
        }
        let user = store.users.get(&name).ok_or(RequestError::UserNotFound)?;
        Ok(Response::new(AuthUserGetResponse {
            header: Some(self.current_header()),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.ctx.check_admin(&req)?;
        let store = self.applied_store().await?;
        Ok(Response::new(AuthUserListResponse {
            header: Some(self.current_header()),
            users: store.users.keys().cloned().collect(),
        }))
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = self.caller(&req)?.unwrap_or_default();
        let name = req.into_inner().role;
        let store = self.applied_store().await?;
        // Root may look at any role; a user at the roles they have.
        let has_role = store
            .users
            .get(&caller.username)
            .is_some_and(|u| u.roles.contains(&name));
        if let Err(e) = store.check_admin(&caller.username)
            && !has_role
        {
            return Err(e.into());
        }
        let role = store.roles.get(&name).ok_or(RequestError::RoleNotFound)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: Some(self.current_header()),
            perm: role.key_permission.clone(),
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.ctx.check_admin(&req)?;
        let store = self.applied_store().await?;
        Ok(Response::new(AuthRoleListResponse {
            header: Some(self.current_header()),
            roles: store.roles.keys().cloned().collect(),
        }))
    }
}
