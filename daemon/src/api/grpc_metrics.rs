//! go-grpc-prometheus's server metrics, which etcd exports and its dashboards chart:
//! `grpc_server_started_total` when a call arrives, `grpc_server_handled_total` with
//! its status code when it ends, and with `--metrics extensive`
//! `grpc_server_handling_seconds`.
//!
//! A call's status is in the response headers when it failed before answering
//! (trailers-only), otherwise in the trailers at the end of the body; streams (Watch,
//! LeaseKeepAlive, Snapshot) are handled when their body ends. A body dropped before
//! its trailers (the client went away) counts as `Canceled`. Only etcd's own methods are
//! labelled, so that requests for made-up paths cannot grow the label sets.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;

use crate::metrics::Metrics;

/// go-grpc-prometheus's `grpc_type` of each of etcd's methods; unary unless listed.
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") => "server_stream",
        _ => "unary",
    }
}

/// etcd's v3 methods, by service.
const METHODS: &[(&str, &[&str])] = &[
    (
        "etcdserverpb.KV",
        &["Range", "Put", "DeleteRange", "Txn", "Compact"],
    ),
    ("etcdserverpb.Watch", &["Watch"]),
    (
        "etcdserverpb.Lease",
        &[
            "LeaseGrant",
            "LeaseRevoke",
            "LeaseKeepAlive",
            "LeaseTimeToLive",
            "LeaseLeases",
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            "MemberAdd",
            "MemberRemove",
            "MemberUpdate",
            "MemberList",
            "MemberPromote",
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            "Alarm",
            "Status",
            "Defragment",
            "Hash",
            "HashKV",
            "Snapshot",
            "MoveLeader",
            "Downgrade",
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
];

/// Service and method of a gRPC path, when it is one of etcd's methods.
fn known_method(path: &str) -> Option<(&'static str, &'static str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let (service, methods) = METHODS.iter().find(|(s, _)| *s == service)?;
    let method = methods.iter().find(|m| **m == method)?;
    Some((service, method))
}

/// gRPC's status code names, as Go spells them in `grpc_code`.
fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "Canceled",
        b"2" => "Unknown",
        b"3" => "InvalidArgument",
        b"4" => "DeadlineExceeded",
        b"5" => "NotFound",
        b"6" => "AlreadyExists",
        b"7" => "PermissionDenied",
        b"8" => "ResourceExhausted",
        b"9" => "FailedPrecondition",
        b"10" => "Aborted",
        b"11" => "OutOfRange",
        b"12" => "Unimplemented",
        b"13" => "Internal",
        b"14" => "Unavailable",
        b"15" => "DataLoss",
        b"16" => "Unauthenticated",
        _ => "Unknown",
    }
}

/// One call, until its status is known.
struct Call {
    metrics: Arc<Metrics>,
    labels: [&'static str; 3],
    started: Instant,
}

impl Call {
    fn handled(self, code: &'static str) {
        let [kind, service, method] = self.labels;
        self.metrics
            .grpc_handled
            .with_label_values(&[kind, service, method, code])
            .inc();
        if let Some(h) = &self.metrics.grpc_handling_seconds {
            h.with_label_values(&self.labels)
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

/// The axum middleware around the gRPC services.
pub async fn count_calls(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let Some((service, method)) = known_method(req.uri().path()) else {
        return next.run(req).await;
    };
    let labels = [grpc_type(service, method), service, method];
    metrics.grpc_started.with_label_values(&labels).inc();
    let call = Call {
        metrics,
        labels,
        started: Instant::now(),
    };
    let response = next.run(req).await;
    if let Some(code) = response.headers().get("grpc-status") {
        call.handled(code_name(code.as_bytes()));
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        Body::new(ObservedBody {
            inner: body,
            call: Some(call),
        }),
    )
}

/// A response body that reports its call's status when the trailers go by.
struct ObservedBody {
    inner: Body,
    call: Option<Call>,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map_or("Unknown", |c| code_name(c.as_bytes()));
                    if let Some(call) = self.call.take() {
                        call.handled(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.take() {
                    call.handled("Unknown");
                }
            }
            Poll::Ready(None) => {
                // tonic always ends with trailers; a body without them broke off.
                if let Some(call) = self.call.take() {
                    call.handled("Unknown");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // The connection went away (a client cancelled a watch, say) before the end.
        if let Some(call) = self.call.take() {
            call.handled("Canceled");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_etcds_methods_are_labelled() {
        assert_eq!(
            known_method("/etcdserverpb.KV/Range"),
            Some(("etcdserverpb.KV", "Range"))
        );
        assert_eq!(grpc_type("etcdserverpb.Watch", "Watch"), "bidi_stream");
        assert_eq!(known_method("/etcdserverpb.KV/Made_Up"), None);
        assert_eq!(known_method("/other.Service/Range"), None);
        assert_eq!(known_method("/v3/kv/range"), None);
        assert_eq!(code_name(b"14"), "Unavailable");
    }
}
