//! QUIC endpoint settings for peer traffic, around the TLS configs of
//! [`crate::tls::peer_side`].

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

/// ALPN protocol of qetcd's peer traffic; a client speaking anything else is refused.
pub const ALPN: &[u8] = b"qetcd-raft/1";

#[derive(Debug, thiserror::Error)]
pub enum QuicConfigError {
    #[error("TLS configuration for QUIC: {0}")]
    Tls(String),
}

/// Timing shared by both directions: keep-alives well inside the idle timeout, so an
/// idle but healthy link stays up and a dead one is noticed within seconds.
fn transport(election_timeout: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    let idle = (election_timeout * 3).max(Duration::from_secs(3));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).expect("idle timeout fits QUIC's range"),
    ));
    Arc::new(t)
}

/// The accepting side of peer connections.
pub fn server(
    mut tls: rustls::ServerConfig,
    election_timeout: Duration,
) -> Result<quinn::ServerConfig, QuicConfigError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| QuicConfigError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport(election_timeout));
    Ok(server)
}

/// The dialling side of peer connections.
pub fn client(
    mut tls: rustls::ClientConfig,
    election_timeout: Duration,
) -> Result<quinn::ClientConfig, QuicConfigError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| QuicConfigError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport(election_timeout));
    Ok(client)
}
