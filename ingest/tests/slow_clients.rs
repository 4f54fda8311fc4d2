//! Slow and idle clients on real sockets (127.0.0.1 only), the collectors
//! over memory and the admin server on its own listener, as the process
//! runs them.
//!
//! - 25,000 half-open connections (headers begun, never finished), held by
//!   child processes, do not stop a normal request nor `/health/ready` from
//!   answering (when this process's descriptor limit cannot be raised that
//!   far, as many as it allows: the number is printed);
//! - a connection over `max_connections` gets a clear 503
//!   (`connection_limit`), and the header read timeout closes idle and
//!   half-open connections, after which requests are served again;
//! - a body that stops arriving is answered 408 (`body_timeout`);
//! - a gRPC connection that never sends (or only begins) its HTTP/2 preface
//!   is closed after the header read timeout.
//!
//! Every connection is closed when its test ends; connects are bounded in
//! count and each step in time.

mod support;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use xoflow_common::{admin, admin::Health, clock};
use xoflow_ingest::{Collectors, MemoryDelivery};

/// Each step's bound: far above what it takes, so a shared machine does
/// not fail the test, and still a hang is caught.
const STEP: Duration = Duration::from_secs(60);

/// Both collectors and the admin server, stopped on drop of `stop`.
struct Process {
    http: SocketAddr,
    grpc: SocketAddr,
    admin: SocketAddr,
    stop: CancellationToken,
}

async fn start(cfg: &xoflow_ingest::IngestConfig) -> Process {
    let delivery = MemoryDelivery::new();
    let ingestor = xoflow_ingest::ingestor(cfg, Arc::new(delivery)).expect("ingestor");
    let collectors = Collectors::bind_with(cfg, ingestor)
        .await
        .expect("collectors");
    let http = collectors.http_addr().expect("addr");
    let grpc = collectors.grpc_addr().expect("addr");
    let health = Health::new();
    let stop = CancellationToken::new();
    tokio::spawn(collectors.run(
        health.register("ingest"),
        health.register("ingest-http"),
        stop.clone(),
    ));
    let listener = admin::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("admin");
    let admin = listener.local_addr().expect("addr");
    tokio::spawn(admin::serve(listener, health, None, None, stop.clone()));
    Process {
        http,
        grpc,
        admin,
        stop,
    }
}

/// One HTTP/1.1 exchange on a fresh connection: the status and the body.
async fn exchange(addr: SocketAddr, request: String) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn post(body: &str) -> String {
    format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
}

/// Raises this process's descriptor limit towards `want` with `prlimit`
/// (util-linux; the workspace forbids the `unsafe` of calling setrlimit
/// here), as far as it is allowed, and returns the soft limit in force.
fn raise_nofile(want: u64) -> u64 {
    let pid = std::process::id().to_string();
    let set = |n: u64| {
        std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={n}:{n}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !set(want) {
        // Not allowed above the hard limit: the soft one up to it.
        let hard = nofile().1;
        set(hard);
    }
    nofile().0
}

/// The soft and hard descriptor limits, from `/proc/self/limits`.
fn nofile() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("");
    let mut n = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    let soft = n.next().unwrap_or(1024);
    (soft, n.next().unwrap_or(soft))
}

/// Opens `n` connections to `addr`, each sending the start of a request's
/// headers and then nothing (a slowloris client), 256 connects at a time.
async fn half_open(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    let mut pending = JoinSet::new();
    let mut started = 0;
    while out.len() < n {
        while started < n && pending.len() < 256 {
            started += 1;
            pending.spawn(async move {
                let mut tcp = TcpStream::connect(addr).await?;
                tcp.write_all(b"POST /v1/events HTTP/1.1\r\nhost: x\r\n")
                    .await?;
                Ok::<_, std::io::Error>(tcp)
            });
        }
        match pending.join_next().await {
            Some(Ok(Ok(tcp))) => out.push(tcp),
            Some(Ok(Err(e))) => panic!("connection {} failed: {e}", out.len()),
            Some(Err(e)) => panic!("connect task: {e}"),
            None => break,
        }
    }
    out
}

/// Set in the environment of a child process of
/// [`half_open_connections_do_not_stop_requests_or_readiness`]: the
/// collector's address and how many connections the child holds.
const HOLD_ENV: &str = "XOFLOW_TEST_HOLD_HALF_OPEN";

/// Not a test on its own: run by the test below in a child process, so that
/// the clients' descriptors do not count against the collector's limit.
/// Holds its connections until its stdin closes (or a bound passes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_holding_half_open_connections() {
    let Ok(spec) = std::env::var(HOLD_ENV) else {
        return;
    };
    let (addr, n) = spec.split_once(',').expect("ADDR,N");
    let addr: SocketAddr = addr.parse().expect("addr");
    raise_nofile(n.parse::<u64>().expect("n") + 1_000);
    let held = half_open(addr, n.parse().expect("n")).await;
    println!("HOLDING {}", held.len());
    let _ = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::task::spawn_blocking(|| std::io::Read::read(&mut std::io::stdin(), &mut [0; 1])),
    )
    .await;
    drop(held);
}

/// A child process holding `n` half-open connections to `addr`, until
/// dropped (its stdin is closed and it is waited for).
struct Holder(std::process::Child);

impl Holder {
    fn start(addr: SocketAddr, n: usize) -> Self {
        use std::process::{Command, Stdio};
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "child_holding_half_open_connections",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HOLD_ENV, format!("{addr},{n}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("child");
        Self(child)
    }

    /// Waits (blocking) until the child says how many it holds.
    fn holding(&mut self) -> usize {
        use std::io::BufRead;
        let out = self.0.stdout.as_mut().expect("stdout");
        for line in std::io::BufReader::new(out).lines() {
            let line = line.expect("child output");
            // libtest may have begun the line with the test's name.
            if let Some(n) = line.split("HOLDING ").nth(1) {
                return n.trim().parse().expect("count");
            }
        }
        panic!("the child exited before holding its connections");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_do_not_stop_requests_or_readiness() {
    const WANT: usize = 25_000;
    // The collector holds one descriptor per connection, plus room for the
    // rest of the process; the clients are in child processes of their own
    // (no more than 12,500 each).
    let limit = raise_nofile((WANT + 2_000) as u64) as usize;
    let n = WANT.min(limit.saturating_sub(2_000));
    println!("descriptor limit {limit}: {n} half-open connections");
    let mut cfg = support::config("");
    // Room for them all, so they are really held open while the normal
    // request is made; the timeout outlasts the test.
    cfg.max_connections = n + 100;
    cfg.header_read_timeout = Duration::from_secs(300);
    let p = start(&cfg).await;

    let started = std::time::Instant::now();
    let children = n.div_ceil(12_500);
    let mut holders: Vec<Holder> = (0..children)
        .map(|i| Holder::start(p.http, n / children + usize::from(i < n % children)))
        .collect();
    let (held, holders): (usize, Vec<Holder>) = tokio::time::timeout(
        STEP,
        tokio::task::spawn_blocking(move || {
            let held = holders.iter_mut().map(Holder::holding).sum();
            (held, holders)
        }),
    )
    .await
    .expect("connects within the bound")
    .expect("holders");
    println!("{held} half-open connections in {:?}", started.elapsed());
    assert_eq!(held, n);

    let now = clock::now_unix_millis();
    let event = support::base("order", "slowloris-ok", now).to_string();
    let started = std::time::Instant::now();
    let (status, text) = tokio::time::timeout(STEP, exchange(p.http, post(&event)))
        .await
        .expect("answered");
    println!(
        "normal request beside them: {status} in {:?}",
        started.elapsed()
    );
    assert_eq!(status, 200, "{text}");
    let started = std::time::Instant::now();
    let (status, text) = tokio::time::timeout(STEP, exchange(p.admin, get("/health/ready")))
        .await
        .expect("answered");
    println!(
        "/health/ready beside them: {status} in {:?}",
        started.elapsed()
    );
    assert_eq!(status, 200, "{text}");
    // The children close their connections and exit.
    drop(holders);
    p.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_is_refused_and_idle_connections_time_out() {
    let mut cfg = support::config("");
    cfg.max_connections = 20;
    cfg.header_read_timeout = Duration::from_millis(500);
    let p = start(&cfg).await;

    let mut idle = half_open(p.http, 20).await;
    // Wait until all 20 are accepted (the 21st is refused, not queued).
    let (status, text) = tokio::time::timeout(STEP, async {
        loop {
            let r = exchange(p.http, get("/openapi.yaml")).await;
            if r.0 == 503 {
                return r;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("refused");
    assert!(
        text.contains("connection_limit") && text.contains("retry-after: 1"),
        "{text}"
    );
    assert_eq!(status, 503);
    // The admin server is not behind that limit.
    assert_eq!(exchange(p.admin, get("/health/ready")).await.0, 200);

    // The header read timeout closes every half-open connection.
    for tcp in &mut idle {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(STEP, tcp.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "a half-open connection stayed open");
    }
    // ... and the collector serves again.
    let (status, _) = tokio::time::timeout(STEP, async {
        loop {
            let r = exchange(p.http, get("/openapi.yaml")).await;
            if r.0 != 503 {
                return r;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("served again");
    assert_eq!(status, 200);

    // An idle kept-alive connection is closed after the same timeout.
    let mut kept = TcpStream::connect(p.http).await.expect("connect");
    kept.write_all(b"GET /openapi.yaml HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(STEP, kept.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "an idle kept-alive connection stayed open");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    p.stop.cancel();
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_a_408() {
    let mut cfg = support::config("");
    cfg.body_read_timeout = Duration::from_millis(300);
    let p = start(&cfg).await;
    let mut tcp = TcpStream::connect(p.http).await.expect("connect");
    tcp.write_all(
        b"POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n[{",
    )
    .await
    .expect("write");
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(STEP, tcp.read(&mut answer))
        .await
        .expect("answered")
        .expect("read");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    p.stop.cancel();
}

#[tokio::test]
async fn a_grpc_connection_without_its_preface_is_closed() {
    let mut cfg = support::config("");
    cfg.header_read_timeout = Duration::from_millis(300);
    let p = start(&cfg).await;
    let silent = TcpStream::connect(p.grpc).await.expect("connect");
    let mut partial = TcpStream::connect(p.grpc).await.expect("connect");
    // The first 10 of the preface's 24 bytes, then nothing.
    partial.write_all(b"PRI * HTTP").await.expect("write");
    for (what, mut tcp) in [("silent", silent), ("partial preface", partial)] {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(STEP, tcp.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "a {what} gRPC connection stayed open");
    }
    p.stop.cancel();
}
