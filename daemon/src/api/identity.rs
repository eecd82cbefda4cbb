//! Who a request comes from: the one place that reads the `token` metadata (which the
//! HTTP gateway fills from its `Authorization` header, as etcd's grpc-gateway does) and
//! the client certificate's common name, and the checks the API makes with it.
//!
//! etcd's rule: a token, when given, decides (an unknown or expired one is refused
//! even if a certificate is presented); without one, with `--client-cert-auth`, the
//! verified certificate's CN is the user; otherwise the request is anonymous, which
//! with auth enabled fails every permission check with `user name is empty`.

use super::ApiContext;
use super::client_listener::ClientConnectInfo;
use crate::auth::{Access, AuthInfo};
use crate::error::RequestError;

/// The metadata key etcd's clients send their token in.
pub const TOKEN_METADATA_KEY: &str = "token";

impl ApiContext {
    /// The authenticated caller of a request, if it names one.
    pub fn caller(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        extensions: &tonic::Extensions,
    ) -> Result<Option<AuthInfo>, RequestError> {
        if let Some(token) = metadata.get(TOKEN_METADATA_KEY) {
            let token = token.to_str().map_err(|_| RequestError::InvalidAuthToken)?;
            return self.auth.info_from_token(token).map(Some);
        }
        if self.client_cert_auth
            && let Some(cn) = extensions
                .get::<ClientConnectInfo>()
                .and_then(|i| i.common_name.as_deref())
        {
            return Ok(Some(self.auth.info_from_common_name(cn)));
        }
        Ok(None)
    }

    /// [`Self::caller`] of a unary or streaming request.
    pub fn caller_of<T>(&self, req: &tonic::Request<T>) -> Result<Option<AuthInfo>, RequestError> {
        self.caller(req.metadata(), req.extensions())
    }

    /// etcd's `IsAdminPermitted` for calls only root may make with auth on.
    pub fn check_admin<T>(&self, req: &tonic::Request<T>) -> Result<(), RequestError> {
        let state = self.auth.state();
        if !state.enabled {
            return Ok(());
        }
        let caller = self.caller_of(req)?.unwrap_or_default();
        state.check_admin(&caller.username)
    }

    /// Whether `caller` may read `[key, range_end)` (etcd's `IsRangePermitted`).
    pub fn check_read(
        &self,
        caller: Option<&AuthInfo>,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), RequestError> {
        let state = self.auth.state();
        let (name, revision) = caller.map_or(("", 0), |c| (c.username.as_str(), c.revision));
        state.check_op(name, revision, key, range_end, Access::Read)
    }
}
