//! TLS on the collector APIs, in process (real sockets on 127.0.0.1, no
//! broker): with `[ingest.tls]` set, gRPC and HTTP both answer over TLS
//! only (a plaintext client gets no answer), accepted records are
//! delivered as usual, and an unreadable certificate stops start-up naming
//! the setting and the file.
//!
//! The certificates in `ingest/tests/fixtures/tls` are a test CA and a leaf
//! for localhost/127.0.0.1 valid until 2125 (see its README).

mod support;

use std::{path::PathBuf, sync::Arc};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, RootCertStore, pki_types::CertificateDer, pki_types::pem::PemObject},
};
use xoflow_common::clock;
use xoflow_proto::v1::{IngestRequest, IngestResponse, collector_client::CollectorClient};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// Start-up as the process does it, over memory.
async fn start(
    cfg: &xoflow_ingest::IngestConfig,
) -> Result<xoflow_ingest::Collectors, xoflow_ingest::RunError> {
    let ingestor = xoflow_ingest::ingestor(cfg, Arc::new(xoflow_ingest::MemoryDelivery::new()))
        .expect("ingestor");
    xoflow_ingest::Collectors::bind_with(cfg, ingestor).await
}

fn tls_overlay(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "[ingest.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

fn http_request(body: &str) -> Vec<u8> {
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_apis_speak_tls_only_when_configured() {
    let cfg = support::config(&tls_overlay(&fixture("server.pem"), &fixture("server.key")));
    let running = support::Served::start(&cfg).await;
    let ca = std::fs::read(fixture("ca.pem")).expect("ca");

    // gRPC over TLS, verified against the test CA.
    let grpc = running.grpc_addr;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", grpc.port()))
            .expect("url")
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
                    .domain_name("localhost"),
            )
            .expect("tls config")
            .connect()
            .await
            .expect("TLS connect");
    let events = support::events(10, "grpc", clock::now_unix_millis());
    let answer = CollectorClient::new(channel)
        .ingest(IngestRequest {
            events: events.clone(),
        })
        .await
        .expect("ingest over TLS")
        .into_inner();
    assert_eq!((answer.accepted, answer.rejected), (10, 0), "{answer:?}");

    // Plaintext gRPC to the TLS port: no answer.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .expect("url")
        .connect()
        .await;
    if let Ok(channel) = plain {
        let r = CollectorClient::new(channel)
            .ingest(IngestRequest {
                events: events[..1].to_vec(),
            })
            .await;
        assert!(r.is_err(), "a plaintext request was answered: {r:?}");
    }

    // HTTPS, verified against the same CA.
    let http = running.http_addr;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("ca pem")).expect("ca cert");
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
    let mut tls = TlsConnector::from(Arc::new(client))
        .connect("localhost".try_into().expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let more = support::events(5, "http", clock::now_unix_millis());
    let body = format!(
        "[{}]",
        more.iter()
            .map(|e| serde_json::to_string(e).expect("json"))
            .collect::<Vec<_>>()
            .join(",")
    );
    tls.write_all(&http_request(&body)).await.expect("write");
    let mut answer = Vec::new();
    // A peer closing without close_notify is an error for rustls; the
    // answer is complete by then.
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let r: IngestResponse = serde_json::from_str(json).expect("response json");
    assert_eq!((r.accepted, r.rejected), (5, 0), "{json}");

    // Plain HTTP to the HTTPS port: the handshake fails, no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
    tcp.write_all(&http_request(&body)).await.expect("write");
    let mut plain = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        tcp.read_to_end(&mut plain),
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&plain).contains("HTTP/1.1 200"),
        "plaintext was served"
    );

    assert_eq!(running.delivery.events().len(), 15);
    running.stop().await;
}

#[tokio::test]
async fn an_unreadable_certificate_stops_start_up_with_its_path() {
    let missing = fixture("no-such-cert.pem");
    let cfg = support::config(&tls_overlay(&missing, &fixture("server.key")));
    let err = start(&cfg).await.expect_err("start must fail");
    let text = format!("{err:#}");
    assert!(text.contains("ingest.tls.cert_file"), "{text}");
    assert!(text.contains("no-such-cert.pem"), "{text}");

    // A key that is not the certificate's.
    let cfg = support::config(&tls_overlay(&fixture("server.pem"), &fixture("ca.pem")));
    let err = start(&cfg).await.expect_err("start must fail");
    assert!(
        format!("{err:#}").contains("ingest.tls.key_file"),
        "{err:#}"
    );
}
