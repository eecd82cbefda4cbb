//! The errors a client can be told about, with etcd's texts.
//!
//! Go clients recognise etcd errors by their message, so every text here is etcd's,
//! letter for letter. The mapping to gRPC status codes is in `api::status`, the only
//! place that knows about gRPC.

use crate::storage::StorageError;

/// A request failed in a way etcd reports to clients.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is raised: the cluster refuses every write.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: unhealthy cluster")]
    UnhealthyCluster,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: not capable")]
    NotCapable,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// A password given for a `--no-password` user. etcd has no gRPC text for it
    /// either and sends its internal one (code Unknown).
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// The auth store changed between the request's authentication and its apply.
    /// etcd has no gRPC text for it and sends its internal one (code Unknown); clients
    /// recognise this text and authenticate again.
    #[error("auth: revision in header is old")]
    AuthOldRevision,
    /// An authentication on a member given only the JWT public key. etcd sends its
    /// internal text (code Unknown); the client may authenticate at another member.
    #[error("auth: token signing attempted with verify-only key")]
    JwtVerifyOnly,
    /// Unexpected internal failure; the detail goes to the log, not to the client.
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl From<StorageError> for RequestError {
    fn from(e: StorageError) -> Self {
        RequestError::Internal(e.to_string())
    }
}

impl From<rusqlite::Error> for RequestError {
    fn from(e: rusqlite::Error) -> Self {
        RequestError::Internal(format!("sqlite: {e}"))
    }
}

/// A body sent to the HTTP/JSON gateway that is not the proto3 JSON of the RPC's
/// request. The texts are those etcd's gateway answers with (Go's JSON and base64
/// decoders'), so clients that show them show the same thing.
#[derive(Debug, thiserror::Error)]
pub enum JsonRequestError {
    /// The body ended inside a JSON value.
    #[error("unexpected EOF")]
    Truncated,
    /// A `bytes` field (key, value, range_end...) is not base64.
    #[error("illegal base64 data at input byte {offset}")]
    BadBase64 { offset: usize },
    /// Anything else: not JSON, or a field of the wrong type; the decoder's own words.
    #[error("{0}")]
    Malformed(String),
}
