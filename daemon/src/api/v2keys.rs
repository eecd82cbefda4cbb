//! The part of etcd's v2 keys API that etcd's v2 discovery protocol uses, served on the
//! client URLs with `--enable-v2`, so that a qetcd cluster can be the discovery service
//! for etcd and qetcd members (`curl -X PUT …/v2/keys/_etcd/registry/<token>/_config/size
//! -d value=3`, then `--discovery http://<member>/v2/keys/_etcd/registry/<token>`).
//!
//! **Key mapping.** There is no separate v2 store: v2 key `/a/b` *is* v3 key `/a/b` in
//! the replicated key space, so a token can equally be made with `etcdctl put
//! /_etcd/registry/<token>/_config/size 3`, and `etcdctl get --prefix /_etcd/registry/`
//! shows the registrations. Directories are implicit: `/a` is a directory while some
//! key starts with `/a/`. Indexes are revisions: `X-Etcd-Index` is the current revision,
//! `createdIndex`/`modifiedIndex` a key's create and mod revision, and `waitIndex=N`
//! waits for the first change at revision ≥ N (from history when it is already there).
//!
//! **What is served**: `GET` (a key; a directory's children, or its whole subtree with
//! `recursive=true`; `wait=true` with `waitIndex` and `recursive`) and `PUT` with a
//! `value` form field or query parameter, plain (`set`) or with `prevExist=false`
//! (`create`) / `prevExist=true` (`update`). Children whose name starts with `_` are
//! hidden from listings and recursive watches, as in etcd's v2 store. One difference in
//! watch answers: a key's first version is reported as `create` and later ones as
//! `set`, since the v3 history does not keep which v2 request wrote them (etcd says
//! `set` for a plain PUT that created a key). Errors are etcd's
//! v2 JSON (`errorCode`, `message`, `cause`, `index`) with its status codes. Anything
//! else — TTLs, directories made explicitly, `POST`, `DELETE`, compare-and-swap on
//! values — is refused with errorCode 209 or 405, since no discovery client uses it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::ApiContext;
use crate::error::RequestError;
use crate::mvcc::{self, KeyRange, Revisions};
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::request_op::Request as OpRequest;
use crate::proto::etcdserverpb::response_op::Response as OpResponse;
use crate::proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};
use crate::proto::qetcdpb::raft_request::Request as RaftRequest;
use crate::state_machine::Applied;
use crate::watch::history;

const PREFIX: &str = "/v2/keys";
/// History read per step while looking for a watch's event.
const HISTORY_BUDGET: usize = 1 << 20;

pub fn router(ctx: Arc<ApiContext>) -> axum::Router {
    axum::Router::new()
        .route(PREFIX, any(keys))
        .route("/v2/keys/", any(keys))
        .route("/v2/keys/{*key}", any(keys))
        .with_state(ctx)
}

/// etcd's v2 error codes used here, with their messages and HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    KeyNotFound = 100,
    NotFile = 102,
    NodeExist = 105,
    RootReadOnly = 107,
    InvalidField = 209,
    RaftInternal = 300,
    EventIndexCleared = 401,
}

impl Code {
    fn message(self) -> &'static str {
        match self {
            Code::KeyNotFound => "Key not found",
            Code::NotFile => "Not a file",
            Code::NodeExist => "Key already exists",
            Code::RootReadOnly => "Root is read only",
            Code::InvalidField => "Invalid field",
            Code::RaftInternal => "Raft Internal Error",
            Code::EventIndexCleared => "The event in requested index is outdated and cleared",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Code::KeyNotFound => StatusCode::NOT_FOUND,
            Code::NotFile | Code::RootReadOnly => StatusCode::FORBIDDEN,
            Code::NodeExist => StatusCode::PRECONDITION_FAILED,
            Code::RaftInternal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::InvalidField | Code::EventIndexCleared => StatusCode::BAD_REQUEST,
        }
    }
}

struct V2Error {
    code: Code,
    cause: String,
    index: i64,
}

fn v2_error(code: Code, cause: impl Into<String>, index: i64) -> V2Error {
    V2Error {
        code,
        cause: cause.into(),
        index,
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let body = json!({
            "errorCode": self.code as u32,
            "message": self.code.message(),
            "cause": self.cause,
            "index": self.index,
        });
        with_index(self.code.status(), body, self.index)
    }
}

/// A failure of the member itself: etcd's 300, which v2 clients retry.
fn internal(e: RequestError) -> V2Error {
    v2_error(Code::RaftInternal, e.to_string(), 0)
}

fn with_index(status: StatusCode, body: Value, index: i64) -> Response {
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        resp.headers_mut().insert("X-Etcd-Index", v);
    }
    resp
}

/// Query parameters and form fields (the body's first, as Go's `FormValue`).
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>, body: &[u8]) -> Self {
        let mut all: Vec<(String, String)> =
            url::form_urlencoded::parse(body).into_owned().collect();
        all.extend(url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned());
        Params(all)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> Result<bool, V2Error> {
        match self.get(name) {
            None | Some("") | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(v2_error(
                Code::InvalidField,
                format!("invalid value for {name}: {other:?}"),
                0,
            )),
        }
    }
}

/// `/v2/keys/a//b/` → `/a/b` (Go's `path.Clean` on the decoded path).
fn key_of(uri: &Uri) -> String {
    let raw = uri.path().strip_prefix(PREFIX).unwrap_or("");
    let decoded = percent_decode(raw);
    crate::bootstrap::discovery::v2::join_path(&[&decoded])
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The v3 range of a directory's descendants.
fn children_range(dir: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = dir.as_bytes().to_vec();
    if dir != "/" {
        start.push(b'/');
    }
    let mut end = start.clone();
    *end.last_mut().expect("non-empty") += 1;
    (start, end)
}

/// Whether a name below `dir` passes through a hidden (`_`) component.
fn hidden_below(dir: &str, key: &str) -> bool {
    let rest = key.strip_prefix(dir).unwrap_or(key);
    rest.split('/').any(|seg| seg.starts_with('_'))
}

fn leaf(kv: &KeyValue) -> Value {
    json!({
        "key": String::from_utf8_lossy(&kv.key),
        "value": String::from_utf8_lossy(&kv.value),
        "modifiedIndex": kv.mod_revision,
        "createdIndex": kv.create_revision,
    })
}

async fn keys(
    State(ctx): State<Arc<ApiContext>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let params = Params::parse(uri.query(), &body);
    let key = key_of(&uri);
    let result = match method {
        Method::GET => get(&ctx, &key, &params).await,
        Method::PUT => put(&ctx, &key, &params).await,
        _ => {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "GET, PUT")],
                "Method Not Allowed\n",
            )
                .into_response();
        }
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn get(ctx: &Arc<ApiContext>, key: &str, params: &Params) -> Result<Response, V2Error> {
    let recursive = params.flag("recursive")?;
    if params.flag("wait")? {
        let wait_index = match params.get("waitIndex") {
            None | Some("") => None,
            Some(v) => Some(
                v.parse::<i64>()
                    .map_err(|_| v2_error(Code::InvalidField, "invalid value for waitIndex", 0))?,
            ),
        };
        return watch(ctx, key, recursive, wait_index).await;
    }
    ctx.read_barrier().await.map_err(internal)?;
    let key_owned = key.to_string();
    let (node, index) = ctx
        .read(move |conn| {
            let revs = Revisions::load(conn)?;
            let node = match read_node(conn, &key_owned, recursive, revs)? {
                Some(node) => Ok(node),
                None => Err(first_missing(conn, &key_owned, revs)?),
            };
            Ok((node, revs.current))
        })
        .await
        .map_err(internal)?;
    match node {
        Ok(node) => Ok(with_index(
            StatusCode::OK,
            json!({ "action": "get", "node": node }),
            index,
        )),
        // etcd names the first path component that does not exist.
        Err(missing) => Err(v2_error(Code::KeyNotFound, missing, index)),
    }
}

/// The node at `key`: a leaf, a directory with its children, or nothing.
fn read_node(
    conn: &crate::storage::StateTxn<'_>,
    key: &str,
    recursive: bool,
    revs: Revisions,
) -> Result<Option<Value>, RequestError> {
    if key != "/" {
        let single = RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        if let Some(kv) = mvcc::range(conn, &single, revs)?.kvs.first() {
            return Ok(Some(leaf(kv)));
        }
    }
    let (start, end) = children_range(key);
    let below = mvcc::range(
        conn,
        &RangeRequest {
            key: start.clone(),
            range_end: end,
            ..Default::default()
        },
        revs,
    )?;
    if below.kvs.is_empty() && key != "/" {
        return Ok(None);
    }
    Ok(Some(dir_node(key, &below.kvs, recursive, start.len())))
}

/// The shortest prefix of `key` (`/a`, `/a/b`, …) that is neither a key nor a
/// directory: what etcd's v2 store reports as the cause of "Key not found".
fn first_missing(
    conn: &crate::storage::StateTxn<'_>,
    key: &str,
    revs: Revisions,
) -> Result<String, RequestError> {
    let mut prefix = String::new();
    for seg in key.split('/').filter(|s| !s.is_empty()) {
        prefix.push('/');
        prefix.push_str(seg);
        let (start, end) = children_range(&prefix);
        let count = |key: Vec<u8>, range_end: Vec<u8>| {
            mvcc::range(
                conn,
                &RangeRequest {
                    key,
                    range_end,
                    count_only: true,
                    ..Default::default()
                },
                revs,
            )
            .map(|r| r.count)
        };
        if count(prefix.as_bytes().to_vec(), Vec::new())? == 0 && count(start, end)? == 0 {
            return Ok(prefix);
        }
    }
    Ok(key.to_string())
}

/// A directory node built from the keys below it (sorted by key).
fn dir_node(key: &str, kvs: &[KeyValue], recursive: bool, prefix_len: usize) -> Value {
    let mut nodes: Vec<Value> = Vec::new();
    let mut i = 0;
    let (created, modified) = kvs.iter().fold((i64::MAX, 0), |(c, m), kv| {
        (c.min(kv.create_revision), m.max(kv.mod_revision))
    });
    while i < kvs.len() {
        let rest = String::from_utf8_lossy(&kvs[i].key[prefix_len..]).into_owned();
        let name = rest.split('/').next().unwrap_or("").to_string();
        if !rest.contains('/') {
            if !name.starts_with('_') {
                nodes.push(leaf(&kvs[i]));
            }
            i += 1;
            continue;
        }
        // A subdirectory: every following key with the same first component.
        let sub_prefix = format!("{name}/");
        let mut j = i;
        while j < kvs.len() && kvs[j].key[prefix_len..].starts_with(sub_prefix.as_bytes()) {
            j += 1;
        }
        if !name.starts_with('_') {
            let sub_key = if key == "/" {
                format!("/{name}")
            } else {
                format!("{key}/{name}")
            };
            if recursive {
                nodes.push(dir_node(&sub_key, &kvs[i..j], true, sub_key.len() + 1));
            } else {
                let (c, m) = kvs[i..j].iter().fold((i64::MAX, 0), |(c, m), kv| {
                    (c.min(kv.create_revision), m.max(kv.mod_revision))
                });
                nodes.push(json!({
                    "key": sub_key, "dir": true, "modifiedIndex": m, "createdIndex": c,
                }));
            }
        }
        i = j.max(i + 1);
    }
    // As etcd's `nodes,omitempty`.
    let mut node = json!({ "key": key, "dir": true });
    if !nodes.is_empty() {
        node["nodes"] = Value::Array(nodes);
    }
    if key != "/" {
        node["modifiedIndex"] = json!(modified);
        node["createdIndex"] = json!(created);
    }
    node
}

/// `wait=true`: the first change to `key` (or below it, `recursive`) at a revision ≥
/// `wait_index` (or after now): from history if it is there, else when it is committed.
async fn watch(
    ctx: &Arc<ApiContext>,
    key: &str,
    recursive: bool,
    wait_index: Option<i64>,
) -> Result<Response, V2Error> {
    // Subscribe before reading, so that nothing falls between the two.
    let mut sub = ctx.events.subscribe();
    let current = ctx
        .read(|conn| Ok(Revisions::load(conn)?.current))
        .await
        .map_err(internal)?;
    let mut next = wait_index.unwrap_or(current + 1).max(1);
    let range = watch_range(key, recursive);
    let below = if key == "/" {
        "/".to_string()
    } else {
        format!("{key}/")
    };
    let matches = |e: &Event| {
        e.kv.as_ref().is_some_and(|kv| {
            let k = String::from_utf8_lossy(&kv.key);
            k == key || (recursive && k.starts_with(&below) && !hidden_below(key, &k))
        })
    };
    // History first.
    while next <= current {
        let r = range.clone();
        let (events, after) = ctx
            .read(move |conn| history::events(conn, &r, next, current, HISTORY_BUDGET))
            .await
            .map_err(|e| match e {
                RequestError::Compacted => v2_error(
                    Code::EventIndexCleared,
                    format!("the requested history has been cleared [{current}/{next}]"),
                    current,
                ),
                other => internal(other),
            })?;
        if let Some(e) = events.iter().find(|e| matches(e)) {
            return Ok(event_response(ctx, e).await);
        }
        next = after;
    }
    let stopped = || {
        ctx.node
            .status()
            .stopped
            .load(std::sync::atomic::Ordering::Acquire)
    };
    loop {
        let batch = tokio::select! {
            b = sub.rx.recv() => b,
            _ = until_stopped(ctx) => {
                return Err(v2_error(Code::RaftInternal, "member is stopping", current));
            }
        };
        let (first, last, events) = match batch {
            Ok(b) if b.last < next => continue,
            Ok(b) => (b.first, b.last, b.events.clone()),
            Err(RecvError::Lagged(_)) => {
                let now = ctx
                    .read(|conn| Ok(Revisions::load(conn)?.current))
                    .await
                    .map_err(internal)?;
                (next, now, None)
            }
            Err(RecvError::Closed) => {
                return Err(v2_error(Code::RaftInternal, "member is stopping", current));
            }
        };
        let events = match events {
            Some(ev) => ev,
            None => {
                let (r, from) = (range.clone(), next.max(first));
                ctx.read(move |conn| history::events(conn, &r, from, last, usize::MAX))
                    .await
                    .map_err(internal)?
                    .0
            }
        };
        if let Some(e) = events
            .iter()
            .find(|e| history::revision_of(e) >= next && matches(e))
        {
            return Ok(event_response(ctx, e).await);
        }
        next = next.max(last + 1);
        if stopped() {
            return Err(v2_error(Code::RaftInternal, "member is stopping", current));
        }
    }
}

/// Resolves once the Raft node has stopped, so that a long poll never holds up shutdown.
async fn until_stopped(ctx: &ApiContext) {
    let status = ctx.node.status();
    loop {
        let applied = status.applied.notified();
        if status.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        applied.await;
    }
}

fn watch_range(key: &str, recursive: bool) -> KeyRange {
    if !recursive {
        return KeyRange::new(key.as_bytes(), &[]);
    }
    if key == "/" {
        let (start, end) = children_range(key);
        return KeyRange::new(&start, &end);
    }
    // The key itself and everything below it: [key, key/\xff…) is [key, key0).
    let mut end = key.as_bytes().to_vec();
    end.push(b'0');
    KeyRange::new(key.as_bytes(), &end)
}

/// A watch answer as etcd's v2 API gives it, with the replaced value as `prevNode`.
async fn event_response(ctx: &Arc<ApiContext>, e: &Event) -> Response {
    let kv = e.kv.clone().unwrap_or_default();
    let revision = kv.mod_revision;
    let (action, node) = if e.r#type == EventType::Delete as i32 {
        (
            "delete",
            json!({
                "key": String::from_utf8_lossy(&kv.key),
                "modifiedIndex": kv.mod_revision,
                "createdIndex": kv.create_revision,
            }),
        )
    } else if kv.version == 1 {
        ("create", leaf(&kv))
    } else {
        ("set", leaf(&kv))
    };
    let mut body = json!({ "action": action, "node": node });
    let key = kv.key.clone();
    let prev = match e.prev_kv.clone() {
        Some(p) => Some(p),
        None => ctx
            .read(move |conn| history::previous(conn, &key, revision))
            .await
            .ok()
            .flatten(),
    };
    if let Some(p) = prev {
        body["prevNode"] = leaf(&p);
    }
    with_index(StatusCode::OK, body, revision)
}

async fn put(ctx: &Arc<ApiContext>, key: &str, params: &Params) -> Result<Response, V2Error> {
    if key == "/" {
        return Err(v2_error(Code::RootReadOnly, "/", 0));
    }
    for unsupported in ["ttl", "dir", "prevValue", "prevIndex", "refresh"] {
        if params.get(unsupported).is_some_and(|v| !v.is_empty()) {
            return Err(v2_error(
                Code::InvalidField,
                format!("{unsupported} is not supported by qetcd's v2 keys API (discovery subset)"),
                0,
            ));
        }
    }
    let value = params.get("value").unwrap_or("").to_string();
    let prev_exist = match params.get("prevExist") {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            return Err(v2_error(
                Code::InvalidField,
                "invalid value for prevExist",
                0,
            ));
        }
    };
    // A key with keys below it is a directory.
    ctx.read_barrier().await.map_err(internal)?;
    let (start, end) = children_range(key);
    let (is_dir, current) = ctx
        .read(move |conn| {
            let revs = Revisions::load(conn)?;
            let r = mvcc::range(
                conn,
                &RangeRequest {
                    key: start,
                    range_end: end,
                    limit: 1,
                    count_only: true,
                    ..Default::default()
                },
                revs,
            )?;
            Ok((r.count > 0, revs.current))
        })
        .await
        .map_err(internal)?;
    if is_dir {
        return Err(v2_error(Code::NotFile, key, current));
    }
    let put = PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.into_bytes(),
        prev_kv: true,
        ..Default::default()
    };
    let compare = prev_exist.map(|exists| Compare {
        result: if exists {
            CompareResult::Greater
        } else {
            CompareResult::Equal
        } as i32,
        target: CompareTarget::Create as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(TargetUnion::CreateRevision(0)),
        range_end: vec![],
    });
    let txn = TxnRequest {
        compare: compare.into_iter().collect(),
        success: vec![RequestOp {
            request: Some(OpRequest::RequestPut(put)),
        }],
        failure: vec![],
    };
    let resp = match ctx.propose(RaftRequest::Txn(txn)).await {
        Ok(Applied::Txn(r)) => r,
        Ok(other) => {
            return Err(internal(RequestError::Internal(format!(
                "unexpected apply result {other:?}"
            ))));
        }
        Err(RequestError::RequestTooLarge) => {
            return Err(v2_error(
                Code::InvalidField,
                RequestError::RequestTooLarge.to_string(),
                current,
            ));
        }
        Err(e) => return Err(internal(e)),
    };
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    if !resp.succeeded {
        return Err(match prev_exist {
            Some(false) => v2_error(Code::NodeExist, key, revision),
            _ => v2_error(Code::KeyNotFound, key, revision),
        });
    }
    let prev = resp.responses.into_iter().find_map(|r| match r.response {
        Some(OpResponse::ResponsePut(p)) => p.prev_kv,
        _ => None,
    });
    let kv = KeyValue {
        key: key.as_bytes().to_vec(),
        create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
        mod_revision: revision,
        version: prev.as_ref().map_or(1, |p| p.version + 1),
        value: params.get("value").unwrap_or("").as_bytes().to_vec(),
        lease: 0,
    };
    let action = match prev_exist {
        Some(false) => "create",
        Some(true) => "update",
        None => "set",
    };
    let mut body = json!({ "action": action, "node": leaf(&kv) });
    if let Some(p) = &prev {
        body["prevNode"] = leaf(p);
    }
    let status = if prev.is_none() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_index(status, body, revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_cleaned_and_decoded() {
        let uri: Uri = "/v2/keys/_etcd/registry//t%2Fx/".parse().unwrap();
        assert_eq!(key_of(&uri), "/_etcd/registry/t/x");
        let root: Uri = "/v2/keys".parse().unwrap();
        assert_eq!(key_of(&root), "/");
    }

    #[test]
    fn hidden_names_are_those_starting_with_underscore_below_the_watched_dir() {
        assert!(hidden_below("/d", "/d/_config/size"));
        assert!(!hidden_below("/_etcd/registry/t", "/_etcd/registry/t/abc"));
    }

    #[test]
    fn directory_listings_group_children() {
        let kv = |k: &str, rev: i64| KeyValue {
            key: k.as_bytes().to_vec(),
            value: b"v".to_vec(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        };
        let kvs = vec![kv("/d/_config/size", 2), kv("/d/a", 3), kv("/d/s/x", 4)];
        let node = dir_node("/d", &kvs, false, 3);
        let nodes = node["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2, "{node}");
        assert_eq!(nodes[0]["key"], "/d/a");
        assert_eq!(nodes[1]["key"], "/d/s");
        assert_eq!(nodes[1]["dir"], true);
        let deep = dir_node("/d", &kvs, true, 3);
        assert_eq!(deep["nodes"][1]["nodes"][0]["key"], "/d/s/x");
    }
}
