//! The client listeners: one gRPC + HTTP server per `--listen-client-urls` entry, and
//! one HTTP-only server per `--listen-metrics-urls` entry (`/health`, `/livez`,
//! `/readyz`, `/version`, `/metrics`),
//! TLS where the URL says `https`, all stopped together.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ServerError;
use crate::api::{self, ApiContext};

pub struct ClientListeners {
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl ClientListeners {
    /// Binds every URL (failing on the first that cannot be bound) and serves `ctx`.
    pub async fn serve(
        urls: &[url::Url],
        metrics_urls: &[url::Url],
        tls: Option<Arc<rustls::ServerConfig>>,
        ctx: Arc<ApiContext>,
    ) -> Result<Self, ServerError> {
        let (stop, stop_rx) = watch::channel(false);
        let mut servers = Vec::new();
        let listeners = urls
            .iter()
            .map(|u| (u, false))
            .chain(metrics_urls.iter().map(|u| (u, true)));
        for (url, metrics_only) in listeners {
            let addr = listen_addr(url);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?;
            let tls = match url.scheme() {
                "https" | "unixs" => tls.clone(),
                _ => None,
            };
            let routes = if metrics_only {
                tracing::info!(address = %addr, "serving metrics and health endpoints");
                api::http_routes(ctx.clone())
            } else {
                if tls.is_some() {
                    tracing::info!(address = %addr, "serving client traffic securely");
                } else {
                    tracing::info!(address = %addr, "serving client traffic insecurely; this is strongly discouraged!");
                }
                api::routes(ctx.clone())
            };
            let mut stop = stop_rx.clone();
            servers.push(tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .accept_http1(true)
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(
                        api::client_listener::accept(listener, tls),
                        async move {
                            let _ = stop.wait_for(|s| *s).await;
                        },
                    )
                    .await
            }));
        }
        Ok(ClientListeners { stop, servers })
    }

    /// Stops accepting, lets requests in flight finish, and waits for every server.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for server in self.servers {
            if let Ok(Err(e)) = server.await {
                tracing::warn!(error = %e, "client listener ended with an error");
            }
        }
    }
}

/// The socket address of a listen URL; `localhost` means the IPv4 loopback, as Go's
/// listener resolves it.
pub fn listen_addr(url: &url::Url) -> SocketAddr {
    let port = url.port_or_known_default().unwrap_or(0);
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    SocketAddr::new(ip, port)
}
