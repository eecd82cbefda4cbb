//! Client listeners: accepted TCP connections, TLS-terminated on `https://` URLs, then
//! wrapped by the etcdctl-3.4 `:authority` repair ([`super::h2_authority`]).
//!
//! TLS handshakes run in tasks of their own, so a slow or hostile client cannot hold up
//! the accepting of others; a failed handshake (no certificate, wrong CA, expired,
//! plaintext on a TLS port) is logged with the client's address and dropped.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::h2_authority::AuthorityFixingStream;

/// etcd's TLS handshake timeout.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted but not yet taken by the server.
const BACKLOG: usize = 128;

/// One client connection, plaintext or TLS.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The stream of ready connections from `listener`, TLS-terminated when `tls` is set.
pub fn accept(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> ReceiverStream<io::Result<AuthorityFixingStream<ClientStream>>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                // The server stopped taking connections: stop accepting them.
                _ = tx.closed() => return,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            match &acceptor {
                None => {
                    let conn = AuthorityFixingStream::new(ClientStream::Plain(stream));
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::warn!(
                                    "rejected connection from {:?} (error {:?})",
                                    remote.to_string(),
                                    e.to_string()
                                );
                                return;
                            }
                            Err(_) => {
                                tracing::warn!(
                                    "rejected connection from {:?} (error \"TLS handshake timed out\")",
                                    remote.to_string()
                                );
                                return;
                            }
                        };
                        let conn = AuthorityFixingStream::new(ClientStream::Tls(Box::new(tls)));
                        let _ = tx.send(Ok(conn)).await;
                    });
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// What a request's connection tells about the client: its address and, on TLS with
/// a client certificate, the certificate's common name (etcd's user for
/// `--client-cert-auth`). tonic puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct ClientConnectInfo {
    pub tcp: tonic::transport::server::TcpConnectInfo,
    pub common_name: Option<String>,
}

impl tonic::transport::server::Connected for ClientStream {
    type ConnectInfo = ClientConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            ClientStream::Plain(s) => ClientConnectInfo {
                tcp: s.connect_info(),
                common_name: None,
            },
            ClientStream::Tls(s) => {
                let (tcp, session) = s.get_ref();
                // rustls presents only a chain its verifier accepted.
                let common_name = session
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| common_name(leaf.as_ref()));
                ClientConnectInfo {
                    tcp: tcp.connect_info(),
                    common_name,
                }
            }
        }
    }
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
