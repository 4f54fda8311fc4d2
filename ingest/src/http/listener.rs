//! The HTTP collector's listener: hyper connections of our own, so that a
//! slow or idle client cannot hold a file descriptor forever, and a flood
//! of connections is refused at the door rather than exhausting the
//! process's descriptors (which would also starve the admin server's
//! `/health` and `/metrics`: one descriptor table per process).
//!
//! - at most `max_connections` open at once; one more is answered
//!   `503 Service Unavailable` with `Retry-After` and code
//!   `connection_limit` (HTTPS: closed, no handshake), and counted;
//! - `header_read_timeout` bounds the headers of every request, the first
//!   and each one on a kept-alive connection, so an idle connection is
//!   closed after it too;
//! - TLS handshakes are bounded by [`HANDSHAKE_TIMEOUT`];
//! - on `stop`, every connection finishes its request in progress and
//!   closes.

use std::{sync::Arc, time::Duration};

use axum::{Router, body::Body};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::telemetry;

/// Longest TLS handshake allowed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the refusal of a connection over the limit may take to write.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// The connection limits of the HTTP collector.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Headers of each request, including the wait for the next request on
    /// a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Accepts connections on `listener` until `stop`, then waits for the
/// requests in progress.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let (tcp, _peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors (EMFILE) or memory: say so, and
                    // give the connections in progress time to finish.
                    xoflow_common::telemetry::ErrorKind::Accept.emit(
                        crate::telemetry::Metric::Errors.name(),
                        &e,
                        "accepting an HTTP connection",
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            telemetry::ConnectionRefused { api: "http" }.emit();
            if tls.is_none() {
                tracker.spawn(refuse(tcp));
            }
            continue;
        };
        telemetry::connections("http", limits.max_connections - open.available_permits());
        // Small answers go out at once rather than after the client's
        // delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let (app, stop, tls, open) = (app.clone(), stop.clone(), tls.clone(), open.clone());
        tracker.spawn(async move {
            match tls {
                None => connection(tcp, app, limits, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => connection(tls, app, limits, stop).await,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            telemetry::tls_handshake_failed();
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            telemetry::tls_handshake_failed();
                        }
                    }
                }
            }
            drop(permit);
            telemetry::connections("http", limits.max_connections - open.available_permits());
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Serves one connection's requests until it closes, times out, or `stop`.
async fn connection<I>(io: I, app: Router, limits: Limits, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        app.clone().oneshot(req.map(Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts and clients that went away: normal on the internet.
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}

/// The answer to a connection over the limit, written without reading its
/// request.
async fn refuse(mut tcp: TcpStream) {
    const BODY: &str = r#"{"code":"connection_limit","message":"too many connections to the collector; retry later"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}
