//! A gRPC connection to the v3 discovery cluster (`--discovery-endpoints`), with the
//! `--discovery-*` client settings: dial and keepalive timeouts, TLS (client
//! certificate, CA bundle or system roots, or no verification), user and password.
//!
//! TLS is done here, with tokio-rustls on ring, rather than by tonic: tonic's own TLS
//! would need another feature set and provider, while the daemon already has everything
//! for rustls. The channel is therefore given `http://` URIs and this connector decides
//! about TLS.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::config::DiscoveryClient;
use crate::proto::etcdserverpb::AuthenticateRequest;
use crate::proto::etcdserverpb::auth_client::AuthClient;

/// A channel plus the auth token its requests must carry.
#[derive(Clone)]
pub struct Connection {
    pub channel: Channel,
    pub endpoint: String,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Connection {
    /// A request carrying the auth token, if any.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            req.metadata_mut().insert("token", t.clone());
        }
        req
    }
}

/// `host:port` and whether the endpoint's scheme asks for TLS.
fn parse_endpoint(ep: &str) -> (String, bool) {
    let ep = ep.trim();
    if let Some(rest) = ep.strip_prefix("https://") {
        (rest.trim_end_matches('/').to_string(), true)
    } else if let Some(rest) = ep.strip_prefix("http://") {
        (rest.trim_end_matches('/').to_string(), false)
    } else {
        (ep.trim_end_matches('/').to_string(), false)
    }
}

/// The TLS client config etcd 3.6 would use: with any of cert/key/CA given, or with
/// `--discovery-insecure-transport=false`, or an `https://` endpoint.
fn tls_config(
    c: &DiscoveryClient,
    https_endpoint: bool,
) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    let wanted = !c.cert.is_empty()
        || !c.key.is_empty()
        || !c.cacert.is_empty()
        || !c.insecure_transport
        || https_endpoint;
    if !wanted {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if c.insecure_skip_tls_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::identity::AnyServerCertificate(
                provider,
            )))
    } else if !c.cacert.is_empty() {
        let roots = crate::tls::key_files::trust_anchors(std::path::Path::new(&c.cacert))
            .map_err(|e| e.to_string())?;
        builder.with_root_certificates(roots)
    } else {
        let (roots, _) = crate::tls::srv_domain::system_roots().map_err(|e| e.to_string())?;
        builder.with_root_certificates(roots)
    };
    let mut config = if c.cert.is_empty() {
        builder.with_no_client_auth()
    } else {
        let certs = crate::tls::key_files::certificates(std::path::Path::new(&c.cert))
            .map_err(|e| e.to_string())?;
        let key = crate::tls::key_files::private_key(std::path::Path::new(&c.key))
            .map_err(|e| e.to_string())?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| e.to_string())?
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(Arc::new(config)))
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Dials `authority`, then TLS when configured.
#[derive(Clone)]
struct Connector {
    authority: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

type Boxed = TokioIo<Box<dyn Io>>;

impl tonic::codegen::Service<http::Uri> for Connector {
    type Response = Boxed;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Boxed, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (authority, tls) = (self.authority.clone(), self.tls.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(&authority).await?;
            tcp.set_nodelay(true)?;
            let Some(tls) = tls else {
                return Ok(TokioIo::new(Box::new(tcp) as Box<dyn Io>));
            };
            let host = authority
                .rsplit_once(':')
                .map_or(authority.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let name = rustls_pki_types::ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(Box::new(stream) as Box<dyn Io>))
        })
    }
}

/// Connects to the first endpoint that answers, starting at `start` (so that retries
/// move on to the next one), and authenticates when a user is configured.
pub async fn connect(
    endpoints: &[String],
    start: usize,
    c: &DiscoveryClient,
) -> Result<Connection, String> {
    let mut last = String::from("no --discovery-endpoints given");
    for i in 0..endpoints.len() {
        let ep = &endpoints[(start + i) % endpoints.len()];
        match connect_one(ep, c).await {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                tracing::warn!(endpoint = %ep, error = %e, "cannot connect to discovery endpoint");
                last = e;
            }
        }
    }
    Err(last)
}

async fn connect_one(ep: &str, c: &DiscoveryClient) -> Result<Connection, String> {
    let (authority, https) = parse_endpoint(ep);
    let tls = tls_config(c, https)?;
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| format!("invalid discovery endpoint {ep:?}: {e}"))?
        .connect_timeout(c.dial_timeout)
        .http2_keep_alive_interval(c.keepalive_time)
        .keep_alive_timeout(c.keepalive_timeout)
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect_with_connector(Connector { authority, tls })
        .await
        .map_err(|e| format!("dial {ep}: {}", root_cause(&e)))?;
    let mut conn = Connection {
        channel,
        endpoint: ep.to_string(),
        token: None,
    };
    if !c.user.is_empty() {
        let (name, password) = match c.user.split_once(':') {
            Some((u, p)) if c.password.is_empty() => (u.to_string(), p.to_string()),
            _ => (c.user.clone(), c.password.clone()),
        };
        let resp = tokio::time::timeout(
            c.request_timeout,
            AuthClient::new(conn.channel.clone())
                .authenticate(AuthenticateRequest { name, password }),
        )
        .await
        .map_err(|_| format!("authenticate at {ep}: timed out"))?
        .map_err(|s| format!("authenticate at {ep}: {}", s.message()))?;
        let token = resp.into_inner().token;
        conn.token = Some(
            token
                .parse()
                .map_err(|_| format!("authenticate at {ep}: unusable token"))?,
        );
    }
    Ok(conn)
}

/// The innermost error: tonic's outer layers only say "transport error".
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_with_and_without_scheme() {
        assert_eq!(
            parse_endpoint("127.0.0.1:2379"),
            ("127.0.0.1:2379".into(), false)
        );
        assert_eq!(
            parse_endpoint("https://e.example:2379/"),
            ("e.example:2379".into(), true)
        );
        assert_eq!(
            parse_endpoint(" http://10.0.0.1:2379"),
            ("10.0.0.1:2379".into(), false)
        );
    }
}
