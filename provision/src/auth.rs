//! `provision auth apply`: makes a running cluster's users, roles and permissions what
//! the inventory's `[auth]` says, then turns authentication on.
//!
//! It speaks etcd's Auth API over gRPC (the daemon's own client, the one its v3
//! discovery uses) with the admin certificate from the output directory, whose CN is
//! `root`: before authentication is on any client may manage users, and once it is on
//! that certificate is root. It is idempotent and only adds: missing roles, users,
//! permissions and role grants are created; nothing is deleted, and permissions or
//! role grants the inventory does not list are revoked only with `--prune`.
//! Authentication is enabled last, after `root` exists with the root role (etcd
//! refuses to enable it otherwise), so a failure half-way never locks anyone out.
//!
//! Passwords are read from each user's `password_file` when the user is created and
//! sent over the TLS connection; the daemon hashes them. They are never printed nor
//! written anywhere. An existing user's password is left alone (change it with
//! `etcdctl user passwd`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qetcd::bootstrap::discovery::grpc_client::{self, Connection};
use qetcd::proto::authpb::{Permission as WirePermission, UserAddOptions, permission::Type};
use qetcd::proto::etcdserverpb::auth_client::AuthClient;
use qetcd::proto::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGetRequest, AuthRoleGrantPermissionRequest,
    AuthRoleListRequest, AuthRoleRevokePermissionRequest, AuthStatusRequest, AuthUserAddRequest,
    AuthUserGetRequest, AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest,
};

use crate::bundle::layout;
use crate::inventory::auth::{Access, AuthSpec, Permission};
use crate::inventory::{Inventory, TlsMode, default_discovery_client};
use crate::render;

/// The user etcd requires before authentication is enabled, and its built-in role.
const ROOT: &str = "root";

#[derive(Debug, thiserror::Error)]
pub enum AuthApplyError {
    #[error("{file} has no [auth] section: nothing to apply")]
    NoAuthSection { file: String },
    #[error("{file}: [auth] needs tls = \"self-signed\" (the admin certificate logs in as root)")]
    NotSelfSigned { file: String },
    #[error(
        "{path} is missing: render the bundles first (`provision render <inventory> --out {out}`)"
    )]
    MissingCredential { path: String, out: String },
    #[error("cannot reach the cluster at {endpoints}: {why}")]
    Connect { endpoints: String, why: String },
    #[error("{what}: {message}")]
    Rpc { what: String, message: String },
    #[error("cannot read the password of user {user} from {path}: {source}")]
    ReadPassword {
        user: String,
        path: String,
        source: std::io::Error,
    },
    #[error("the password file {path} of user {user} is empty")]
    EmptyPassword { user: String, path: String },
    #[error("cannot start the client runtime: {0}")]
    Runtime(std::io::Error),
}

fn wire_type(a: Access) -> Type {
    match a {
        Access::Read => Type::Read,
        Access::Write => Type::Write,
        Access::ReadWrite => Type::Readwrite,
    }
}

fn from_wire(p: &WirePermission) -> Permission {
    Permission {
        key: p.key.clone(),
        range_end: p.range_end.clone(),
        access: match p.perm_type() {
            Type::Read => Access::Read,
            Type::Write => Access::Write,
            Type::Readwrite => Access::ReadWrite,
        },
    }
}

/// The password in `path` (its first line), for user `user`. Relative paths are taken
/// from the inventory's directory.
fn read_password(inv: &Inventory, user: &str, path: &Path) -> Result<String, AuthApplyError> {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(&inv.file)
            .parent()
            .unwrap_or(Path::new("."))
            .join(path)
    };
    let text = std::fs::read_to_string(&full).map_err(|source| AuthApplyError::ReadPassword {
        user: user.to_string(),
        path: full.display().to_string(),
        source,
    })?;
    let password = text.lines().next().unwrap_or_default().to_string();
    if password.is_empty() {
        return Err(AuthApplyError::EmptyPassword {
            user: user.to_string(),
            path: full.display().to_string(),
        });
    }
    Ok(password)
}

/// Applies `inv`'s `[auth]` to the cluster, with the admin credentials in `out`.
/// Returns what it changed, one line per change (empty: nothing to do).
pub fn apply(inv: &Inventory, out: &Path, prune: bool) -> Result<Vec<String>, AuthApplyError> {
    let spec = inv
        .auth
        .as_ref()
        .ok_or_else(|| AuthApplyError::NoAuthSection {
            file: inv.file.clone(),
        })?;
    if inv.tls != TlsMode::SelfSigned {
        return Err(AuthApplyError::NotSelfSigned {
            file: inv.file.clone(),
        });
    }
    let credential = |name: &str| -> Result<PathBuf, AuthApplyError> {
        let p = out.join(layout::admin()).join(name);
        if p.exists() {
            Ok(p)
        } else {
            Err(AuthApplyError::MissingCredential {
                path: p.display().to_string(),
                out: out.display().to_string(),
            })
        }
    };
    let mut client = default_discovery_client();
    client.insecure_transport = false;
    client.cacert = credential("client-ca.crt")?.display().to_string();
    client.cert = credential("admin.crt")?.display().to_string();
    client.key = credential("admin.key")?.display().to_string();
    client.dial_timeout = Duration::from_secs(5);
    client.request_timeout = Duration::from_secs(15);
    let endpoints: Vec<String> = inv
        .members
        .iter()
        .map(|m| render::client_url(inv, m))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AuthApplyError::Runtime)?;
    runtime.block_on(async {
        let conn = grpc_client::connect(&endpoints, 0, &client)
            .await
            .map_err(|why| AuthApplyError::Connect {
                endpoints: endpoints.join(","),
                why,
            })?;
        Session {
            conn,
            timeout: client.request_timeout,
            changes: Vec::new(),
        }
        .apply(inv, spec, prune)
        .await
    })
}

/// One connection and the changes made through it.
struct Session {
    conn: Connection,
    timeout: Duration,
    changes: Vec<String>,
}

/// One Auth RPC with a deadline; `$what` names it in errors.
macro_rules! rpc {
    ($s:expr, $method:ident, $req:expr, $what:expr) => {{
        let mut client = AuthClient::new($s.conn.channel.clone());
        match tokio::time::timeout($s.timeout, client.$method($s.conn.request($req))).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(AuthApplyError::Rpc {
                what: $what,
                message: status.message().to_string(),
            }),
            Err(_) => Err(AuthApplyError::Rpc {
                what: $what,
                message: format!("no answer within {:?}", $s.timeout),
            }),
        }
    }};
}

impl Session {
    async fn apply(
        mut self,
        inv: &Inventory,
        spec: &AuthSpec,
        prune: bool,
    ) -> Result<Vec<String>, AuthApplyError> {
        let enabled = rpc!(
            self,
            auth_status,
            AuthStatusRequest {},
            "reading whether authentication is enabled".into()
        )?
        .enabled;
        let users: BTreeSet<String> = rpc!(
            self,
            user_list,
            AuthUserListRequest {},
            "listing users".into()
        )?
        .users
        .into_iter()
        .collect();
        let roles: BTreeSet<String> = rpc!(
            self,
            role_list,
            AuthRoleListRequest {},
            "listing roles".into()
        )?
        .roles
        .into_iter()
        .collect();

        // root first: etcd enables authentication only with it, and it is who this
        // tool is once authentication is on.
        if !users.contains(ROOT) {
            self.add_user(ROOT, None).await?;
        }
        self.grant_roles(ROOT, &[ROOT.to_string()], false).await?;

        for role in &spec.roles {
            let current: Vec<Permission> = if roles.contains(&role.name) {
                rpc!(
                    self,
                    role_get,
                    AuthRoleGetRequest {
                        role: role.name.clone()
                    },
                    format!("reading role {}", role.name)
                )?
                .perm
                .iter()
                .map(from_wire)
                .collect()
            } else {
                rpc!(
                    self,
                    role_add,
                    AuthRoleAddRequest {
                        name: role.name.clone()
                    },
                    format!("adding role {}", role.name)
                )?;
                self.changes.push(format!("added role {}", role.name));
                Vec::new()
            };
            for p in &role.permissions {
                if current.contains(p) {
                    continue;
                }
                rpc!(
                    self,
                    role_grant_permission,
                    AuthRoleGrantPermissionRequest {
                        name: role.name.clone(),
                        perm: Some(WirePermission {
                            perm_type: wire_type(p.access) as i32,
                            key: p.key.clone(),
                            range_end: p.range_end.clone(),
                        }),
                    },
                    format!("granting {} to role {}", p.describe(), role.name)
                )?;
                self.changes
                    .push(format!("granted {} to role {}", p.describe(), role.name));
            }
            if prune {
                // A permission on the same range with another access was replaced by
                // the grant above (etcd keeps one per range): only other ranges go.
                for p in &current {
                    let listed = role
                        .permissions
                        .iter()
                        .any(|w| w.key == p.key && w.range_end == p.range_end);
                    if listed {
                        continue;
                    }
                    rpc!(
                        self,
                        role_revoke_permission,
                        AuthRoleRevokePermissionRequest {
                            role: role.name.clone(),
                            key: p.key.clone(),
                            range_end: p.range_end.clone(),
                        },
                        format!("revoking {} from role {}", p.describe(), role.name)
                    )?;
                    self.changes
                        .push(format!("revoked {} from role {}", p.describe(), role.name));
                }
            }
        }

        for user in &spec.users {
            if !users.contains(&user.name) {
                let password = match &user.password_file {
                    Some(path) => Some(read_password(inv, &user.name, path)?),
                    None => None,
                };
                self.add_user(&user.name, password).await?;
            }
            self.grant_roles(&user.name, &user.roles, prune).await?;
        }

        if !enabled {
            rpc!(
                self,
                auth_enable,
                AuthEnableRequest {},
                "enabling authentication".into()
            )?;
            self.changes.push("enabled authentication".into());
        }
        Ok(self.changes)
    }

    async fn add_user(
        &mut self,
        name: &str,
        password: Option<String>,
    ) -> Result<(), AuthApplyError> {
        let how = if password.is_some() {
            "password and certificate"
        } else if name == ROOT {
            "no password: the admin certificate logs in as root"
        } else {
            "certificate only"
        };
        rpc!(
            self,
            user_add,
            AuthUserAddRequest {
                name: name.to_string(),
                options: Some(UserAddOptions {
                    no_password: password.is_none(),
                }),
                password: password.unwrap_or_default(),
                hashed_password: String::new(),
            },
            format!("adding user {name}")
        )?;
        self.changes.push(format!("added user {name} ({how})"));
        Ok(())
    }

    /// Grants `user` the `wanted` roles it lacks; with `prune`, revokes the others.
    async fn grant_roles(
        &mut self,
        user: &str,
        wanted: &[String],
        prune: bool,
    ) -> Result<(), AuthApplyError> {
        let has = rpc!(
            self,
            user_get,
            AuthUserGetRequest {
                name: user.to_string()
            },
            format!("reading user {user}")
        )?
        .roles;
        for role in wanted.iter().filter(|r| !has.contains(r)) {
            rpc!(
                self,
                user_grant_role,
                AuthUserGrantRoleRequest {
                    user: user.to_string(),
                    role: role.clone(),
                },
                format!("granting role {role} to user {user}")
            )?;
            self.changes
                .push(format!("granted role {role} to user {user}"));
        }
        if prune {
            for role in has.iter().filter(|r| !wanted.contains(r)) {
                rpc!(
                    self,
                    user_revoke_role,
                    AuthUserRevokeRoleRequest {
                        name: user.to_string(),
                        role: role.clone(),
                    },
                    format!("revoking role {role} from user {user}")
                )?;
                self.changes
                    .push(format!("revoked role {role} from user {user}"));
            }
        }
        Ok(())
    }
}
