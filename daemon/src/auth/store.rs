//! The auth store's contents (users, roles, the enabled flag, the auth revision) and
//! the rules for changing them, as etcd's auth store applies them. Changes are decided
//! on a copy ([`AuthState`] is plain data), written to the state database in the apply
//! transaction, and only then published to readers, so every member reaches the same
//! state from the same log and a restart or snapshot reloads exactly what was applied.

use std::collections::BTreeMap;

use prost::Message as _;
use rusqlite::Connection;

use super::permissions::{self, Access};
use crate::error::RequestError;
use crate::proto::authpb::{Permission, Role, User, UserAddOptions};
use crate::proto::qetcdpb::auth_change::Change;
use crate::storage::{Meta, StorageError};

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// The auth revision of a store no change was made to. etcd commits revision 1 when it
/// first opens its backend, so its first change makes revision 2; starting from the
/// same number keeps `auth status` and the `revision` claim of JWTs equal to etcd's for
/// the same history (and a JWT valid on both when they share a key).
pub const INITIAL_REVISION: u64 = 1;

/// Everything the auth store holds.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthState {
    pub enabled: bool,
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: INITIAL_REVISION,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

/// Which records a change touched, to write back.
#[derive(Debug, Default)]
pub struct Touched {
    users: Vec<String>,
    roles: Vec<String>,
    /// Users whose tokens stop being valid (deleted, or their password changed).
    pub invalidated_users: Vec<String>,
    pub flag: bool,
}

fn no_password(user: &User) -> bool {
    user.options.as_ref().is_some_and(|o| o.no_password)
}

pub fn has_root_role(user: &User) -> bool {
    user.roles.iter().any(|r| r == ROOT_ROLE)
}

impl AuthState {
    pub fn load(conn: &Connection) -> Result<AuthState, StorageError> {
        let mut state = AuthState {
            enabled: Meta::AuthEnabled.get_u64(conn)?.unwrap_or(0) == 1,
            revision: Meta::AuthRevision
                .get_u64(conn)?
                .unwrap_or(INITIAL_REVISION),
            ..Default::default()
        };
        let mut stmt = conn.prepare_cached("SELECT record FROM auth_users")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let user = User::decode(row.get::<_, Vec<u8>>(0)?.as_slice())
                .map_err(|e| StorageError::Corrupt(format!("auth user record: {e}")))?;
            state
                .users
                .insert(String::from_utf8_lossy(&user.name).into_owned(), user);
        }
        let mut stmt = conn.prepare_cached("SELECT record FROM auth_roles")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let role = Role::decode(row.get::<_, Vec<u8>>(0)?.as_slice())
                .map_err(|e| StorageError::Corrupt(format!("auth role record: {e}")))?;
            state
                .roles
                .insert(String::from_utf8_lossy(&role.name).into_owned(), role);
        }
        Ok(state)
    }

    /// Writes what `touched` names (and the revision) to the state database.
    pub fn persist(&self, conn: &Connection, touched: &Touched) -> Result<(), StorageError> {
        for name in &touched.users {
            match self.users.get(name) {
                Some(u) => conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO auth_users (name, record) VALUES (?1, ?2)",
                    )?
                    .execute(rusqlite::params![name.as_bytes(), u.encode_to_vec()])?,
                None => conn
                    .prepare_cached("DELETE FROM auth_users WHERE name = ?1")?
                    .execute([name.as_bytes()])?,
            };
        }
        for name in &touched.roles {
            match self.roles.get(name) {
                Some(r) => conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO auth_roles (name, record) VALUES (?1, ?2)",
                    )?
                    .execute(rusqlite::params![name.as_bytes(), r.encode_to_vec()])?,
                None => conn
                    .prepare_cached("DELETE FROM auth_roles WHERE name = ?1")?
                    .execute([name.as_bytes()])?,
            };
        }
        if touched.flag {
            Meta::AuthEnabled.set_u64(conn, u64::from(self.enabled))?;
        }
        Meta::AuthRevision.set_u64(conn, self.revision)?;
        Ok(())
    }

    /// Writes the whole store (every user and role, the flag and the revision) to a
    /// state database whose auth tables are empty: an imported backup's auth store.
    pub fn persist_all(&self, conn: &Connection) -> Result<(), StorageError> {
        let touched = Touched {
            users: self.users.keys().cloned().collect(),
            roles: self.roles.keys().cloned().collect(),
            invalidated_users: Vec::new(),
            flag: true,
        };
        self.persist(conn, &touched)
    }

    /// etcd's `IsAdminPermitted`: with auth on, only a user with the root role.
    pub fn check_admin(&self, username: &str) -> Result<(), RequestError> {
        if !self.enabled {
            return Ok(());
        }
        if username.is_empty() {
            return Err(RequestError::UserEmpty);
        }
        match self.users.get(username) {
            None => Err(RequestError::UserNotFound),
            Some(u) if has_root_role(u) => Ok(()),
            Some(_) => Err(RequestError::PermissionDenied),
        }
    }

    /// etcd's `isOpPermitted`: `revision` is the auth revision the request was
    /// authenticated at (0: no user).
    pub fn check_op(
        &self,
        username: &str,
        revision: u64,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), RequestError> {
        if !self.enabled {
            return Ok(());
        }
        if revision == 0 || username.is_empty() {
            return Err(RequestError::UserEmpty);
        }
        if revision < self.revision {
            return Err(RequestError::AuthOldRevision);
        }
        let Some(user) = self.users.get(username) else {
            return Err(RequestError::PermissionDenied);
        };
        if has_root_role(user) {
            return Ok(());
        }
        let roles = user.roles.iter().filter_map(|r| self.roles.get(r));
        if permissions::permitted(roles, key, range_end, access) {
            Ok(())
        } else {
            Err(RequestError::PermissionDenied)
        }
    }

    /// The stored hash of a user who may log in with a password, with the revision it
    /// was read at (etcd's `CheckPassword`, before the hash comparison).
    pub fn password_hash(&self, name: &str) -> Result<(Vec<u8>, u64), RequestError> {
        if !self.enabled {
            return Err(RequestError::AuthNotEnabled);
        }
        match self.users.get(name) {
            Some(u) if no_password(u) => Err(RequestError::NoPasswordUser),
            Some(u) => Ok((u.password.clone(), self.revision)),
            None => Err(RequestError::AuthFailed),
        }
    }

    /// Applies one change (not an authentication) to this copy, etcd's rules and
    /// errors. The revision moves on every successful change except enabling.
    pub fn change(&mut self, change: &Change) -> Result<Touched, RequestError> {
        let mut t = Touched::default();
        match change {
            Change::Authenticated(_) => {
                return Err(RequestError::Internal(
                    "authentication is not a store change".into(),
                ));
            }
            Change::Enable(_) => {
                if self.enabled {
                    return Ok(t);
                }
                let root = self
                    .users
                    .get(ROOT_USER)
                    .ok_or(RequestError::RootUserNotExist)?;
                if !has_root_role(root) {
                    return Err(RequestError::RootRoleNotExist);
                }
                self.enabled = true;
                t.flag = true;
                // etcd does not bump the revision on enable.
                return Ok(t);
            }
            Change::Disable(_) => {
                if !self.enabled {
                    return Ok(t);
                }
                self.enabled = false;
                t.flag = true;
            }
            Change::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(RequestError::UserEmpty);
                }
                if self.users.contains_key(&r.name) {
                    return Err(RequestError::UserAlreadyExist);
                }
                let options = r.options.unwrap_or(UserAddOptions { no_password: false });
                let password = if options.no_password {
                    Vec::new()
                } else {
                    r.hashed_password.as_bytes().to_vec()
                };
                self.users.insert(
                    r.name.clone(),
                    User {
                        name: r.name.as_bytes().to_vec(),
                        password,
                        roles: Vec::new(),
                        options: Some(options),
                    },
                );
                t.users.push(r.name.clone());
            }
            Change::UserDelete(r) => {
                if self.enabled && r.name == ROOT_USER {
                    return Err(RequestError::InvalidAuthMgmt);
                }
                if self.users.remove(&r.name).is_none() {
                    return Err(RequestError::UserNotFound);
                }
                t.users.push(r.name.clone());
                t.invalidated_users.push(r.name.clone());
            }
            Change::UserChangePassword(r) => {
                let user = self
                    .users
                    .get_mut(&r.name)
                    .ok_or(RequestError::UserNotFound)?;
                if !no_password(user) {
                    user.password = r.hashed_password.as_bytes().to_vec();
                }
                t.users.push(r.name.clone());
                t.invalidated_users.push(r.name.clone());
            }
            Change::UserGrantRole(r) => {
                if !self.users.contains_key(&r.user) {
                    return Err(RequestError::UserNotFound);
                }
                if r.role != ROOT_ROLE && !self.roles.contains_key(&r.role) {
                    return Err(RequestError::RoleNotFound);
                }
                let user = self.users.get_mut(&r.user).expect("checked above");
                if user.roles.contains(&r.role) {
                    return Ok(t); // etcd ignores a repeated grant, revision unchanged
                }
                user.roles.push(r.role.clone());
                user.roles.sort();
                t.users.push(r.user.clone());
            }
            Change::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT_USER && r.role == ROOT_ROLE {
                    return Err(RequestError::InvalidAuthMgmt);
                }
                let user = self
                    .users
                    .get_mut(&r.name)
                    .ok_or(RequestError::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|role| *role != r.role);
                if user.roles.len() == before {
                    return Err(RequestError::RoleNotGranted);
                }
                t.users.push(r.name.clone());
            }
            Change::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(RequestError::RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(RequestError::RoleAlreadyExist);
                }
                self.roles.insert(
                    r.name.clone(),
                    Role {
                        name: r.name.as_bytes().to_vec(),
                        key_permission: Vec::new(),
                    },
                );
                t.roles.push(r.name.clone());
            }
            Change::RoleDelete(r) => {
                if self.enabled && r.role == ROOT_ROLE {
                    return Err(RequestError::InvalidAuthMgmt);
                }
                if self.roles.remove(&r.role).is_none() {
                    return Err(RequestError::RoleNotFound);
                }
                t.roles.push(r.role.clone());
                for (name, user) in self.users.iter_mut() {
                    let before = user.roles.len();
                    user.roles.retain(|role| *role != r.role);
                    if user.roles.len() != before {
                        t.users.push(name.clone());
                    }
                }
            }
            Change::RoleGrantPermission(r) => {
                let perm = r.perm.as_ref().ok_or(RequestError::PermissionNotGiven)?;
                let role = self
                    .roles
                    .get_mut(&r.name)
                    .ok_or(RequestError::RoleNotFound)?;
                match role
                    .key_permission
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(existing) => existing.perm_type = perm.perm_type,
                    None => {
                        role.key_permission.push(Permission {
                            perm_type: perm.perm_type,
                            key: perm.key.clone(),
                            range_end: perm.range_end.clone(),
                        });
                        role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                t.roles.push(r.name.clone());
            }
            Change::RoleRevokePermission(r) => {
                let role = self
                    .roles
                    .get_mut(&r.role)
                    .ok_or(RequestError::RoleNotFound)?;
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| !(p.key == r.key && p.range_end == r.range_end));
                if role.key_permission.len() == before {
                    return Err(RequestError::PermissionNotGranted);
                }
                t.roles.push(r.role.clone());
            }
        }
        self.revision += 1;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::*;

    fn add_user(s: &mut AuthState, name: &str) {
        s.change(&Change::UserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: "h".into(),
            ..Default::default()
        }))
        .unwrap();
    }

    #[test]
    fn enable_needs_root_with_root_role_and_root_is_then_protected() {
        let mut s = AuthState::default();
        let enable = Change::Enable(AuthEnableRequest {});
        assert!(matches!(
            s.change(&enable),
            Err(RequestError::RootUserNotExist)
        ));
        add_user(&mut s, "root");
        assert!(matches!(
            s.change(&enable),
            Err(RequestError::RootRoleNotExist)
        ));
        s.change(&Change::UserGrantRole(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        }))
        .unwrap();
        let rev = s.revision;
        s.change(&enable).unwrap();
        assert!(s.enabled);
        assert_eq!(s.revision, rev, "enable keeps the revision");
        let del = Change::UserDelete(AuthUserDeleteRequest {
            name: "root".into(),
        });
        assert!(matches!(s.change(&del), Err(RequestError::InvalidAuthMgmt)));
        assert!(s.check_admin("root").is_ok());
        assert!(matches!(s.check_admin(""), Err(RequestError::UserEmpty)));
        assert!(matches!(
            s.check_admin("bob"),
            Err(RequestError::UserNotFound)
        ));
    }

    #[test]
    fn permission_checks_follow_roles_and_the_revision() {
        let mut s = AuthState::default();
        add_user(&mut s, "root");
        add_user(&mut s, "alice");
        for c in [
            Change::UserGrantRole(AuthUserGrantRoleRequest {
                user: "root".into(),
                role: "root".into(),
            }),
            Change::RoleAdd(AuthRoleAddRequest { name: "app".into() }),
            Change::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: "app".into(),
                perm: Some(Permission {
                    perm_type: 2,
                    key: b"app/".to_vec(),
                    range_end: b"app0".to_vec(),
                }),
            }),
            Change::UserGrantRole(AuthUserGrantRoleRequest {
                user: "alice".into(),
                role: "app".into(),
            }),
            Change::Enable(AuthEnableRequest {}),
        ] {
            s.change(&c).unwrap();
        }
        let rev = s.revision;
        assert!(
            s.check_op("alice", rev, b"app/x", b"", Access::Write)
                .is_ok()
        );
        assert!(matches!(
            s.check_op("alice", rev, b"other", b"", Access::Read),
            Err(RequestError::PermissionDenied)
        ));
        assert!(matches!(
            s.check_op("", 0, b"app/x", b"", Access::Read),
            Err(RequestError::UserEmpty)
        ));
        s.change(&Change::RoleRevokePermission(
            AuthRoleRevokePermissionRequest {
                role: "app".into(),
                key: b"app/".to_vec(),
                range_end: b"app0".to_vec(),
            },
        ))
        .unwrap();
        assert!(matches!(
            s.check_op("alice", rev, b"app/x", b"", Access::Write),
            Err(RequestError::AuthOldRevision)
        ));
        assert!(matches!(
            s.check_op("alice", s.revision, b"app/x", b"", Access::Write),
            Err(RequestError::PermissionDenied)
        ));
        assert!(
            s.check_op("root", s.revision, b"x", b"\0", Access::Write)
                .is_ok()
        );
    }
}
