//! etcd's authentication and role-based access control.
//!
//! The store (users, roles, permissions, the enabled flag and the auth revision) is
//! replicated: every change is a Raft entry that each member applies to its state
//! database ([`store`]), so members agree, and restarts and snapshots carry it.
//! Permissions are checked twice, as etcd does: by the API when a request arrives
//! (reads are answered there) and by every member when a write is applied, against the
//! auth revision the request was authenticated at, so a permission revoked between
//! propose and apply is honoured.
//!
//! Passwords are bcrypt hashes (etcd's cost, 10 by default), made and compared by the
//! API off the async threads, never on the Raft thread and never logged.

pub mod permissions;
pub mod simple_token;
pub mod store;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rusqlite::Connection;

pub use permissions::Access;
pub use store::AuthState;

use crate::error::RequestError;
use crate::proto::qetcdpb::auth_change::Change;
use crate::storage::StorageError;
use simple_token::SimpleTokens;

/// etcd's default `--bcrypt-cost`.
pub const DEFAULT_BCRYPT_COST: u32 = 10;
/// etcd's default `--auth-token-ttl`.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Who a request comes from, and the auth revision they were identified at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    pub revision: u64,
}

/// The auth store as this member applied it, and its simple tokens.
pub struct AuthStore {
    state: RwLock<Arc<AuthState>>,
    tokens: SimpleTokens,
    bcrypt_cost: u32,
}

impl Default for AuthStore {
    fn default() -> Self {
        AuthStore::new(DEFAULT_TOKEN_TTL, DEFAULT_BCRYPT_COST)
    }
}

impl AuthStore {
    pub fn new(token_ttl: Duration, bcrypt_cost: u32) -> Self {
        AuthStore {
            state: RwLock::default(),
            tokens: SimpleTokens::new(token_ttl),
            bcrypt_cost,
        }
    }

    /// The store as of the last applied entry.
    pub fn state(&self) -> Arc<AuthState> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn publish(&self, state: AuthState) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
    }

    /// Reads the store from the state database (at start and after a snapshot).
    pub fn reload(&self, conn: &Connection) -> Result<(), StorageError> {
        let state = AuthState::load(conn)?;
        if !state.enabled {
            self.tokens.clear();
        }
        self.publish(state);
        Ok(())
    }

    /// Applies a committed change on behalf of `username` (in the apply transaction
    /// `conn`); an authentication yields its token. Called on the Raft thread: no
    /// password work happens here.
    pub fn apply(
        &self,
        conn: &Connection,
        username: &str,
        change: &Change,
        index: u64,
    ) -> Result<Option<String>, RequestError> {
        let current = self.state();
        if let Change::Authenticated(a) = change {
            // The password was checked by the proposer; the user may have gone since.
            current.password_hash(&a.name)?;
            let token = SimpleTokens::token(&a.simple_token_prefix, index);
            self.tokens.assign(token.clone(), &a.name);
            return Ok(Some(token));
        }
        current.check_admin(username)?;
        let mut next = (*current).clone();
        let touched = next.change(change)?;
        next.persist(conn, &touched)?;
        for user in &touched.invalidated_users {
            self.tokens.invalidate_user(user);
        }
        if !next.enabled {
            self.tokens.clear();
        }
        if touched.flag {
            tracing::info!(
                enabled = next.enabled,
                "auth store: authentication switched"
            );
        }
        self.publish(next);
        Ok(None)
    }

    /// The user a token stands for, at the current auth revision.
    pub fn info_from_token(&self, token: &str) -> Result<AuthInfo, RequestError> {
        let username = self
            .tokens
            .user_of(token)
            .ok_or(RequestError::InvalidAuthToken)?;
        Ok(AuthInfo {
            username,
            revision: self.state().revision,
        })
    }

    /// A user named by a verified client certificate, at the current auth revision.
    pub fn info_from_common_name(&self, common_name: &str) -> AuthInfo {
        AuthInfo {
            username: common_name.to_owned(),
            revision: self.state().revision,
        }
    }

    /// bcrypt at the configured cost. Blocking (tens of milliseconds): call it from
    /// a blocking thread.
    pub fn hash_password(&self, password: &str) -> Result<String, RequestError> {
        bcrypt::hash(password, self.bcrypt_cost)
            .map_err(|e| RequestError::Internal(format!("bcrypt: {e}")))
    }

    /// etcd's `CheckPassword`: the auth revision the password was right at. Blocking,
    /// as slow as the hash's cost whether or not the password is right.
    pub fn check_password(&self, name: &str, password: &str) -> Result<u64, RequestError> {
        let (hash, revision) = self.state().password_hash(name)?;
        let hash = String::from_utf8(hash).map_err(|_| RequestError::AuthFailed)?;
        match bcrypt::verify(password, &hash) {
            Ok(true) => Ok(revision),
            _ => Err(RequestError::AuthFailed),
        }
    }

    /// A new random prefix for a simple token.
    pub fn new_token_prefix() -> Result<String, RequestError> {
        SimpleTokens::new_prefix()
            .map_err(|_| RequestError::Internal("no random source for a token".into()))
    }
}
