//! The school's own relay: the server half (run inside `classe seed`) and
//! how a node's endpoint is pointed at it.
//!
//! ```text
//!   school seed node (public address)
//!     iroh-relay Server
//!       TCP  PORT  relay over HTTP(S) websockets: bytes between two nodes
//!                  that cannot reach each other directly (end-to-end
//!                  encrypted QUIC; the relay sees node ids, not content)
//!       UDP  PORT  QUIC address discovery (QAD): tells each node the
//!                  public address its home router gave it
//!
//!   pupil / teacher at home
//!     Endpoint (relay map = [that URL], QAD port = the URL's port)
//!       -> learns its public address, hole-punches to classmates through
//!          the relay, falls back to relayed bytes
//! ```
//!
//! One port number for both: a school opens TCP and UDP PORT in its
//! firewall. With TLS (a certificate file) the URL is `https://`; without,
//! `http://` for a lab or a school LAN. QAD always runs QUIC, so without a
//! certificate the server makes a self-signed one at start, and clients of
//! an `http://` relay accept any certificate for QAD alone (see
//! [`client_tls`]): a false answer can only make a node advertise a wrong
//! address (it then stays reachable through the relay), never read or
//! change data, which peers authenticate by node key end to end.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, sync::Arc};

use iroh::{RelayMode, RelayUrl};
use iroh_relay::{
    server::{
        CertConfig, ClientRateLimit, Limits, QuicConfig, RelayConfig as ServerRelayConfig, Server,
        ServerConfig, TlsConfig,
    },
    tls::CaTlsConfig,
    RelayConfig, RelayMap, RelayQuicConfig,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// How the seed runs its relay.
#[derive(Debug, Clone)]
pub struct RelayServerConfig {
    /// Where to listen: TCP for the relay, UDP (same port) for address
    /// discovery.
    pub bind: SocketAddr,
    /// Certificate chain and private key (PEM files) for `https://`. None:
    /// plain `http://`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Bytes per second the relay accepts from any one node. None: no cap.
    pub max_rate_per_node: Option<u32>,
    /// The host name in the printed URL (it must match the certificate).
    /// None: the bind IP.
    pub public_host: Option<String>,
}

/// Starting or configuring the relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A certificate or key file cannot be read or parsed.
    #[error("cannot read the relay's TLS {what} from {path}")]
    ReadTls {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate and key do not form a TLS configuration.
    #[error("the relay's certificate and key do not fit together")]
    Tls(#[source] rustls::Error),
    /// Making the self-signed certificate for address discovery failed.
    #[error("cannot make a certificate for the relay's address discovery")]
    SelfSigned(#[source] rcgen::Error),
    /// Binding a port or starting a task failed.
    #[error("cannot start the relay on {addr}")]
    Spawn {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A `--relay` value is not an `http://` or `https://` URL.
    #[error("invalid relay URL {0:?}: expected http://HOST:PORT or https://HOST[:PORT]")]
    Url(String),
    /// The wildcard address cannot be put into a URL.
    #[error(
        "the relay listens on {0}, which no node can dial: give --relay-host or a specific IP"
    )]
    Unspecified(SocketAddr),
}

/// A running relay server. Dropping it stops it.
#[derive(Debug)]
pub struct RelayServer {
    server: Server,
    url: RelayUrl,
}

impl RelayServer {
    /// Binds and starts the relay and its address discovery.
    pub async fn spawn(mut config: RelayServerConfig) -> Result<Self, RelayError> {
        if config.bind.port() == 0 {
            // Clients find address discovery on the URL's port number, so
            // TCP and UDP must share one: pick a port free for both.
            config.bind = free_port(config.bind)?;
        }
        let host = match &config.public_host {
            Some(h) => h.clone(),
            None if config.bind.ip().is_unspecified() => {
                return Err(RelayError::Unspecified(config.bind))
            }
            None => match config.bind.ip() {
                std::net::IpAddr::V4(ip) => ip.to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            },
        };
        let mut relay = match &config.tls {
            Some((cert, key)) => {
                // With TLS the relay serves HTTPS on the given port; its
                // plain HTTP side (captive-portal probe, which clients here
                // do not run) takes any free port.
                let mut r = ServerRelayConfig::new(SocketAddr::new(config.bind.ip(), 0));
                r.tls = Some(TlsConfig::new(
                    config.bind,
                    CertConfig::Manual {
                        server_config: server_tls(cert, key)?,
                    },
                ));
                r
            }
            None => ServerRelayConfig::new(config.bind),
        };
        relay.key_cache_capacity = Some(4096);
        if let Some(rate) = config.max_rate_per_node.and_then(NonZeroU32::new) {
            let mut limit = ClientRateLimit::new(rate);
            limit.max_burst_bytes = NonZeroU32::new(rate.get().saturating_mul(2).max(1 << 20));
            let mut limits = Limits::default();
            limits.client_rx = Some(limit);
            relay.limits = limits;
        }
        let mut quic = QuicConfig::new(config.bind);
        if config.tls.is_none() {
            quic.server_config = Some(self_signed(&host)?);
        }
        let mut server_config = ServerConfig::default();
        server_config.relay = Some(relay);
        server_config.quic = Some(quic);
        let server = Server::spawn(server_config)
            .await
            .map_err(|e| RelayError::Spawn {
                addr: config.bind,
                source: Box::new(e),
            })?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let port = config.bind.port();
        let url = format!("{scheme}://{host}:{port}")
            .parse()
            .map_err(|_| RelayError::Url(format!("{scheme}://{host}:{port}")))?;
        tracing::info!(%url, "relay started");
        Ok(Self { server, url })
    }

    /// The URL nodes pass to `--relay`.
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    /// Datagram bytes the relay has carried so far (received from nodes,
    /// sent to nodes).
    pub fn carried(&self) -> RelayCarried {
        let m = &self.server.metrics().server;
        RelayCarried {
            received: m.bytes_recv.get(),
            sent: m.bytes_sent.get(),
        }
    }

    /// Stops the relay.
    pub async fn shutdown(self) {
        if let Err(e) = self.server.shutdown().await {
            tracing::warn!("relay shutdown: {e}");
        }
    }
}

fn free_port(bind: SocketAddr) -> Result<SocketAddr, RelayError> {
    let err = |e: std::io::Error| RelayError::Spawn {
        addr: bind,
        source: Box::new(e),
    };
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind(bind).map_err(err)?;
        let addr = udp.local_addr().map_err(err)?;
        if std::net::TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err(err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no port free for both TCP and UDP",
    )))
}

/// Bytes a relay carried.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct RelayCarried {
    /// From nodes to the relay.
    pub received: u64,
    /// From the relay to nodes.
    pub sent: u64,
}

fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, RelayError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| RelayError::ReadTls {
            what: "certificate",
            path: cert.to_path_buf(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| RelayError::ReadTls {
        what: "private key",
        path: key.to_path_buf(),
        source,
    })?;
    tls13(chain, key)
}

/// A TLS 1.3 server configuration (QUIC needs 1.3) for `chain` and `key`.
fn tls13(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, RelayError> {
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(RelayError::Tls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(RelayError::Tls)
}

fn self_signed(host: &str) -> Result<rustls::ServerConfig, RelayError> {
    let name = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let cert = rcgen::generate_simple_self_signed(vec![name]).map_err(RelayError::SelfSigned)?;
    let key = PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    tls13(vec![cert.cert.der().clone()], key)
}

/// Parses a `--relay` value: only `http://` and `https://` URLs with a
/// host.
pub fn parse_url(url: &str) -> Result<RelayUrl, RelayError> {
    let bad = || RelayError::Url(url.to_string());
    let parsed: RelayUrl = url.parse().map_err(|_| bad())?;
    let u: &url::Url = &parsed;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(bad());
    }
    Ok(parsed)
}

/// The endpoint's relay settings for the school relay at `url`: that relay
/// only (never n0's), address discovery on the same port number over UDP.
pub fn client_mode(url: &RelayUrl) -> RelayMode {
    let u: &url::Url = url;
    let port = u.port_or_known_default().unwrap_or(443);
    let config = RelayConfig::new(url.clone(), Some(RelayQuicConfig::new(port)));
    RelayMode::Custom(RelayMap::from(config))
}

/// How the endpoint checks the relay's certificate: the usual web roots
/// (plus `extra_roots`, a school's own CA) for `https://`; for `http://`,
/// where the relay itself has no TLS, any certificate on address
/// discovery (see the module docs for why that is safe enough).
pub fn client_tls(url: &RelayUrl, extra_roots: Vec<CertificateDer<'static>>) -> CaTlsConfig {
    let u: &url::Url = url;
    if u.scheme() == "http" {
        return CaTlsConfig::custom_server_cert_verifier(Arc::new(|provider| {
            Ok(Arc::new(AnyCert { provider })
                as Arc<dyn rustls::client::danger::ServerCertVerifier>)
        }));
    }
    CaTlsConfig::embedded().with_extra_roots(extra_roots)
}

/// Reads the extra root certificates (PEM) a school gives for its relay.
pub fn read_roots(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, RelayError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| RelayError::ReadTls {
            what: "certificate",
            path: path.to_path_buf(),
            source,
        })
}

/// Accepts the relay's certificate whatever it is, but still checks that
/// the handshake was signed by the key in it. Used for `http://` relays
/// only, whose address discovery runs over a self-signed QUIC endpoint.
#[derive(Debug)]
struct AnyCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_host_are_relays() {
        assert!(parse_url("http://198.18.0.1:3340").is_ok());
        assert!(parse_url("https://relay.college.fr").is_ok());
        for bad in [
            "ftp://x",
            "relay.example",
            "",
            "http://",
            "file:///etc/passwd",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn address_discovery_uses_the_url_port() {
        let url = parse_url("http://198.18.0.1:3340").unwrap();
        let RelayMode::Custom(map) = client_mode(&url) else {
            panic!("not a custom relay map");
        };
        let configs = map.relays::<Vec<_>>();
        assert_eq!(configs.len(), 1);
        assert_eq!(configs[0].quic.as_ref().map(|q| q.port), Some(3340));
        let url = parse_url("https://relay.college.fr").unwrap();
        let RelayMode::Custom(map) = client_mode(&url) else {
            panic!("not a custom relay map");
        };
        assert_eq!(
            map.relays::<Vec<_>>()[0].quic.as_ref().map(|q| q.port),
            Some(443)
        );
    }

    #[tokio::test]
    async fn a_plain_relay_starts_on_loopback_and_names_its_url() {
        let relay = RelayServer::spawn(RelayServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            max_rate_per_node: Some(1_000_000),
            public_host: None,
        })
        .await
        .unwrap();
        let url = relay.url().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        assert!(!url.ends_with(":0/"), "{url}");
        assert_eq!(relay.carried(), RelayCarried::default());
        relay.shutdown().await;
    }

    #[tokio::test]
    async fn a_missing_certificate_is_a_clear_error() {
        let err = RelayServer::spawn(RelayServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            tls: Some((
                "/nonexistent/cert.pem".into(),
                "/nonexistent/key.pem".into(),
            )),
            max_rate_per_node: None,
            public_host: None,
        })
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                RelayError::ReadTls {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_wildcard_address_needs_a_host_name() {
        let err = RelayServer::spawn(RelayServerConfig {
            bind: "0.0.0.0:0".parse().unwrap(),
            tls: None,
            max_rate_per_node: None,
            public_host: None,
        })
        .await
        .unwrap_err();
        assert!(matches!(err, RelayError::Unspecified(_)), "{err}");
    }
}
