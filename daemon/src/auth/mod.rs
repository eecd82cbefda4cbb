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

pub mod jwt;
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
use jwt::{JwtTokens, TokenOptions, TokenOptionsError};
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

/// The tokens this member issues and accepts (`--auth-token`).
pub enum TokenProvider {
    /// Random strings every member registers when it applies the authentication.
    Simple(SimpleTokens),
    /// Signed claims: nothing to register, the proposer signs after the apply.
    Jwt(JwtTokens),
}

impl TokenProvider {
    /// The provider `--auth-token` asks for, with its keys read (`--auth-token-ttl`
    /// is the simple tokens' lifetime; JWTs have their own `ttl` option).
    pub fn from_options(
        options: &str,
        simple_ttl: Duration,
    ) -> Result<TokenProvider, TokenOptionsError> {
        Ok(match TokenOptions::parse(options)? {
            TokenOptions::Simple => TokenProvider::Simple(SimpleTokens::new(simple_ttl)),
            TokenOptions::Jwt(jwt) => {
                let tokens = JwtTokens::load(&jwt)?;
                if tokens.verify_only() {
                    tracing::info!(
                        "JWT tokens: verify-only (no priv-key); this member cannot issue tokens"
                    );
                }
                TokenProvider::Jwt(tokens)
            }
        })
    }

    fn forget_user(&self, user: &str) {
        if let TokenProvider::Simple(t) = self {
            t.invalidate_user(user);
        }
    }

    fn forget_all(&self) {
        if let TokenProvider::Simple(t) = self {
            t.clear();
        }
    }
}

/// The auth store as this member applied it, and its tokens.
pub struct AuthStore {
    state: RwLock<Arc<AuthState>>,
    tokens: TokenProvider,
    bcrypt_cost: u32,
}

impl Default for AuthStore {
    fn default() -> Self {
        AuthStore::new(DEFAULT_TOKEN_TTL, DEFAULT_BCRYPT_COST)
    }
}

impl AuthStore {
    /// A store issuing simple tokens.
    pub fn new(token_ttl: Duration, bcrypt_cost: u32) -> Self {
        AuthStore::with_tokens(
            TokenProvider::Simple(SimpleTokens::new(token_ttl)),
            bcrypt_cost,
        )
    }

    pub fn with_tokens(tokens: TokenProvider, bcrypt_cost: u32) -> Self {
        AuthStore {
            state: RwLock::default(),
            tokens,
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
            self.tokens.forget_all();
        }
        self.publish(state);
        Ok(())
    }

    /// Applies a committed change on behalf of `username` (in the apply transaction
    /// `conn`); an authentication yields its simple token (a JWT is signed by the
    /// proposer afterwards, see [`Self::sign_jwt`]). Called on the Raft thread: no
    /// password or signing work happens here.
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
            let TokenProvider::Simple(tokens) = &self.tokens else {
                return Ok(None);
            };
            let token = SimpleTokens::token(&a.simple_token_prefix, index);
            tokens.assign(token.clone(), &a.name);
            return Ok(Some(token));
        }
        current.check_admin(username)?;
        let mut next = (*current).clone();
        let touched = next.change(change)?;
        next.persist(conn, &touched)?;
        for user in &touched.invalidated_users {
            self.tokens.forget_user(user);
        }
        if !next.enabled {
            self.tokens.forget_all();
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
    /// The user a token stands for: a simple token at the current auth revision, a
    /// JWT at the revision it was signed at (so a JWT older than the last auth change
    /// is answered `auth: revision in header is old`, as in etcd).
    pub fn info_from_token(&self, token: &str) -> Result<AuthInfo, RequestError> {
        match &self.tokens {
            TokenProvider::Simple(tokens) => {
                let username = tokens
                    .user_of(token)
                    .ok_or(RequestError::InvalidAuthToken)?;
                Ok(AuthInfo {
                    username,
                    revision: self.state().revision,
                })
            }
            TokenProvider::Jwt(tokens) => {
                tokens.verify(token).ok_or(RequestError::InvalidAuthToken)
            }
        }
    }

    /// Whether tokens are JWTs, signed by the member that checked the password.
    pub fn issues_jwt(&self) -> bool {
        matches!(self.tokens, TokenProvider::Jwt(_))
    }

    /// A JWT for `username` at auth revision `revision`. CPU-bound: call it from a
    /// blocking thread.
    pub fn sign_jwt(&self, username: &str, revision: u64) -> Result<String, RequestError> {
        match &self.tokens {
            TokenProvider::Jwt(tokens) => tokens.sign(username, revision).map_err(|e| match e {
                jwt::JwtSignError::VerifyOnly => RequestError::JwtVerifyOnly,
                other => RequestError::Internal(other.to_string()),
            }),
            TokenProvider::Simple(_) => Err(RequestError::Internal(
                "a JWT was asked of a member issuing simple tokens".into(),
            )),
        }
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
