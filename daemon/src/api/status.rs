//! The one place that turns errors into gRPC statuses. Codes and messages are etcd's
//! (its `rpctypes`): clients match on both.

use tonic::{Code, Status};

use crate::error::{JsonRequestError, RequestError};

pub fn to_status(err: RequestError) -> Status {
    use RequestError::*;
    let code = match &err {
        EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
        | RequestTooLarge | InvalidSortOption | MemberBadUrls | UserEmpty | RoleEmpty
        | AuthFailed | PermissionNotGiven | InvalidAuthMgmt => Code::InvalidArgument,
        PermissionDenied => Code::PermissionDenied,
        InvalidAuthToken => Code::Unauthenticated,
        AuthOldRevision | NoPasswordUser | JwtVerifyOnly => Code::Unknown,
        Compacted | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
        NoSpace | TooManyRequests => Code::ResourceExhausted,
        LeaseNotFound | MemberNotFound => Code::NotFound,
        Corrupt => Code::DataLoss,
        NoLeader
        | Timeout
        | Stopped
        | LeaderChanged
        | UnhealthyCluster
        | NotSupportedForLearner => Code::Unavailable,
        NotLeader
        | BadLeaderTransferee
        | NotCapable
        | LeaseExists
        | MemberExists
        | PeerUrlExists
        | TooManyLearners
        | MemberNotLearner
        | LearnerNotReady
        | NotEnoughStartedMembers
        | RootUserNotExist
        | RootRoleNotExist
        | UserAlreadyExist
        | UserNotFound
        | RoleAlreadyExist
        | RoleNotFound
        | RoleNotGranted
        | PermissionNotGranted
        | AuthNotEnabled => Code::FailedPrecondition,
        Internal(detail) => {
            tracing::error!(error = %detail, "internal error serving a request");
            Code::Internal
        }
    };
    Status::new(code, err.to_string())
}

impl From<RequestError> for Status {
    fn from(err: RequestError) -> Self {
        to_status(err)
    }
}

/// A gateway body that does not decode: etcd's gateway answers `InvalidArgument` for a
/// unary RPC's body. (The first message of a client stream is `Unknown` there; the
/// gateway makes that status itself.)
impl From<JsonRequestError> for Status {
    fn from(err: JsonRequestError) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

/// The HTTP status etcd's gateway (grpc-gateway v1) answers for a gRPC code.
pub fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as H;
    match code {
        Code::Ok => H::OK,
        // grpc-gateway's choice for a cancelled call: 408.
        Code::Cancelled => H::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => H::INTERNAL_SERVER_ERROR,
        // etcd 3.5's grpc-gateway answers 400 for FailedPrecondition (3.4's said 412).
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => H::BAD_REQUEST,
        Code::DeadlineExceeded => H::GATEWAY_TIMEOUT,
        Code::NotFound => H::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => H::CONFLICT,
        Code::PermissionDenied => H::FORBIDDEN,
        Code::Unauthenticated => H::UNAUTHORIZED,
        Code::ResourceExhausted => H::TOO_MANY_REQUESTS,
        Code::Unimplemented => H::NOT_IMPLEMENTED,
        Code::Unavailable => H::SERVICE_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_codes_and_texts() {
        let s = to_status(RequestError::Compacted);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = to_status(RequestError::FutureRevision);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision is a future revision"
        );
        let s = to_status(RequestError::DuplicateKey);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "etcdserver: duplicate key given in txn request"
        );
        assert_eq!(
            to_status(RequestError::LeaseNotFound).code(),
            Code::NotFound
        );
        assert_eq!(to_status(RequestError::NoLeader).code(), Code::Unavailable);
        let s = to_status(RequestError::PermissionDenied);
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(s.message(), "etcdserver: permission denied");
        assert_eq!(
            to_status(RequestError::InvalidAuthToken).code(),
            Code::Unauthenticated
        );
        assert_eq!(
            to_status(RequestError::UserNotFound).code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            to_status(RequestError::RequestTooLarge).message(),
            "etcdserver: request is too large"
        );
    }
}
