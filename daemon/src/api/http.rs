//! HTTP endpoints on the client listener: `/health` and `/version`, as etcd serves them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiContext, ETCD_CLUSTER_VERSION, ETCD_VERSION};

pub fn router(ctx: Arc<ApiContext>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .with_state(ctx)
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Healthy when there is a leader and a linearizable read completes in time.
async fn health(State(ctx): State<Arc<ApiContext>>) -> Response {
    let unhealthy = |reason: String| {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "health": "false", "reason": reason }),
        )
    };
    if ctx.node.leader().is_none() {
        return unhealthy("RAFT NO LEADER".into());
    }
    if let Err(e) = ctx.read_barrier().await {
        return unhealthy(format!("RANGE ERROR:{e}"));
    }
    json(
        StatusCode::OK,
        serde_json::json!({ "health": "true", "reason": "" }),
    )
}

async fn version() -> Response {
    json(
        StatusCode::OK,
        serde_json::json!({ "etcdserver": ETCD_VERSION, "etcdcluster": ETCD_CLUSTER_VERSION }),
    )
}
