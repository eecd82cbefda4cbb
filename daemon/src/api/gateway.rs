//! etcd's v3 HTTP/JSON gateway: `POST /v3/kv/range`, `/v3/watch`, `/v3/lease/grant`...
//! with proto3 JSON bodies, for the clients that do not speak gRPC (Patroni's `etcd3`
//! mode, etcd3gw and tooz, API gateways).
//!
//! One implementation of each RPC, two encodings: a request body is decoded into the
//! very message the gRPC service takes and handed to the same service object, and its
//! answer is encoded back. The JSON mapping is not written by hand: prost-reflect reads
//! the descriptors of our `.proto` files (compiled by `build.rs`) and does proto3 JSON,
//! configured as etcd's gateway (grpc-gateway v1 with `OrigName`) writes it — the
//! `.proto` field names (`create_revision`, `ID`, `dbSize`), 64-bit integers as strings,
//! default values left out, bytes in base64, enums by name. Unknown fields are ignored,
//! as Go's decoder ignores them.
//!
//! Streams follow grpc-gateway too: the body of a client stream (watch, lease
//! keep-alive) is a sequence of JSON objects, and the answer is one
//! `{"result":{...}}` object per line. A watch stays open after the body ends, until
//! the client goes away; a keep-alive stream ends once its requests are answered.
//!
//! The `Authorization` header is passed to the service as gRPC metadata `token`, where
//! the gRPC API carries a client's auth token, so auth works the same on both.
//! etcd 3.4 and 3.5 both answer under `/v3/` and `/v3beta/` (not `/v3alpha/`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::codec::Codec;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Status, Streaming};

use super::{ApiContext, cluster, kv, lease, maintenance, status, watch};
use crate::error::{JsonRequestError, RequestError};
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::watch_server::Watch;

/// The API prefixes etcd's gateway answers under.
const PREFIXES: [&str; 2] = ["/v3", "/v3beta"];
/// Requests of one client stream decoded ahead of the service reading them.
const INBOUND_QUEUE: usize = 16;

static DESCRIPTORS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(
        include_bytes!(concat!(env!("OUT_DIR"), "/etcd_api_descriptors.bin")).as_slice(),
    )
    .expect("build.rs wrote the descriptors of the protos this binary was built from")
});

/// The gateway's routes, for every client listener.
pub fn router(ctx: Arc<ApiContext>) -> axum::Router {
    let gateway = Arc::new(Gateway {
        kv: kv::KvService::new(ctx.clone()),
        watch: watch::WatchService::new(ctx.clone(), ctx.watch_progress_interval),
        lease: lease::LeaseService::new(ctx.clone()),
        cluster: cluster::ClusterService::new(ctx.clone()),
        maintenance: maintenance::MaintenanceService::new(ctx.clone()),
        auth: Arc::new(super::auth::AuthService::new(ctx.clone())),
        ctx,
    });
    let mut router = axum::Router::new();
    for prefix in PREFIXES {
        router = router.route(&format!("{prefix}/{{*rpc}}"), any(serve));
    }
    // etcd serves no `/v3alpha/`: a plain 404 there, rather than the empty answer
    // the gRPC router gives a path it does not know.
    router
        .route(
            "/v3alpha/{*rpc}",
            any(|| async { plain(StatusCode::NOT_FOUND, "404 page not found\n") }),
        )
        .with_state(gateway)
}

/// The gRPC service objects the gateway calls.
struct Gateway {
    ctx: Arc<ApiContext>,
    kv: kv::KvService,
    watch: watch::WatchService,
    lease: lease::LeaseService,
    cluster: cluster::ClusterService,
    maintenance: maintenance::MaintenanceService,
    auth: Arc<dyn Auth>,
}

/// Every RPC the gateway serves, by its path under the prefix (etcd's
/// `google.api.http` bindings, including their additional `/v3/kv/lease/...` ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rpc {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
    Watch,
    LeaseGrant,
    LeaseRevoke,
    LeaseKeepAlive,
    LeaseTimeToLive,
    LeaseLeases,
    MemberAdd,
    MemberRemove,
    MemberUpdate,
    MemberList,
    MemberPromote,
    Alarm,
    Status,
    Defragment,
    Hash,
    Snapshot,
    MoveLeader,
    Downgrade,
    AuthEnable,
    AuthDisable,
    AuthStatus,
    Authenticate,
    UserAdd,
    UserGet,
    UserList,
    UserDelete,
    UserChangePassword,
    UserGrantRole,
    UserRevokeRole,
    RoleAdd,
    RoleGet,
    RoleList,
    RoleDelete,
    RoleGrantPermission,
    RoleRevokePermission,
}

impl Rpc {
    /// The RPC bound to `path` (after the prefix, without its leading `/`). etcd binds
    /// both Hash and HashKV to `maintenance/hash`, where Hash wins; so does this.
    fn from_path(path: &str) -> Option<Rpc> {
        use Rpc::*;
        Some(match path {
            "kv/range" => Range,
            "kv/put" => Put,
            "kv/deleterange" => DeleteRange,
            "kv/txn" => Txn,
            "kv/compaction" => Compact,
            "watch" => Watch,
            "lease/grant" => LeaseGrant,
            "lease/revoke" | "kv/lease/revoke" => LeaseRevoke,
            "lease/keepalive" => LeaseKeepAlive,
            "lease/timetolive" | "kv/lease/timetolive" => LeaseTimeToLive,
            "lease/leases" | "kv/lease/leases" => LeaseLeases,
            "cluster/member/add" => MemberAdd,
            "cluster/member/remove" => MemberRemove,
            "cluster/member/update" => MemberUpdate,
            "cluster/member/list" => MemberList,
            "cluster/member/promote" => MemberPromote,
            "maintenance/alarm" => Alarm,
            "maintenance/status" => Status,
            "maintenance/defragment" => Defragment,
            "maintenance/hash" => Hash,
            "maintenance/snapshot" => Snapshot,
            "maintenance/transfer-leadership" => MoveLeader,
            "maintenance/downgrade" => Downgrade,
            "auth/enable" => AuthEnable,
            "auth/disable" => AuthDisable,
            "auth/status" => AuthStatus,
            "auth/authenticate" => Authenticate,
            "auth/user/add" => UserAdd,
            "auth/user/get" => UserGet,
            "auth/user/list" => UserList,
            "auth/user/delete" => UserDelete,
            "auth/user/changepw" => UserChangePassword,
            "auth/user/grant" => UserGrantRole,
            "auth/user/revoke" => UserRevokeRole,
            "auth/role/add" => RoleAdd,
            "auth/role/get" => RoleGet,
            "auth/role/list" => RoleList,
            "auth/role/delete" => RoleDelete,
            "auth/role/grant" => RoleGrantPermission,
            "auth/role/revoke" => RoleRevokePermission,
            _ => return None,
        })
    }

    /// The gRPC method path of the RPC, for the rules written in its terms (learners).
    fn grpc_path(self) -> &'static str {
        use Rpc::*;
        match self {
            Range => "/etcdserverpb.KV/Range",
            Status => "/etcdserverpb.Maintenance/Status",
            Snapshot => "/etcdserverpb.Maintenance/Snapshot",
            // Only the three above matter to the learner rule; the rest are refused.
            _ => "",
        }
    }
}

async fn serve(
    State(gw): State<Arc<Gateway>>,
    Path(rpc): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(rpc) = Rpc::from_path(&rpc) else {
        return plain(StatusCode::NOT_FOUND, "Not Found\n");
    };
    if method == Method::OPTIONS {
        // A browser's CORS preflight: etcd answers it with its CORS headers.
        let mut response = StatusCode::OK.into_response();
        set_gateway_headers(response.headers_mut());
        response.headers_mut().remove(header::CONTENT_TYPE);
        return response;
    }
    if method != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    }
    // etcd's learner rule, as the gRPC side applies it (serializable ranges are checked
    // by the KV service itself).
    if gw.ctx.node.is_learner() && !super::learner_may_call(rpc.grpc_path()) {
        return error_response(&RequestError::NotSupportedForLearner.into());
    }
    let call = Call {
        gw: &gw,
        body,
        token: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| MetadataValue::try_from(v.as_bytes()).ok()),
    };
    gw.dispatch(rpc, call).await
}

/// One HTTP request on its way to a service.
struct Call<'a> {
    gw: &'a Gateway,
    body: Body,
    /// The `Authorization` header, as gRPC metadata.
    token: Option<MetadataValue<Ascii>>,
}

impl Gateway {
    fn auth(&self) -> Result<&dyn Auth, Status> {
        Ok(self.auth.as_ref())
    }

    async fn dispatch(&self, rpc: Rpc, call: Call<'_>) -> Response {
        use Rpc::*;
        match rpc {
            Range => call.unary(|r| self.kv.range(r)).await,
            Put => call.unary(|r| self.kv.put(r)).await,
            DeleteRange => call.unary(|r| self.kv.delete_range(r)).await,
            Txn => call.unary(|r| self.kv.txn(r)).await,
            Compact => call.unary(|r| self.kv.compact(r)).await,
            Watch => call.bidi(true, |r| self.watch.watch(r)).await,
            LeaseGrant => call.unary(|r| self.lease.lease_grant(r)).await,
            LeaseRevoke => call.unary(|r| self.lease.lease_revoke(r)).await,
            LeaseKeepAlive => call.bidi(false, |r| self.lease.lease_keep_alive(r)).await,
            LeaseTimeToLive => call.unary(|r| self.lease.lease_time_to_live(r)).await,
            LeaseLeases => call.unary(|r| self.lease.lease_leases(r)).await,
            MemberAdd => call.unary(|r| self.cluster.member_add(r)).await,
            MemberRemove => call.unary(|r| self.cluster.member_remove(r)).await,
            MemberUpdate => call.unary(|r| self.cluster.member_update(r)).await,
            MemberList => call.unary(|r| self.cluster.member_list(r)).await,
            MemberPromote => call.unary(|r| self.cluster.member_promote(r)).await,
            Alarm => call.unary(|r| self.maintenance.alarm(r)).await,
            Status => call.unary(|r| self.maintenance.status(r)).await,
            Defragment => call.unary(|r| self.maintenance.defragment(r)).await,
            Hash => call.unary(|r| self.maintenance.hash(r)).await,
            Snapshot => call.server_stream(|r| self.maintenance.snapshot(r)).await,
            MoveLeader => call.unary(|r| self.maintenance.move_leader(r)).await,
            Downgrade => call.unary(|r| self.maintenance.downgrade(r)).await,
            AuthEnable => {
                call.unary(|r| async { self.auth()?.auth_enable(r).await })
                    .await
            }
            AuthDisable => {
                call.unary(|r| async { self.auth()?.auth_disable(r).await })
                    .await
            }
            AuthStatus => {
                call.unary(|r| async { self.auth()?.auth_status(r).await })
                    .await
            }
            Authenticate => {
                call.unary(|r| async { self.auth()?.authenticate(r).await })
                    .await
            }
            UserAdd => {
                call.unary(|r| async { self.auth()?.user_add(r).await })
                    .await
            }
            UserGet => {
                call.unary(|r| async { self.auth()?.user_get(r).await })
                    .await
            }
            UserList => {
                call.unary(|r| async { self.auth()?.user_list(r).await })
                    .await
            }
            UserDelete => {
                call.unary(|r| async { self.auth()?.user_delete(r).await })
                    .await
            }
            UserChangePassword => {
                call.unary(|r| async { self.auth()?.user_change_password(r).await })
                    .await
            }
            UserGrantRole => {
                call.unary(|r| async { self.auth()?.user_grant_role(r).await })
                    .await
            }
            UserRevokeRole => {
                call.unary(|r| async { self.auth()?.user_revoke_role(r).await })
                    .await
            }
            RoleAdd => {
                call.unary(|r| async { self.auth()?.role_add(r).await })
                    .await
            }
            RoleGet => {
                call.unary(|r| async { self.auth()?.role_get(r).await })
                    .await
            }
            RoleList => {
                call.unary(|r| async { self.auth()?.role_list(r).await })
                    .await
            }
            RoleDelete => {
                call.unary(|r| async { self.auth()?.role_delete(r).await })
                    .await
            }
            RoleGrantPermission => {
                call.unary(|r| async { self.auth()?.role_grant_permission(r).await })
                    .await
            }
            RoleRevokePermission => {
                call.unary(|r| async { self.auth()?.role_revoke_permission(r).await })
                    .await
            }
        }
    }
}

impl Call<'_> {
    /// A request-response RPC: the body's first JSON object is the request (an empty
    /// body is the empty request, as in etcd's gateway).
    async fn unary<Req, Resp, Fut>(self, rpc: impl FnOnce(tonic::Request<Req>) -> Fut) -> Response
    where
        Req: Message + Name + Default,
        Resp: Message + Name,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let Call { gw, body, token } = self;
        let outcome = async {
            let message: Req = decode_first(&body_bytes(gw, body).await?)?;
            let response = rpc(with_token(&token, message)).await?;
            encode(response.get_ref())
        }
        .await;
        match outcome {
            Ok(json) => json_response(StatusCode::OK, json),
            Err(status) => error_response(&status),
        }
    }

    /// A server stream (Snapshot): one request, answers one per line.
    async fn server_stream<Req, Resp, S, Fut>(
        self,
        rpc: impl FnOnce(tonic::Request<Req>) -> Fut,
    ) -> Response
    where
        Req: Message + Name + Default,
        Resp: Message + Name,
        S: Stream<Item = Result<Resp, Status>> + Send + 'static,
        Fut: Future<Output = Result<tonic::Response<S>, Status>>,
    {
        let Call { gw, body, token } = self;
        let outcome = async {
            let message: Req = decode_first(&body_bytes(gw, body).await?)?;
            rpc(with_token(&token, message)).await
        }
        .await;
        match outcome {
            Ok(answers) => stream_response(answers.into_inner(), None),
            Err(status) => error_response(&status),
        }
    }

    /// A bidirectional stream (Watch, LeaseKeepAlive): the body's JSON objects, read as
    /// they arrive, are the requests. `hold_open` keeps the request side open after the
    /// body ends, until the client goes away (a watch); otherwise the stream ends once
    /// the service has answered what was asked.
    async fn bidi<Req, Resp, S, Fut>(
        self,
        hold_open: bool,
        rpc: impl FnOnce(tonic::Request<Streaming<Req>>) -> Fut,
    ) -> Response
    where
        Req: Message + Name + Default + Send + 'static,
        Resp: Message + Name,
        S: Stream<Item = Result<Resp, Status>> + Send + 'static,
        Fut: Future<Output = Result<tonic::Response<S>, Status>>,
    {
        let Call { gw, body, token } = self;
        let mut requests = JsonObjects::new(body, request_limit(gw));
        // etcd's gateway reads the first request before it answers: a bad one is an
        // error response (code Unknown, as grpc-gateway reports a failed stream send).
        let first = match requests.next::<Req>().await {
            Some(Err(e)) => return error_response(&Status::unknown(e.to_string())),
            Some(Ok(first)) => Some(first),
            None => None,
        };
        let (frames, inbound) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(INBOUND_QUEUE);
        let (client_gone, mut gone) = oneshot::channel::<()>();
        if let Some(first) = first {
            frames
                .try_send(Ok(Frame::data(grpc_frame(&first))))
                .expect("a new channel has room");
        }
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = requests.next::<Req>() => match next {
                        Some(Ok(request)) => {
                            if frames.send(Ok(Frame::data(grpc_frame(&request)))).await.is_err() {
                                return;
                            }
                        }
                        // A later request that does not decode ends the requests, as a
                        // broken request stream does in grpc-gateway.
                        Some(Err(_)) | None => break,
                    },
                    _ = &mut gone => return,
                }
            }
            if hold_open {
                let _ = gone.await;
            }
            drop(frames);
        });
        let decoder = tonic_prost::ProstCodec::<Req, Req>::default().decoder();
        let inbound = Streaming::new_request(
            decoder,
            StreamBody::new(ReceiverStream::new(inbound)),
            None,
            None,
        );
        match rpc(with_token(&token, inbound)).await {
            Ok(answers) => stream_response(answers.into_inner(), Some(client_gone)),
            Err(status) => error_response(&status),
        }
    }
}

/// A gRPC request carrying the caller's `Authorization` header as metadata `token`.
fn with_token<T>(token: &Option<MetadataValue<Ascii>>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("token", token.clone());
    }
    request
}

/// Bytes a request may take: what a gRPC request may.
fn request_limit(gw: &Gateway) -> usize {
    gw.ctx.max_request_bytes + super::GRPC_OVERHEAD_BYTES
}

/// The whole body of a unary request, refused past the size a gRPC request may have.
async fn body_bytes(gw: &Gateway, body: Body) -> Result<Bytes, Status> {
    axum::body::to_bytes(body, request_limit(gw))
        .await
        .map_err(|_| RequestError::RequestTooLarge.into())
}

/// Reads the JSON objects of a client stream out of a request body as they arrive.
struct JsonObjects {
    body: Body,
    buffered: Vec<u8>,
    ended: bool,
    /// Bytes one request may take.
    limit: usize,
}

impl JsonObjects {
    fn new(body: Body, limit: usize) -> Self {
        JsonObjects {
            body,
            buffered: Vec::new(),
            ended: false,
            limit,
        }
    }

    /// The next request, or None when the body has ended.
    async fn next<T: Message + Name + Default>(&mut self) -> Option<Result<T, JsonRequestError>> {
        loop {
            let mut values = serde_json::Deserializer::from_slice(&self.buffered)
                .into_iter::<serde_json::Value>();
            match values.next() {
                Some(Ok(value)) => {
                    let used = values.byte_offset();
                    self.buffered.drain(..used);
                    return Some(decode_value(value));
                }
                Some(Err(e)) if !e.is_eof() || self.ended => return Some(Err(json_error(e))),
                // Only whitespace, or an object not complete yet.
                _ if self.ended => return None,
                _ if self.buffered.len() > self.limit => {
                    return Some(Err(JsonRequestError::Malformed(
                        RequestError::RequestTooLarge.to_string(),
                    )));
                }
                _ => {}
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffered.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) | None => self.ended = true,
            }
        }
    }
}

fn descriptor(full_name: &str) -> Result<prost_reflect::MessageDescriptor, Status> {
    DESCRIPTORS
        .get_message_by_name(full_name)
        .ok_or_else(|| Status::internal(format!("no descriptor for {full_name}")))
}

/// The first JSON object of a body as message `T`; an empty body is `T`'s default.
fn decode_first<T: Message + Name + Default>(body: &[u8]) -> Result<T, JsonRequestError> {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>();
    match values.next() {
        None => Ok(T::default()),
        Some(Ok(value)) => decode_value(value),
        Some(Err(e)) => Err(json_error(e)),
    }
}

fn decode_value<T: Message + Name + Default>(
    value: serde_json::Value,
) -> Result<T, JsonRequestError> {
    let desc = descriptor(&T::full_name())
        .map_err(|s| JsonRequestError::Malformed(s.message().to_string()))?;
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let dynamic =
        DynamicMessage::deserialize_with_options(desc, value, &options).map_err(json_error)?;
    T::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| JsonRequestError::Malformed(e.to_string()))
}

/// The JSON etcd's gateway writes for `message`.
fn encode<T: Message + Name>(message: &T) -> Result<Vec<u8>, Status> {
    let desc = descriptor(&T::full_name())?;
    let dynamic = DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
        .map_err(|e| Status::internal(format!("re-decoding an answer: {e}")))?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    let mut out = Vec::new();
    dynamic
        .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &options)
        .map_err(|e| Status::internal(format!("encoding an answer as JSON: {e}")))?;
    Ok(out)
}

/// Go's words for a body that does not decode. The base64 decoder's error
/// ("invalid base64: Invalid symbol 64, offset 0.") becomes Go's "illegal base64 data
/// at input byte 0".
fn json_error(e: serde_json::Error) -> JsonRequestError {
    if e.is_eof() {
        return JsonRequestError::Truncated;
    }
    let text = e.to_string();
    let Some(base64_error) = text.strip_prefix("invalid base64: ") else {
        return JsonRequestError::Malformed(text);
    };
    if let Some(rest) = base64_error.split("offset ").nth(1)
        && let Some(offset) = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
    {
        return JsonRequestError::BadBase64 { offset };
    }
    // A bad length or padding.
    JsonRequestError::BadBase64 { offset: 0 }
}

/// One message in gRPC's length-prefixed framing, for the service's request stream.
fn grpc_frame<T: Message>(message: &T) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message
        .encode(&mut buf)
        .expect("the buffer was sized for the message");
    buf.freeze()
}

/// A streamed answer: `{"result":...}` per message, one per line; an error ends it
/// with grpc-gateway's `{"error":{...}}` line. `client_gone` is dropped with the
/// body, which tells the request side the client went away.
fn stream_response<Resp, S>(answers: S, client_gone: Option<oneshot::Sender<()>>) -> Response
where
    Resp: Message + Name,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    // An error is the last line, as in grpc-gateway.
    let failed = Arc::new(AtomicBool::new(false));
    let failed_seen = failed.clone();
    let lines = answers
        .take_while(move |_| !failed_seen.load(Ordering::Relaxed))
        .map(move |answer| {
            failed.store(answer.is_err(), Ordering::Relaxed);
            let _held_until_the_body_is_dropped = &client_gone;
            let line = match answer.and_then(|m| encode(&m)) {
                Ok(json) => {
                    let mut line = Vec::with_capacity(json.len() + 12);
                    line.extend_from_slice(b"{\"result\":");
                    line.extend_from_slice(&json);
                    line.extend_from_slice(b"}\n");
                    line
                }
                Err(status) => {
                    let http = status::http_status(status.code());
                    let mut line = serde_json::json!({ "error": {
                        "grpc_code": status.code() as i32,
                        "http_code": http.as_u16(),
                        "message": status.message(),
                        "http_status": http.canonical_reason().unwrap_or(""),
                    }})
                    .to_string()
                    .into_bytes();
                    line.push(b'\n');
                    line
                }
            };
            Ok::<_, Infallible>(Bytes::from(line))
        });
    let mut response = Response::new(Body::from_stream(lines));
    set_gateway_headers(response.headers_mut());
    response
}

fn json_response(status: StatusCode, json: Vec<u8>) -> Response {
    let mut response = (status, json).into_response();
    set_gateway_headers(response.headers_mut());
    response
}

/// etcd's gateway error body: the message twice (as `error` and `message`) and the
/// gRPC code, under the HTTP status grpc-gateway gives that code. Written in etcd
/// 3.5's key order (serde_json's maps would sort the keys).
fn error_response(status: &Status) -> Response {
    let message = serde_json::Value::from(status.message()).to_string();
    let body = format!(
        r#"{{"error":{message},"code":{},"message":{message}}}"#,
        status.code() as i32
    );
    json_response(status::http_status(status.code()), body.into_bytes())
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut response = (status, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The content type and the CORS headers etcd's gateway sends.
fn set_gateway_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
    use crate::proto::mvccpb::KeyValue;

    #[test]
    fn answers_use_proto_names_string_int64_and_omit_defaults() {
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 0,
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 3,
                version: 1,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        let json: serde_json::Value = serde_json::from_slice(&encode(&resp).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "header": {"cluster_id": "1", "member_id": "2", "revision": "3"},
                "kvs": [{"key": "Zm9v", "create_revision": "2", "mod_revision": "3",
                         "version": "1", "value": "YmFy"}],
                "count": "1"
            })
        );
    }

    #[test]
    fn requests_take_strings_or_numbers_and_ignore_unknown_fields() {
        let req: RangeRequest = decode_first(
            br#"{"key":"Zm9v","limit":"5","revision":7,"sort_order":"DESCEND","x":1}"#,
        )
        .unwrap();
        assert_eq!(req.key, b"foo");
        assert_eq!((req.limit, req.revision, req.sort_order), (5, 7, 2));
        let empty: RangeRequest = decode_first(b"").unwrap();
        assert_eq!(empty, RangeRequest::default());
    }

    #[test]
    fn bad_bodies_get_gos_texts() {
        let err = decode_first::<RangeRequest>(br#"{"key":"Zm9v"#).unwrap_err();
        assert_eq!(err.to_string(), "unexpected EOF");
        let err = decode_first::<RangeRequest>(br#"{"key":"@@@"}"#).unwrap_err();
        assert_eq!(err.to_string(), "illegal base64 data at input byte 0");
    }

    #[test]
    fn the_authorization_header_becomes_the_token_metadata() {
        let token = MetadataValue::try_from("abc.123").ok();
        let request = with_token(&token, ());
        assert_eq!(
            request
                .metadata()
                .get("token")
                .and_then(|v| v.to_str().ok()),
            Some("abc.123")
        );
        assert!(with_token(&None, ()).metadata().get("token").is_none());
    }

    #[test]
    fn paths_are_etcds_bindings() {
        assert_eq!(Rpc::from_path("kv/lease/revoke"), Some(Rpc::LeaseRevoke));
        assert_eq!(
            Rpc::from_path("lease/timetolive"),
            Some(Rpc::LeaseTimeToLive)
        );
        assert_eq!(Rpc::from_path("maintenance/hashkv"), None);
        assert_eq!(Rpc::from_path("kv/nope"), None);
    }
}
