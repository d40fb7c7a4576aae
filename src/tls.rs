//! TLS for the amqps and https listeners: rustls server configurations built from the PEM
//! files in the config, and the amqps handshake in front of the ordinary connection code.
//!
//! The crypto provider is chosen explicitly (ring) rather than taken from the process
//! default, so a dependency that enables a second rustls provider cannot make startup
//! ambiguous.

use crate::broker::Broker;
use crate::config::Config;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
pub use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {source}")]
    Pem {
        what: &'static str,
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no {what}")]
    Empty { what: &'static str, path: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot verify client certificates: {0}")]
    Verifier(#[from] VerifierBuilderError),
    #[error("TLS is not configured (tls_cert and tls_key)")]
    NotConfigured,
}

/// Which listener a server configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// amqps: client certificates are requested when `tls_verify_peer` is set.
    Amqp,
    /// The management API: authenticated by HTTP Basic, so no client certificates; ALPN
    /// offers HTTP/1.1, the only version the API serves.
    Http,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |source| TlsError::Pem {
        what,
        path: path.display().to_string(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        what: "a private key",
        path: path.display().to_string(),
        source,
    })
}

/// The rustls server configuration for one listener, from `tls_cert`, `tls_key` and, for
/// amqps with `tls_verify_peer`, `tls_ca`.
pub fn server_config(config: &Config, listener: Listener) -> Result<ServerConfig, TlsError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Err(TlsError::NotConfigured);
    };
    let certs = load_certs(cert, "certificates")?;
    let key = load_key(key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (&config.tls_ca, listener) {
        (Some(ca), Listener::Amqp) if config.tls_verify_peer => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca, "CA certificates")? {
                roots.add(c)?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if !config.tls_fail_if_no_peer_cert {
                // RabbitMQ's verify_peer without fail_if_no_peer_cert: a certificate that is
                // presented must verify, but none at all is accepted.
                verifier = verifier.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(verifier.build()?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(certs, key)?;
    if listener == Listener::Http {
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(server)
}

/// An acceptor for `listener`, or None when TLS is not configured.
pub fn acceptor(config: &Config, listener: Listener) -> Result<Option<TlsAcceptor>, TlsError> {
    if !config.tls_enabled() {
        return Ok(None);
    }
    Ok(Some(TlsAcceptor::from(Arc::new(server_config(
        config, listener,
    )?))))
}

/// Serve one accepted amqps socket: the TLS handshake (bounded by the AMQP handshake
/// timeout, so a silent client cannot hold a connection slot) and then the same connection
/// code as plain AMQP, monomorphised for the TLS stream.
pub async fn serve_amqps(
    acceptor: TlsAcceptor,
    broker: Arc<Broker>,
    socket: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let timeout = broker.config.handshake_timeout();
    let stream = tokio::select! {
        r = tokio::time::timeout(timeout, acceptor.accept(socket)) => match r {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "TLS handshake timed out");
                return;
            }
        },
        _ = shutdown.changed() => return,
    };
    let info = session_info(stream.get_ref().1);
    crate::connection::serve(broker, stream, peer, shutdown, Some(info)).await;
}

/// What the management API shows of a TLS connection, in RabbitMQ's terms (`tlsv1.3`,
/// cipher `aes_256_gcm`, hash `sha384`, key exchange `ecdhe_rsa`, or `any` for TLS 1.3,
/// whose suites do not name one).
pub fn session_info(conn: &rustls::ServerConnection) -> crate::broker::client::TlsInfo {
    let protocol = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "tlsv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "tlsv1.2",
        _ => "unknown",
    };
    let suite = conn
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("");
    let (key_exchange, cipher, hash) = split_suite(suite);
    crate::broker::client::TlsInfo {
        protocol: protocol.into(),
        key_exchange,
        cipher,
        hash,
    }
}

/// `TLS13_AES_256_GCM_SHA384` → ("any", "aes_256_gcm", "sha384");
/// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256` → ("ecdhe_rsa", "aes_128_gcm", "sha256").
fn split_suite(name: &str) -> (String, String, String) {
    let lower = name.to_ascii_lowercase();
    let (kx, rest) = match lower.strip_prefix("tls13_") {
        Some(rest) => ("any".to_string(), rest.to_string()),
        None => match lower
            .strip_prefix("tls_")
            .and_then(|r| r.split_once("_with_"))
        {
            Some((kx, rest)) => (kx.to_string(), rest.to_string()),
            None => return ("unknown".into(), lower, "unknown".into()),
        },
    };
    match rest.rsplit_once('_') {
        Some((cipher, hash)) => (kx, cipher.to_string(), hash.to_string()),
        None => (kx, rest, "unknown".into()),
    }
}

#[cfg(test)]
mod suite_tests {
    use super::split_suite;

    #[test]
    fn suites_in_rabbitmq_terms() {
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            split_suite("TLS13_AES_256_GCM_SHA384"),
            s("any", "aes_256_gcm", "sha384")
        );
        assert_eq!(
            split_suite("TLS13_CHACHA20_POLY1305_SHA256"),
            s("any", "chacha20_poly1305", "sha256")
        );
        assert_eq!(
            split_suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            s("ecdhe_rsa", "aes_128_gcm", "sha256")
        );
    }
}
