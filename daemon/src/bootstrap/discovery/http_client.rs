//! A small HTTP/1.1 client for the v2 discovery protocol: one connection per request,
//! plain or TLS (system roots, as etcd's discovery client uses Go's defaults), directly
//! or through `--discovery-proxy`.
//!
//! Why not a general client crate: discovery makes a handful of requests per start, so
//! connection reuse buys nothing, and hyper's connection-level client (already in the
//! tree through tonic) is all that is needed. Why one connection per request: a failed
//! request then never poisons the next, which keeps the retry logic simple.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Url;

/// etcd's discovery transport dial timeout.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// A request that did not produce an HTTP response: etcd's `ClusterError`, retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// What came back.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Talks to one origin (`scheme://host:port`).
pub struct Client {
    origin: Url,
    proxy: Option<Url>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    /// `origin` is an `http` or `https` URL; its path is ignored.
    pub fn new(origin: &Url, proxy: Option<Url>) -> Result<Self, TransportError> {
        let tls = if origin.scheme() == "https" {
            let (roots, _) = crate::tls::srv_domain::system_roots()
                .map_err(|e| TransportError(format!("cannot load system CA certificates: {e}")))?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| TransportError(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Client {
            origin: origin.clone(),
            proxy,
            tls,
        })
    }

    pub fn origin(&self) -> Url {
        let mut u = self.origin.clone();
        u.set_path("");
        u.set_query(None);
        u
    }

    fn host_port(&self) -> (String, u16) {
        let host = self.origin.host_str().unwrap_or_default().to_string();
        let port = self.origin.port_or_known_default().unwrap_or(80);
        (host, port)
    }

    /// Sends `method path_and_query` with an optional form body; `timeout` bounds the
    /// whole exchange (none for a watch, as in etcd).
    pub async fn request(
        &self,
        method: http::Method,
        path_and_query: &str,
        form: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<Response, TransportError> {
        let exchange = self.exchange(method, path_and_query, form);
        match timeout {
            Some(t) => tokio::time::timeout(t, exchange)
                .await
                .map_err(|_| TransportError(format!("request timed out after {t:?}")))?,
            None => exchange.await,
        }
    }

    async fn exchange(
        &self,
        method: http::Method,
        path_and_query: &str,
        form: Option<String>,
    ) -> Result<Response, TransportError> {
        let (host, port) = self.host_port();
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let io = self.connect(&host, port, &authority).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| TransportError(format!("HTTP handshake with {authority}: {e}")))?;
        let driver = tokio::spawn(conn);
        // Through a plain proxy an http request names the whole URL.
        let target = if self.proxy.is_some() && self.tls.is_none() {
            format!("http://{authority}{path_and_query}")
        } else {
            path_and_query.to_string()
        };
        let mut builder = http::Request::builder()
            .method(method)
            .uri(target)
            .header(http::header::HOST, &authority);
        let body = match form {
            Some(f) => {
                builder = builder.header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                );
                Bytes::from(f)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(body))
            .map_err(|e| TransportError(format!("bad request: {e}")))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| TransportError(format!("{}: {e}", self.origin)))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| TransportError(format!("reading response from {}: {e}", self.origin)))?
                .to_bytes();
            Ok(Response {
                status,
                headers,
                body,
            })
        }
        .await;
        driver.abort();
        result
    }

    /// A connected stream to the origin: TCP, through the proxy, then TLS if https.
    async fn connect(
        &self,
        host: &str,
        port: u16,
        authority: &str,
    ) -> Result<Box<dyn Io>, TransportError> {
        let dial = |h: String, p: u16| async move {
            match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect((h.as_str(), p))).await {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(TransportError(format!("dial tcp {h}:{p}: {e}"))),
                Err(_) => Err(TransportError(format!("dial tcp {h}:{p}: i/o timeout"))),
            }
        };
        let mut tcp = match &self.proxy {
            Some(p) => {
                let ph = p.host_str().unwrap_or_default().to_string();
                let pp = p.port_or_known_default().unwrap_or(80);
                dial(ph, pp).await?
            }
            None => dial(host.to_string(), port).await?,
        };
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        if self.proxy.is_some() {
            connect_tunnel(&mut tcp, authority).await?;
        }
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| TransportError(format!("bad server name {host:?}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| TransportError(format!("TLS handshake with {authority}: {e}")))?;
        Ok(Box::new(stream))
    }
}

/// `CONNECT authority` through an HTTP proxy, for https targets.
async fn connect_tunnel(tcp: &mut TcpStream, authority: &str) -> Result<(), TransportError> {
    let err = |e: std::io::Error| TransportError(format!("proxy CONNECT {authority}: {e}"));
    tcp.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .map_err(err)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || tcp.read(&mut byte).await.map_err(err)? == 0 {
            return Err(TransportError(format!(
                "proxy CONNECT {authority}: no valid response"
            )));
        }
        head.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status_line = status_line.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(TransportError(format!(
            "proxy CONNECT {authority}: {status_line}"
        )));
    }
    Ok(())
}
