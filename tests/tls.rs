//! amqps and https: a test CA, server and client certificates made with rcgen, the broker
//! started with them, and a rustls client speaking AMQP (the raw client) or HTTP over TLS.

mod common;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, queue, AMQPClass, BasicProperties};
use amq_protocol::types::FieldTable;
use common::raw::Raw;
use common::{start_broker_with, test_config, within};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use warrenmq::config::Config;

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed
/// by the CA, written as PEM files into `dir`.
struct Pki {
    ca: CertificateDer<'static>,
    client_cert: CertificateDer<'static>,
    client_key: Vec<u8>,
    ca_pem: PathBuf,
    cert_pem: PathBuf,
    key_pem: PathBuf,
}

fn leaf(
    names: Vec<String>,
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(names).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert, key)
}

fn make_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "WarrenMQ test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let (server, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
        &issuer,
    );
    let (client, client_key) = leaf(
        vec!["client".into()],
        "client",
        ExtendedKeyUsagePurpose::ClientAuth,
        &issuer,
    );
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write PEM");
        p
    };
    Pki {
        ca: ca_cert.der().clone(),
        client_cert: client.der().clone(),
        client_key: client_key.serialize_der(),
        ca_pem: write("ca.pem", ca_cert.pem()),
        cert_pem: write("server.pem", server.pem()),
        key_pem: write("server.key", server_key.serialize_pem()),
    }
}

fn tls_config(dir: &Path, pki: &Pki) -> Config {
    Config {
        amqps_addr: "127.0.0.1:0".parse().expect("addr"),
        tls_cert: Some(pki.cert_pem.clone()),
        tls_key: Some(pki.key_pem.clone()),
        ..test_config(dir)
    }
}

fn connector(pki: &Pki, with_client_cert: bool) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).expect("CA into root store");
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
    let config = if with_client_cert {
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(pki.client_key.clone()));
        builder
            .with_client_auth_cert(vec![pki.client_cert.clone()], key)
            .expect("client cert")
    } else {
        builder.with_no_client_auth()
    };
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    connector: &TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = within("tcp connect", TcpStream::connect(addr)).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    within("TLS handshake", connector.connect(name, tcp)).await
}

fn declare(name: &str) -> AMQPFrame {
    AMQPFrame::Method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
}

/// Publish `body` to queue `q` on channel 1, consume it and check what comes back.
async fn publish_consume_roundtrip<S>(r: &mut Raw<S>, q: &str, body: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    r.open_channel(1).await;
    r.send(declare(q)).await;
    match r.recv().await {
        Some(AMQPFrame::Method(1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))) => {}
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: q.into(),
            mandatory: false,
            immediate: false,
        })),
    ))
    .await;
    r.send(AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: BasicProperties::default().with_priority(4),
        },
    ))
    .await;
    r.send(AMQPFrame::Body(1, body.to_vec())).await;
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: q.into(),
            consumer_tag: "tls-consumer".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ))
    .await;
    let mut tag = None;
    let mut got = Vec::new();
    while got.len() < body.len() || tag.is_none() {
        match r.recv().await {
            Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))) => {}
            Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Deliver(d)))) => {
                assert_eq!(d.consumer_tag.as_str(), "tls-consumer");
                assert_eq!(d.routing_key.as_str(), q);
                tag = Some(d.delivery_tag);
            }
            Some(AMQPFrame::Header(1, h)) => {
                assert_eq!(h.body_size, body.len() as u64);
                assert_eq!(h.properties.priority(), &Some(4));
            }
            Some(AMQPFrame::Body(1, b)) => got.extend_from_slice(&b),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(got, body);
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag.expect("delivered"),
            multiple: false,
        })),
    ))
    .await;
}

#[tokio::test]
async fn amqps_publish_consume_roundtrip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = make_pki(dir.path());
    let config = tls_config(dir.path(), &pki);
    let mut b = start_broker_with(config, tempfile::tempdir().expect("data dir")).await;
    let addr = b
        .handle
        .as_ref()
        .expect("running")
        .amqps_addr
        .expect("amqps");
    let stream = tls_connect(addr, &connector(&pki, false))
        .await
        .expect("TLS handshake");
    let mut r = Raw::over(stream);
    r.handshake(131_072, 0).await;
    // Bigger than one TLS record and than frame_max 4096, so both split the body.
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    publish_consume_roundtrip(&mut r, "tls.q", &body).await;

    // The plain listener keeps working next to it.
    let c = common::connect(&b).await;
    let ch = common::channel(&c).await;
    assert_eq!(common::ready_count(&ch, "tls.q").await, 0);

    // The management API tells the two apart, with RabbitMQ's ssl_* fields.
    let (status, conns) = common::http::api(&b).get("/api/connections").await;
    assert_eq!(status, 200);
    let conns = conns.as_array().expect("a list").clone();
    assert_eq!(conns.len(), 2, "{conns:?}");
    let tls = conns
        .iter()
        .find(|c| c["ssl"] == true)
        .expect("the amqps one");
    assert_eq!(tls["port"], addr.port());
    assert_eq!(tls["ssl_protocol"], "tlsv1.3");
    assert_eq!(tls["ssl_key_exchange"], "any");
    assert!(
        tls["ssl_cipher"].as_str().is_some_and(|c| !c.is_empty()),
        "{tls}"
    );
    assert!(
        tls["ssl_hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha")),
        "{tls}"
    );
    let plain = conns
        .iter()
        .find(|c| c["ssl"] == false)
        .expect("the plain one");
    assert!(plain["ssl_protocol"].is_null());
    b.stop().await;
}

#[tokio::test]
async fn amqps_is_off_without_certificates() {
    let mut b = common::start_broker().await;
    assert!(b.handle.as_ref().expect("running").amqps_addr.is_none());
    b.stop().await;
}

/// The server refused the client: the handshake failed, or (TLS 1.3, where the client
/// finishes first) the connection dies before the broker says connection.start.
async fn assert_refused(addr: std::net::SocketAddr, connector: &TlsConnector) {
    let Ok(mut stream) = tls_connect(addr, connector).await else {
        return;
    };
    let _ = stream.write_all(b"AMQP\x00\x00\x09\x01").await;
    let _ = stream.flush().await;
    let mut buf = [0u8; 64];
    match within("refusal", stream.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("client without certificate was served: {:?}", &buf[..n]),
    }
}

#[tokio::test]
async fn amqps_client_certificate_required() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = make_pki(dir.path());
    let config = Config {
        tls_ca: Some(pki.ca_pem.clone()),
        tls_verify_peer: true,
        tls_fail_if_no_peer_cert: true,
        ..tls_config(dir.path(), &pki)
    };
    let mut b = start_broker_with(config, tempfile::tempdir().expect("data dir")).await;
    let addr = b
        .handle
        .as_ref()
        .expect("running")
        .amqps_addr
        .expect("amqps");

    assert_refused(addr, &connector(&pki, false)).await;

    let stream = tls_connect(addr, &connector(&pki, true))
        .await
        .expect("TLS handshake with a client certificate");
    let mut r = Raw::over(stream);
    r.handshake(131_072, 0).await;
    publish_consume_roundtrip(&mut r, "tls.mutual", b"signed").await;
    b.stop().await;
}

#[tokio::test]
async fn amqps_verify_peer_accepts_clients_without_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = make_pki(dir.path());
    let config = Config {
        tls_ca: Some(pki.ca_pem.clone()),
        tls_verify_peer: true,
        ..tls_config(dir.path(), &pki)
    };
    let mut b = start_broker_with(config, tempfile::tempdir().expect("data dir")).await;
    let addr = b
        .handle
        .as_ref()
        .expect("running")
        .amqps_addr
        .expect("amqps");
    for with_cert in [false, true] {
        let stream = tls_connect(addr, &connector(&pki, with_cert))
            .await
            .expect("TLS handshake");
        let mut r = Raw::over(stream);
        r.handshake(131_072, 0).await;
        r.open_channel(1).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn https_serves_the_management_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = make_pki(dir.path());
    let config = Config {
        https_addr: Some("127.0.0.1:0".parse().expect("addr")),
        ..tls_config(dir.path(), &pki)
    };
    let mut b = start_broker_with(config, tempfile::tempdir().expect("data dir")).await;
    let addr = b
        .handle
        .as_ref()
        .expect("running")
        .https_addr
        .expect("https");
    let mut stream = tls_connect(addr, &connector(&pki, false))
        .await
        .expect("TLS handshake");
    // guest/guest from loopback, as on the plain port.
    let request = "GET /api/overview HTTP/1.1\r\nHost: localhost\r\n\
                   Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n";
    within("request", stream.write_all(request.as_bytes()))
        .await
        .expect("write");
    let mut response = Vec::new();
    // A peer may end TLS without close_notify once the response is complete.
    let _ = within("response", stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"amqp/ssl\""), "{text}");
    assert!(text.contains("\"https\""), "{text}");
    b.stop().await;
}

#[tokio::test]
async fn tls_settings_are_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = make_pki(dir.path());
    let base = tls_config(dir.path(), &pki);
    let invalid = [
        Config {
            tls_key: None,
            ..base.clone()
        },
        Config {
            tls_verify_peer: true,
            ..base.clone()
        },
        Config {
            tls_fail_if_no_peer_cert: true,
            ..base.clone()
        },
        Config {
            tls_cert: None,
            tls_key: None,
            https_addr: Some("127.0.0.1:0".parse().expect("addr")),
            ..base.clone()
        },
    ];
    for c in &invalid {
        assert!(c.validate().is_err(), "{c:?} should be refused");
    }
    base.validate().expect("valid TLS config");

    // A file that holds no certificate fails startup with a TLS error, before binding.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let bad = Config {
        tls_cert: Some(empty),
        ..base
    };
    match within("start", warrenmq::server::start(bad)).await {
        Err(warrenmq::server::ServerError::Tls(_)) => {}
        Err(e) => panic!("expected a TLS error, got {e}"),
        Ok(_) => panic!("broker started with an empty certificate file"),
    }
}
