//! HTTP endpoints beside the gRPC services, as etcd 3.5 serves them: `/health`,
//! `/livez` and `/readyz` (with their per-check sub-paths), `/version` and `/metrics`
//! (see `crate::metrics`). The same
//! router serves `--listen-metrics-urls` (see `server::metrics_listener`).
//!
//! `/health` answers JSON: 503 `{"health":"false","reason":R}` naming the first
//! raised alarm (`ALARM NOSPACE`, `ALARM CORRUPT`), a missing leader
//! (`RAFT NO LEADER`) or a failed read (`RANGE ERROR:<err>`); `?exclude=<ALARM>`
//! ignores an alarm, `?serializable=true` skips the leader check and reads locally.
//! `/livez` and `/readyz` answer text: `ok` with 200, or `[-]<check> failed: <err>`
//! lines with 503; `?verbose` lists every check, `?exclude=<check>` skips one. Only
//! GET is served; anything else is 405 with `Allow: GET`, as in etcd.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use super::{ApiContext, ETCD_CLUSTER_VERSION, ETCD_VERSION};
use crate::error::RequestError;
use crate::proto::etcdserverpb::AlarmType;
use crate::state_machine::alarm_name;

pub fn router(ctx: Arc<ApiContext>) -> axum::Router {
    axum::Router::new()
        .route("/health", any(health))
        .route("/livez", any(livez))
        .route("/livez/{check}", any(livez))
        .route("/readyz", any(readyz))
        .route("/readyz/{check}", any(readyz))
        .route("/version", any(version))
        .route("/metrics", any(metrics))
        .with_state(ctx)
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut text = body.to_string();
    if status != StatusCode::OK {
        // Go's http.Error, which etcd answers failures with, ends the body in a newline.
        text.push('\n');
    }
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET")],
        "Method Not Allowed\n",
    )
        .into_response()
}

/// The values of a query parameter that may repeat (`exclude=a&exclude=b`).
fn query_values(req: &Request, name: &str) -> Vec<String> {
    let query = req.uri().query().unwrap_or("");
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn query_has(req: &Request, name: &str) -> bool {
    let query = req.uri().query().unwrap_or("");
    url::form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == name)
}

async fn health(State(ctx): State<Arc<ApiContext>>, req: Request) -> Response {
    if req.method() != Method::GET {
        return method_not_allowed();
    }
    let excluded = query_values(&req, "exclude");
    let serializable = query_values(&req, "serializable")
        .first()
        .map(String::as_str)
        == Some("true");
    let unhealthy = |reason: String| {
        tracing::warn!(reason = %reason, "serving /health false");
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "health": "false", "reason": reason }),
        )
    };
    for alarm in ctx.node.status().alarms() {
        let name = alarm_name(alarm.alarm);
        if excluded.iter().any(|e| e == name) {
            continue;
        }
        let reason = match name {
            "NOSPACE" | "CORRUPT" => format!("ALARM {name}"),
            _ => "ALARM UNKNOWN".to_string(),
        };
        return unhealthy(reason);
    }
    if !serializable && ctx.node.leader().is_none() {
        return unhealthy("RAFT NO LEADER".into());
    }
    if let Err(e) = read_check(&ctx, serializable).await {
        return unhealthy(format!("RANGE ERROR:{e}"));
    }
    json(
        StatusCode::OK,
        serde_json::json!({ "health": "true", "reason": "" }),
    )
}

/// A one-key read, as etcd's health checks do: linearizable unless `serializable`.
async fn read_check(ctx: &ApiContext, serializable: bool) -> Result<(), RequestError> {
    if !serializable {
        ctx.read_barrier().await?;
    }
    ctx.read(|conn| {
        crate::mvcc::Revisions::load(conn)?;
        Ok(())
    })
    .await
}

/// The checks of `/livez` and `/readyz`, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
    NonLearner,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::NonLearner => "non_learner",
        }
    }

    async fn run(self, ctx: &ApiContext) -> Result<(), String> {
        match self {
            Check::DataCorruption => {
                let corrupt = AlarmType::Corrupt as i32;
                if ctx
                    .node
                    .status()
                    .alarms()
                    .iter()
                    .any(|a| a.alarm == corrupt)
                {
                    return Err("alarm activated: CORRUPT".into());
                }
                Ok(())
            }
            Check::SerializableRead => read_check(ctx, true).await.map_err(|e| e.to_string()),
            Check::LinearizableRead => read_check(ctx, false).await.map_err(|e| e.to_string()),
            Check::NonLearner if ctx.node.is_learner() => Err("not supported for learner".into()),
            Check::NonLearner => Ok(()),
        }
    }
}

const LIVEZ: &[Check] = &[Check::SerializableRead];
const READYZ: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
    Check::NonLearner,
];

async fn livez(State(ctx): State<Arc<ApiContext>>, req: Request) -> Response {
    run_checks(&ctx, "/livez", LIVEZ, req).await
}

async fn readyz(State(ctx): State<Arc<ApiContext>>, req: Request) -> Response {
    run_checks(&ctx, "/readyz", READYZ, req).await
}

/// etcd's check registry: the root path runs every check not excluded, a sub-path
/// (`/readyz/linearizable_read`) runs that one.
async fn run_checks(ctx: &ApiContext, root: &str, checks: &[Check], req: Request) -> Response {
    if req.method() != Method::GET {
        return method_not_allowed();
    }
    let path = req.uri().path();
    let selected: Vec<Check> = match path.strip_prefix(root).and_then(|p| p.strip_prefix('/')) {
        Some(one) => match checks.iter().find(|c| c.name() == one) {
            Some(c) => vec![*c],
            None => return (StatusCode::NOT_FOUND, "404 page not found\n").into_response(),
        },
        None => {
            let excluded = query_values(&req, "exclude");
            let unknown: Vec<&String> = excluded
                .iter()
                .filter(|e| !checks.iter().any(|c| c.name() == e.as_str()))
                .collect();
            if !unknown.is_empty() {
                tracing::warn!(missing_health_checks = ?unknown, "some health checks cannot be excluded");
            }
            checks
                .iter()
                .filter(|c| !excluded.iter().any(|e| e == c.name()))
                .copied()
                .collect()
        }
    };
    let mut report = String::new();
    let mut failed = false;
    for check in selected {
        match check.run(ctx).await {
            Ok(()) => report.push_str(&format!("[+]{} ok\n", check.name())),
            Err(e) => {
                failed = true;
                report.push_str(&format!("[-]{} failed: {e}\n", check.name()));
            }
        }
    }
    if failed {
        tracing::error!(path, reason = %report, "Health check error");
        // Go's http.Error: the text and a newline.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{report}\n"),
        )
            .into_response();
    }
    let body = if query_has(&req, "verbose") {
        format!("{report}ok\n")
    } else {
        "ok\n".to_string()
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn version(req: Request) -> Response {
    if req.method() != Method::GET {
        return method_not_allowed();
    }
    json(
        StatusCode::OK,
        serde_json::json!({ "etcdserver": ETCD_VERSION, "etcdcluster": ETCD_CLUSTER_VERSION }),
    )
}

/// Prometheus's text format. The figures that cost a query (database pages in use, the
/// number of keys) are read now, on a reading connection, rather than kept by the Raft
/// thread.
async fn metrics(State(ctx): State<Arc<ApiContext>>, req: Request) -> Response {
    if req.method() != Method::GET {
        return method_not_allowed();
    }
    let figures = ctx
        .read(|conn| {
            let (total, in_use) = crate::mvcc::db_size(conn)?;
            let keys = crate::storage::keyspace::live_keys(conn);
            Ok((total, in_use, keys))
        })
        .await;
    match figures {
        Ok((total, in_use, keys)) => {
            ctx.metrics.db_total_size.set(total);
            ctx.metrics.db_total_size_in_use.set(in_use);
            ctx.metrics.keys_total.set(keys);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read database figures for /metrics"),
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        ctx.metrics.render(),
    )
        .into_response()
}
