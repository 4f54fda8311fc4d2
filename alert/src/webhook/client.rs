//! The HTTP client every department's deliveries share, and the verdict on
//! an answer.
//!
//! HTTP/1.1 over hyper, TLS by rustls with the `ring` provider and the
//! webpki roots (the machine's certificate store is not read, so a
//! container without one works the same). One client and connection pool
//! for the process: hyper opens a new connection whenever none is idle, so
//! a receiver that holds its connections open without answering never
//! makes another webhook wait, and keeps an idle one only 2 s, less than
//! receivers keep theirs; each attempt is bounded by
//! `alert.request_timeout`, connecting included.
//!
//! The verdict ([`classify`], pure): a 2xx is delivered, unless a chat
//! robot says otherwise in its answer (Feishu `code` or `StatusCode` not 0,
//! DingTalk and WeCom `errcode` not 0): then it is retried, as are 5xx, 408,
//! 429 (waiting at least its `Retry-After`), timeouts and connection
//! failures. Any other status (4xx, and 3xx: redirects are not followed)
//! is refused for good.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, header::RETRY_AFTER};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::payload::Rendered;
use crate::config::Format;

/// Most bytes of an answer read (for a robot's error code and the log).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Most characters of an error kept in the delivery log.
const MAX_ERROR_CHARS: usize = 300;
/// How long a connection idle in the pool is kept for the next attempt:
/// less than receivers keep theirs (Node's 5 s by default), so that an
/// attempt is not written into a connection the receiver is closing. That
/// attempt would fail and the delivery wait for its next retry.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver has it.
    Delivered,
    /// Try again later; no sooner than `after` when the receiver said so
    /// (`Retry-After`).
    Retry { after: Option<Duration> },
    /// The receiver refuses it for good: dead-letter it now.
    Refused,
}

/// One attempt, as the delivery log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The HTTP status; 0 when no answer came.
    pub status: u16,
    pub verdict: Verdict,
    /// Why it failed (empty when delivered): a transport error, or the
    /// start of the answer.
    pub error: String,
    pub latency: Duration,
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS setup: {0}")]
pub struct ClientError(#[source] rustls::Error);

/// Sends rendered requests. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct WebhookClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookClient {
    /// A client whose every attempt takes at most `timeout`, trusting the
    /// webpki roots.
    pub fn new(timeout: Duration) -> Result<Self, ClientError> {
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(ClientError)?;
        Ok(Self::with_tls(timeout, tls, POOL_IDLE_TIMEOUT))
    }

    /// The same trusting `roots` only: for tests against a local CA.
    #[cfg(test)]
    fn with_roots(timeout: Duration, roots: rustls::RootCertStore) -> Result<Self, ClientError> {
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(ClientError)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self::with_tls(
            timeout,
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config),
            POOL_IDLE_TIMEOUT,
        ))
    }

    fn with_tls(
        timeout: Duration,
        tls: hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>,
        idle: Duration,
    ) -> Self {
        let mut http = HttpConnector::new();
        // The https connector below takes both schemes.
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let https = tls.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(8)
            .build(https);
        WebhookClient { client, timeout }
    }

    /// POSTs `req` and judges the answer for `format`. Never fails: a
    /// failure is an [`Attempt`] that says so.
    pub async fn send(&self, format: Format, req: Rendered) -> Attempt {
        let started = Instant::now();
        let mut builder = Request::post(req.uri);
        for (name, value) in &req.headers {
            builder = builder.header(*name, value);
        }
        let request = match builder.body(Full::new(Bytes::from(req.body))) {
            Ok(r) => r,
            Err(e) => {
                return Attempt {
                    status: 0,
                    verdict: Verdict::Refused,
                    error: cut(&format!("request: {e}")),
                    latency: started.elapsed(),
                };
            }
        };
        let exchange = async {
            let resp = self.client.request(request).await?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // An answer larger than the cap is read no further. One over
            // it or cut off reads as empty: a robot's 2xx is then not its
            // answer (retried), a generic receiver's stands.
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok::<_, hyper_util::client::legacy::Error>((status, retry_after, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok((status, retry_after, body))) => {
                let (verdict, error) = classify(format, status, retry_after, &body);
                Attempt {
                    status: status.as_u16(),
                    verdict,
                    error,
                    latency: started.elapsed(),
                }
            }
            Ok(Err(e)) => Attempt {
                status: 0,
                verdict: Verdict::Retry { after: None },
                error: cut(&transport_error(&e)),
                latency: started.elapsed(),
            },
            Err(_) => Attempt {
                status: 0,
                verdict: Verdict::Retry { after: None },
                error: format!("no answer within {:?}", self.timeout),
                latency: started.elapsed(),
            },
        }
    }
}

/// The error and its causes, on one line (hyper's own says only "client
/// error (Connect)").
fn transport_error(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// The verdict on an answer, and the error to log (empty when delivered).
/// Pure.
pub fn classify(
    format: Format,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> (Verdict, String) {
    let text = || cut(&String::from_utf8_lossy(body));
    if status.is_success() {
        return match robot_answer(format, body) {
            RobotAnswer::Posted => (Verdict::Delivered, String::new()),
            RobotAnswer::Error(code) => (
                Verdict::Retry { after: None },
                format!("{format} error code {code}: {}", text()),
            ),
            RobotAnswer::Unreadable => (
                Verdict::Retry { after: None },
                format!("{format}: a 2xx without the robot's answer: {}", text()),
            ),
        };
    }
    let error = format!("HTTP {}: {}", status.as_u16(), text());
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        (Verdict::Retry { after: retry_after }, error)
    } else {
        (Verdict::Refused, error)
    }
}

/// What a 2xx says of a chat robot's post.
enum RobotAnswer {
    /// Posted: the robot's code is 0, or the format is not a robot's.
    Posted,
    /// The robot refused it with this code.
    Error(i64),
    /// Not the robot's answer: not JSON or without its code (a proxy's or
    /// a firewall's page, a body cut off or over the cap). The robot
    /// always answers with its code, so what answered was not the robot.
    Unreadable,
}

/// A chat robot's verdict in a 2xx answer; generic receivers and Slack
/// are taken at their status.
fn robot_answer(format: Format, body: &[u8]) -> RobotAnswer {
    let keys: &[&str] = match format {
        // Current answers say `code`; older ones `StatusCode`.
        Format::Feishu => &["code", "StatusCode"],
        Format::Dingtalk | Format::Wecom => &["errcode"],
        Format::Generic | Format::Slack => return RobotAnswer::Posted,
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return RobotAnswer::Unreadable;
    };
    let codes: Vec<i64> = keys
        .iter()
        .filter_map(|k| v.get(*k).and_then(serde_json::Value::as_i64))
        .collect();
    match codes.iter().find(|c| **c != 0) {
        Some(code) => RobotAnswer::Error(*code),
        None if codes.is_empty() => RobotAnswer::Unreadable,
        None => RobotAnswer::Posted,
    }
}

fn cut(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(MAX_ERROR_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_per_status_and_robot() {
        let s = |c: u16| StatusCode::from_u16(c).expect("status");
        let retry = Verdict::Retry { after: None };
        let table: &[(Format, u16, &str, Verdict)] = &[
            (Format::Generic, 200, "", Verdict::Delivered),
            (Format::Generic, 204, "", Verdict::Delivered),
            (Format::Generic, 500, "boom", retry),
            (Format::Generic, 503, "", retry),
            (Format::Generic, 408, "", retry),
            (Format::Generic, 400, "bad", Verdict::Refused),
            (Format::Generic, 401, "", Verdict::Refused),
            (Format::Generic, 404, "", Verdict::Refused),
            (Format::Generic, 410, "", Verdict::Refused),
            (Format::Generic, 301, "", Verdict::Refused),
            // A generic receiver's JSON is not read for codes.
            (Format::Generic, 200, r#"{"code":5}"#, Verdict::Delivered),
            (
                Format::Feishu,
                200,
                r#"{"code":0,"msg":"success","data":{}}"#,
                Verdict::Delivered,
            ),
            (
                Format::Feishu,
                200,
                r#"{"StatusCode":0,"StatusMessage":"success"}"#,
                Verdict::Delivered,
            ),
            (
                Format::Feishu,
                200,
                r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time"}"#,
                retry,
            ),
            (
                Format::Feishu,
                200,
                r#"{"Extra":null,"StatusCode":19001,"StatusMessage":"param invalid"}"#,
                retry,
            ),
            (
                Format::Dingtalk,
                200,
                r#"{"errcode":0,"errmsg":"ok"}"#,
                Verdict::Delivered,
            ),
            (
                Format::Dingtalk,
                200,
                r#"{"errcode":310000,"errmsg":"sign not match"}"#,
                retry,
            ),
            (
                Format::Wecom,
                200,
                r#"{"errcode":0,"errmsg":"ok"}"#,
                Verdict::Delivered,
            ),
            (
                Format::Wecom,
                200,
                r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#,
                retry,
            ),
            // Not the robot's answer (a proxy's page, a cut or empty
            // body): the robot may never have had it.
            (Format::Wecom, 200, "ok", retry),
            (Format::Dingtalk, 200, "", retry),
            (
                Format::Feishu,
                200,
                "<html><title>Access denied</title></html>",
                retry,
            ),
            (Format::Dingtalk, 200, r#"{"errmsg":"ok"}"#, retry),
            (Format::Feishu, 200, r#"{"code":0"#, retry),
            (Format::Slack, 200, "ok", Verdict::Delivered),
            (Format::Slack, 400, "invalid_payload", Verdict::Refused),
            (Format::Slack, 404, "no_team", Verdict::Refused),
        ];
        for (format, status, body, want) in table {
            let (got, error) = classify(*format, s(*status), None, body.as_bytes());
            assert_eq!(got, *want, "{format} {status} {body}");
            assert_eq!(error.is_empty(), got == Verdict::Delivered, "{error}");
        }
        let (v, e) = classify(
            Format::Slack,
            s(429),
            Some(Duration::from_secs(30)),
            b"rate_limited",
        );
        assert_eq!(
            v,
            Verdict::Retry {
                after: Some(Duration::from_secs(30))
            }
        );
        assert_eq!(e, "HTTP 429: rate_limited");
        let (_, e) = classify(
            Format::Dingtalk,
            s(200),
            None,
            br#"{"errcode":130101,"errmsg":"send too fast"}"#,
        );
        assert!(e.starts_with("dingtalk error code 130101: "), "{e}");
    }

    #[test]
    fn logged_errors_are_bounded() {
        let long = "错".repeat(1000);
        let (_, e) = classify(
            Format::Generic,
            StatusCode::BAD_GATEWAY,
            None,
            long.as_bytes(),
        );
        assert!(e.chars().count() <= MAX_ERROR_CHARS + 12, "{}", e.len());
    }

    /// A one-request HTTPS server with the ingest tests' certificate (a
    /// leaf for 127.0.0.1 signed by a test CA,
    /// `ingest/tests/fixtures/tls`): answers 200 `ok` and hands back what
    /// it was sent.
    async fn tls_receiver() -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const CERT: &[u8] = include_bytes!("../../../ingest/tests/fixtures/tls/server.pem");
        const KEY: &[u8] = include_bytes!("../../../ingest/tests/fixtures/tls/server.key");
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(CERT)
            .collect::<Result<_, _>>()
            .expect("cert");
        let key = PrivateKeyDer::from_pem_slice(KEY).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("port");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return Vec::new();
                };
                // A client that refuses the certificate ends the handshake.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
                return got;
            }
        });
        (addr, task)
    }

    fn request(url: String) -> Rendered {
        Rendered {
            uri: url.parse().expect("uri"),
            body: "{\"summary\":\"配送晚了\"}".as_bytes().to_vec(),
            headers: vec![("content-type", "application/json".into())],
        }
    }

    #[tokio::test]
    async fn https_is_verified_against_the_roots() {
        // The webpki roots do not know the test CA: refused, and retried.
        let (addr, server) = tls_receiver().await;
        let client = WebhookClient::new(Duration::from_secs(5)).expect("client");
        let a = client
            .send(Format::Generic, request(format!("https://{addr}/hook")))
            .await;
        assert_eq!((a.status, a.verdict), (0, Verdict::Retry { after: None }));
        assert!(
            a.error.contains("certificate") || a.error.contains("Certificate"),
            "{}",
            a.error
        );
        server.abort();

        // Trusting the test CA, the same delivery goes through TLS.
        let (addr, server) = tls_receiver().await;
        let mut roots = rustls::RootCertStore::empty();
        let ca = include_bytes!("../../../ingest/tests/fixtures/tls/ca.pem");
        for c in <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_slice_iter(ca) {
            roots.add(c.expect("ca")).expect("root");
        }
        let client = WebhookClient::with_roots(Duration::from_secs(5), roots).expect("client");
        let a = client
            .send(Format::Generic, request(format!("https://{addr}/hook")))
            .await;
        assert_eq!(
            (a.status, a.verdict),
            (200, Verdict::Delivered),
            "{}",
            a.error
        );
        let got = String::from_utf8(server.await.expect("server")).expect("utf-8");
        assert!(got.starts_with("POST /hook HTTP/1.1\r\n"), "{got}");
        assert!(got.ends_with("{\"summary\":\"配送晚了\"}"), "{got}");
    }

    /// A plain HTTP receiver that keeps every connection open and answers
    /// each request 200 `ok`; counts the connections it accepted.
    async fn counting_receiver() -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("port");
        let addr = listener.local_addr().expect("addr");
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        // Every whole request (head and body) is answered.
                        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if got.len() < end + 4 + len {
                                break;
                            }
                            got.drain(..end + 4 + len);
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if conn.write_all(ok).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_pool_timeout_is_not_used_again() {
        // A receiver closes a connection idle for its keep-alive; one the
        // pool kept longer could take an attempt as it closes.
        let (addr, accepted) = counting_receiver().await;
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .expect("roots");
        let client =
            WebhookClient::with_tls(Duration::from_secs(5), tls, Duration::from_millis(50));
        let url = format!("http://{addr}/hook");
        let first = client.send(Format::Generic, request(url.clone())).await;
        assert_eq!(first.verdict, Verdict::Delivered, "{}", first.error);
        // The connection goes back to the pool from a task of hyper's,
        // soon after the answer: a second ahead of the next attempt is a
        // margin no loaded machine eats.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = client.send(Format::Generic, request(url)).await;
        assert_eq!(second.verdict, Verdict::Delivered, "{}", second.error);
        // A pool keeping idle connections longer would have sent both on
        // one connection.
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unreachable_receiver_is_a_retry_not_an_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let client = WebhookClient::new(Duration::from_secs(5)).expect("client");
        let a = client
            .send(
                Format::Generic,
                Rendered {
                    uri: format!("http://{closed}/hook").parse().expect("uri"),
                    body: b"{}".to_vec(),
                    headers: vec![("content-type", "application/json".into())],
                },
            )
            .await;
        assert_eq!(a.status, 0);
        assert_eq!(a.verdict, Verdict::Retry { after: None });
        assert!(a.error.contains("onnect"), "{}", a.error);
    }
}
