//! Serving under attack: connections that never finish a request, floods of connections and
//! of requests. Timeouts run on tokio's paused clock; the server is the exporter's own,
//! driven with raw sockets so that a test can stop halfway through a request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use sfb_exporter::config::ServerLimits;
use sfb_exporter::serve::server::{limit_in_flight, serve, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::helpers::H2;
use crate::process::{demo_json, exporter, Process};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: exporter\r\n\r\n";

struct Server {
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn limits() -> ServerLimits {
    ServerLimits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(600),
        max_connections: Some(64),
        max_requests: 0,
    }
}

async fn start(app: Router, tls: Option<TlsConfig>, limits: ServerLimits) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(serve(listener, app, tls, limits, cancel.clone()));
    Server { addr, cancel }
}

fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello\n" }))
}

/// Whether the peer has closed `stream`: EOF or a reset, rather than data or a pause.
async fn closed<S: AsyncReadExt + Unpin>(stream: &mut S) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf))
        .await
        .is_ok_and(|read| read.is_err() || read.is_ok_and(|n| n == 0))
}

/// Sends one request and reads its whole response (one with a Content-Length).
async fn exchange<S: AsyncReadExt + AsyncWriteExt + Unpin>(stream: &mut S) -> String {
    stream.write_all(REQUEST).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.parse::<usize>().ok())
                .expect("a Content-Length");
            if body.len() >= length {
                return text.into_owned();
            }
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed mid-response: {text:?}");
        response.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let server = start(hello(), None, limits()).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(!closed(&mut idle).await, "closed before the timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(closed(&mut idle).await, "still open after the timeout");
}

#[tokio::test(start_paused = true)]
async fn slowloris_is_closed_within_the_header_timeout_of_its_first_byte() {
    let server = start(hello(), None, limits()).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let mut sent = 1;
    // A header line every 5 s: each one is progress, but the head never completes.
    while !closed(&mut slow).await {
        assert!(sent < 4, "still open after {} s of headers", sent * 5);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let _ = slow.write_all(b"X-Slow: 1\r\n").await;
        sent += 1;
    }
    assert!(sent >= 2, "closed before the timeout");
}

#[tokio::test(start_paused = true)]
async fn kept_alive_connections_outlive_a_scrape_interval_but_not_the_idle_timeout() {
    let server = start(hello(), None, limits()).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    assert!(exchange(&mut conn).await.starts_with("HTTP/1.1 200"));
    // Five minutes between scrapes: longer than the header timeout, shorter than the idle one.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(!closed(&mut conn).await);
    assert!(exchange(&mut conn).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_secs(601)).await;
    assert!(closed(&mut conn).await, "open past the idle timeout");
}

#[tokio::test(start_paused = true)]
async fn a_kept_alive_connection_that_starts_a_head_must_finish_it_in_time() {
    let server = start(hello(), None, limits()).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    assert!(exchange(&mut conn).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_secs(60)).await;
    conn.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(closed(&mut conn).await, "a started head may not linger");
}

/// A server and a client configuration that trust one certificate; both offer `alpn`.
fn self_signed_tls(alpn: &[&[u8]]) -> (TlsConfig, rustls::ClientConfig) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    client.alpn_protocols = server.alpn_protocols.clone();
    (Arc::new(arc_swap::ArcSwap::from_pointee(server)), client)
}

#[tokio::test(start_paused = true)]
async fn tls_connections_that_go_quiet_are_closed_handshake_included() {
    let (tls, client) = self_signed_tls(&[]);
    let server = start(hello(), Some(tls), limits()).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // Never starts the handshake.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Finishes the handshake, then sends nothing.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut quiet = connector.connect(name.clone(), tcp).await.unwrap();
    // A complete exchange works, and its connection stays open between scrapes.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut scraper = connector.connect(name, tcp).await.unwrap();
    assert!(exchange(&mut scraper).await.starts_with("HTTP/1.1 200"));

    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(closed(&mut silent).await, "no handshake, still open");
    assert!(
        closed(&mut quiet).await,
        "handshake then silence, still open"
    );
    assert!(
        !closed(&mut scraper).await,
        "the scraper's kept-alive connection was closed"
    );
    assert!(exchange(&mut scraper).await.starts_with("HTTP/1.1 200"));
}

/// Whether the peer has closed `stream`, once whatever it sent before is read.
async fn closed_after_draining<S: AsyncReadExt + Unpin>(stream: &mut S) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn http2_connections_have_the_same_deadlines() {
    let (tls, client) = self_signed_tls(&[b"h2", b"http/1.1"]);
    let server = start(hello(), Some(tls), limits()).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // Agrees on h2, then sends nothing, not even the connection preface.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut quiet = connector.connect(name.clone(), tcp).await.unwrap();
    assert_eq!(quiet.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // Sends the preface and its settings, but never a request.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let preface_only = H2::handshake(connector.connect(name.clone(), tcp).await.unwrap())
        .await
        .unwrap();
    // A scraper: a request, then quiet between scrapes.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut scraper = H2::handshake(connector.connect(name, tcp).await.unwrap())
        .await
        .unwrap();
    assert_eq!(scraper.get("/", &[]).await.unwrap().0, 200);

    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(
        closed_after_draining(&mut quiet).await,
        "h2 agreed then silence, still open"
    );
    assert!(
        preface_only.closed(),
        "h2 preface without a request, still open"
    );
    assert!(!scraper.closed(), "the scraper's connection was closed");
    // Five minutes between scrapes, then idle past the keep-alive timeout.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(scraper.get("/", &[]).await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_secs(601)).await;
    assert!(scraper.closed(), "h2 connection open past the idle timeout");
}

#[tokio::test]
async fn plain_http_is_http1_only() {
    let server = start(hello(), None, limits()).await;
    // An h2c client with prior knowledge gets no HTTP/2 connection.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let h2c = H2::handshake(tcp).await;
    let refused = match h2c {
        Err(_) => true,
        Ok(mut h2c) => h2c.get("/", &[]).await.is_err(),
    };
    assert!(refused, "plain HTTP answered an HTTP/2 request");
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    assert!(exchange(&mut conn).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn tls_without_h2_in_alpn_is_http1_only() {
    // As with http2: false, the server offers only http/1.1; a client that offers nothing
    // and then speaks HTTP/2 anyway is not answered in HTTP/2.
    let (tls, client) = self_signed_tls(&[b"http/1.1"]);
    let server = start(hello(), Some(tls), limits()).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let stream = connector.connect(name.clone(), tcp).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let refused = match H2::handshake(stream).await {
        Err(_) => true,
        Ok(mut h2) => h2.get("/", &[]).await.is_err(),
    };
    assert!(refused, "HTTP/2 answered without h2 in ALPN");
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    assert!(exchange(&mut stream).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(start_paused = true)]
async fn connections_beyond_the_cap_are_refused_and_scrapes_pass_once_the_flood_times_out() {
    let server = start(
        hello(),
        None,
        ServerLimits {
            max_connections: Some(8),
            ..limits()
        },
    )
    .await;
    let mut flood = Vec::new();
    for _ in 0..8 {
        flood.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Let the server take all eight before the ninth arrives.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        closed(&mut refused).await,
        "the ninth connection was not refused"
    );
    for conn in &mut flood {
        assert!(!closed(conn).await);
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut scrape = TcpStream::connect(server.addr).await.unwrap();
    assert!(exchange(&mut scrape).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(start_paused = true)]
async fn requests_beyond_max_requests_get_503_at_once() {
    let release = Arc::new(Notify::new());
    let entered = Arc::new(tokio::sync::Semaphore::new(0));
    let (held, arrived) = (Arc::clone(&release), Arc::clone(&entered));
    let slow = Router::new().route(
        "/",
        get(move || {
            let (held, arrived) = (Arc::clone(&held), Arc::clone(&arrived));
            async move {
                arrived.add_permits(1);
                held.notified().await;
                "hello\n"
            }
        }),
    );
    let server = start(limit_in_flight(slow, 2), None, limits()).await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    first.write_all(REQUEST).await.unwrap();
    second.write_all(REQUEST).await.unwrap();
    let _both = entered.acquire_many(2).await.unwrap();

    let mut third = TcpStream::connect(server.addr).await.unwrap();
    let response = exchange(&mut third).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("--web.max-requests"), "{response}");

    release.notify_waiters();
    let mut buf = [0u8; 256];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Slots are given back: the refused client is served now.
    release.notify_one();
    let again = exchange(&mut third).await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
}

/// The binary under a low file descriptor limit: its connection cap stays below the limit, so
/// a flood of idle connections is refused and logged once instead of stopping every scrape,
/// and the process serves again when the flood is gone.
#[test]
fn a_flood_at_a_low_fd_limit_is_refused_cleanly_and_logged_once() {
    use std::os::unix::process::CommandExt;
    let mut cmd = demo_json();
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 96,
                rlim_max: 96,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let process = Process::spawn(&mut cmd);
    let listening = process.log_line(|l| l["message"] == "sfb-exporter listening");
    let addr: SocketAddr = listening["address"].as_str().unwrap().parse().unwrap();

    let flood: Vec<std::net::TcpStream> = (0..150)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // The cap (72 here) is meant to come first, but the demo's own sockets share the 24 fds
    // held back, so at this tiny limit accept may run out of fds first: either way the flood
    // must be refused and logged.
    let refused = process.log_line(|l| {
        l["message"].as_str().is_some_and(|m| {
            m.contains("too many open connections") || m.contains("cannot accept a connection")
        })
    });
    assert_eq!(refused["level"], "WARN", "{refused}");
    drop(flood);
    let scrape = || -> Option<()> {
        let mut conn = std::net::TcpStream::connect(addr).ok()?;
        std::io::Write::write_all(&mut conn, b"GET /healthz HTTP/1.0\r\n\r\n").ok()?;
        let mut response = String::new();
        std::io::Read::read_to_string(&mut conn, &mut response).ok()?;
        response.starts_with("HTTP/1.0 200").then_some(())
    };
    // The refused connections were closed at once and the flood's own are gone: the first
    // scrape after it may still race the server's cleanup, so a few tries are allowed.
    let scraped = (0..100).any(|_| {
        scrape().is_some() || {
            std::thread::sleep(Duration::from_millis(50));
            false
        }
    });
    assert!(scraped, "no scrape got through after the flood");
}

/// A file the operator names that is a FIFO (a mistake, or a trap) would block its reader
/// until a writer came, out of reach of SIGTERM: the secret file, the web config and the web
/// config's certificate are each refused at once, in one line naming the file.
#[test]
fn a_fifo_given_as_a_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path it is given.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let web_config = dir.path().join("web.yml");
    std::fs::write(
        &web_config,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            fifo.display(),
            fifo.display()
        ),
    )
    .unwrap();
    let fifo_arg = fifo.to_str().unwrap();
    let web_arg = web_config.to_str().unwrap();
    for args in [
        vec!["--azure.client-secret-file", fifo_arg],
        vec!["--demo", "--web.config.file", fifo_arg],
        vec!["--demo", "--web.config.file", web_arg],
    ] {
        let mut cmd = exporter();
        cmd.env("AZURE_TENANT_ID", "t")
            .env("AZURE_CLIENT_ID", "c")
            .args(["--web.listen-address", "127.0.0.1:0"])
            .args(&args);
        // wait_exit bounds the wait: a reader blocked on the FIFO fails the test, not CI.
        let mut process = Process::spawn(&mut cmd);
        let status = process.wait_exit();
        assert_eq!(status.code(), Some(1), "{args:?}: {status:?}");
        let stderr = process.rest_of_log().join("\n");
        crate::process::assert_one_line(&stderr, &["not a regular file", "fifo"]);
    }
}

/// An access token that cannot go into a header fails the refresh as auth, and is not kept:
/// the next refresh asks for a new token.
#[tokio::test]
async fn a_token_with_control_characters_is_refused_as_auth_and_never_cached() {
    use crate::helpers::*;
    use sfb_exporter::report::Period;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, ResponseTemplate};

    let (graph, download) = mock_servers().await;
    Mock::given(method("POST"))
        .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "token_type": "Bearer",
            "expires_in": 3599,
            "access_token": "broken\r\ntoken",
        })))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&graph)
        .await;
    token_mock(3599).mount(&graph).await;
    mount_report(
        &graph,
        &download,
        Period::D7,
        &format!("{HEADER}\n2024-03-05,2024-03-04,7,1,2,3\n"),
    )
    .await;
    let options = Options {
        interval: Duration::from_millis(100),
        ..Default::default()
    };
    let app = spawn_app(graph, download, options).await;
    let body = app
        .metrics_when("a success after the refused token", |b| {
            sample(b, &success(Period::D7)) == Some(1.0)
        })
        .await;
    assert_eq!(
        sample(&body, &failures(Period::D7, "auth")),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, &failures(Period::D7, "network")),
        Some(0.0),
        "{body}"
    );
    assert_eq!(app.requests_to(&app.graph, "/oauth2/").await.len(), 2);
    app.stop().await;
}
