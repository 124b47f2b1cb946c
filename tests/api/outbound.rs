//! Outbound TLS as an operator behind a TLS-inspecting proxy meets it: the identity platform,
//! Graph and the download behind HTTPS fronts whose CA only `SSL_CERT_FILE` names, reached
//! directly or through an `HTTPS_PROXY` tunnel. The exporter runs as a child process, since
//! the variables are the process's own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sfb_exporter::Period;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;
use crate::process::{assert_one_line, exporter_against, run, Process};

/// A private CA, as a TLS-inspecting proxy has, and a server certificate it issued for the
/// loopback addresses the fronts listen on.
struct Pki {
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    fn new() -> Pki {
        let ca = TestCa::new("corporate proxy CA");
        let (server_cert, server_key) = ca.server(&["localhost", "127.0.0.1", "127.0.0.2"]);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![server_cert.der().clone()], key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("proxy-ca.pem");
        std::fs::write(&ca_file, ca.cert.pem()).unwrap();
        Pki {
            _dir: dir,
            ca_file,
            server: Arc::new(server),
        }
    }
}

/// An HTTPS front for a plain-HTTP fake: TLS ends here and the bytes go on to the fake.
struct TlsFront {
    listener: Option<TcpListener>,
    addr: SocketAddr,
    /// Handshakes that completed.
    handshakes: Arc<AtomicUsize>,
}

impl TlsFront {
    /// Listening, so that its address can be named before the fake behind it is known.
    async fn bind(ip: &str) -> TlsFront {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        TlsFront {
            addr: listener.local_addr().unwrap(),
            listener: Some(listener),
            handshakes: Arc::default(),
        }
    }

    fn relay_to(&mut self, backend: SocketAddr, pki: &Pki) {
        let listener = self.listener.take().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&pki.server));
        let handshakes = Arc::clone(&self.handshakes);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, handshakes) = (acceptor.clone(), Arc::clone(&handshakes));
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake: nothing to relay.
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
    }
}

/// An HTTP CONNECT proxy, as corporate proxies are configured: the targets it was asked for.
async fn connect_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let targets = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&targets);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                // Byte by byte up to the blank line: the TLS bytes after it are the tunnel's.
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let Ok(byte) = client.read_u8().await else {
                        return;
                    };
                    head.push(byte);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let Some(target) = head
                    .strip_prefix("CONNECT ")
                    .and_then(|rest| rest.split(' ').next())
                else {
                    let _ = client.write_all(b"HTTP/1.1 405 CONNECT only\r\n\r\n").await;
                    return;
                };
                seen.lock().unwrap().push(target.to_string());
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
                if client.write_all(established).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, targets)
}

/// The identity platform and Graph behind one HTTPS front, the download behind another.
struct HttpsFakes {
    /// Graph's and the identity platform's base URL.
    base: String,
    graph_front: TlsFront,
    download_front: TlsFront,
    _fakes: Fakes,
}

/// [`HttpsFakes`] serving D7, the download's front at `download_ip`.
async fn https_fakes(pki: &Pki, download_ip: &str) -> HttpsFakes {
    let mut graph_front = TlsFront::bind("127.0.0.1").await;
    let mut download_front = TlsFront::bind(download_ip).await;
    let location = format!(
        "https://{}/reports/D7.csv?{DOWNLOAD_SIG}",
        download_front.addr
    );
    // Any client credentials form: token_ok's mock expects the scope of an http base.
    let fakes = Scenario::new()
        .await
        .token_answers(token_response(3599))
        .report_redirects_to(Period::D7, &location)
        .download(Period::D7, ONE_DAY)
        .servers()
        .await;
    graph_front.relay_to(*fakes.graph.address(), pki);
    download_front.relay_to(*fakes.download.address(), pki);
    HttpsFakes {
        base: format!("https://{}", graph_front.addr),
        graph_front,
        download_front,
        _fakes: fakes,
    }
}

fn message(line: &serde_json::Value) -> &str {
    line["message"].as_str().unwrap_or("")
}

/// Log lines until the exporter listens and D7 has refreshed or failed; its address and the
/// outcome's line.
fn listening_and_outcome(process: &Process) -> (String, serde_json::Value) {
    let lines = process.log_until(|l| {
        l.iter().any(|l| message(l) == "sfb-exporter listening")
            && l.iter().any(|l| {
                message(l) == "report refreshed" || message(l).starts_with("refresh failed")
            })
    });
    let lines: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let address = lines
        .iter()
        .find(|l| message(l) == "sfb-exporter listening")
        .map(|l| l["address"].as_str().unwrap().to_string())
        .unwrap();
    let outcome = lines
        .into_iter()
        .find(|l| message(l) == "report refreshed" || message(l).starts_with("refresh failed"))
        .unwrap();
    (address, outcome)
}

/// /metrics once `series` has `value`, or a panic after a generous deadline.
async fn metrics_when(address: &str, series: &str, value: f64) -> String {
    let url = format!("http://{address}/metrics");
    let client = test_client();
    let fetch = || async {
        match client.get(&url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let published = eventually(|| async { sample(&fetch().await, series) == Some(value) }).await;
    let body = fetch().await;
    assert!(published, "{series} is not {value} in:\n{body}");
    body
}

fn audio_video() -> String {
    format!(
        r#"sfb_organizer_activity_seconds{{conference_type="audio_video",period="D7",tenant="{TENANT}"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_given_only_by_ssl_cert_file_serves_the_whole_pipeline() {
    let pki = Pki::new();
    let fakes = https_fakes(&pki, "127.0.0.1").await;
    let process = Process::spawn(
        exporter_against(&fakes.base, &["--report.periods", "D7"])
            .env("SSL_CERT_FILE", &pki.ca_file),
    );
    let (address, outcome) = listening_and_outcome(&process);
    assert_eq!(message(&outcome), "report refreshed", "{outcome}");
    let body = metrics_when(&address, &success(Period::D7), 1.0).await;
    assert_sample(&body, &audio_video(), Some(60.0));
    // Token and report through one front, the download through the other, all over TLS.
    assert!(fakes.graph_front.handshakes.load(Ordering::SeqCst) >= 1);
    assert!(fakes.download_front.handshakes.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ssl_cert_file_the_same_fake_is_refused_in_words() {
    let pki = Pki::new();
    let fakes = https_fakes(&pki, "127.0.0.1").await;
    // This machine's store (or the bundled roots, without one) does not hold the private CA.
    let process = Process::spawn(&mut exporter_against(
        &fakes.base,
        &["--report.periods", "D7", "--graph.max-retries", "0"],
    ));
    let (address, outcome) = listening_and_outcome(&process);
    let line = outcome.to_string();
    for needle in [
        "refresh failed",
        "the server's certificate is not signed by a trusted certificate authority",
        "its CA must be trusted",
        "\"reason\":\"network\"",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from {line}");
    }
    let body = metrics_when(&address, &failures(Period::D7, "network"), 1.0).await;
    assert_sample(&body, &success(Period::D7), Some(0.0));
    assert_eq!(fakes.graph_front.handshakes.load(Ordering::SeqCst), 0);
}

/// HTTPS_PROXY carries the TLS sessions to Graph in a CONNECT tunnel (the session is still
/// with Graph, whose certificate SSL_CERT_FILE vouches for); the host NO_PROXY names is
/// reached directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_tunnels_and_no_proxy_goes_direct() {
    let pki = Pki::new();
    let fakes = https_fakes(&pki, "127.0.0.2").await;
    let (proxy, targets) = connect_proxy().await;
    let process = Process::spawn(
        exporter_against(&fakes.base, &["--report.periods", "D7"])
            .env("SSL_CERT_FILE", &pki.ca_file)
            .env("HTTPS_PROXY", format!("http://{proxy}"))
            .env("NO_PROXY", "127.0.0.2"),
    );
    let (address, outcome) = listening_and_outcome(&process);
    assert_eq!(message(&outcome), "report refreshed", "{outcome}");
    metrics_when(&address, &audio_video(), 60.0).await;
    let targets = targets.lock().unwrap().clone();
    assert!(!targets.is_empty(), "nothing went through the proxy");
    for target in &targets {
        assert_eq!(*target, fakes.graph_front.addr.to_string(), "{targets:?}");
    }
    assert!(fakes.download_front.handshakes.load(Ordering::SeqCst) >= 1);
}

#[test]
fn an_ssl_cert_file_that_cannot_be_used_stops_startup_and_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let expected = format!("SSL_CERT_FILE {}: cannot read the file", missing.display());
    let base = "https://127.0.0.1:1";
    let (code, stderr) = run(exporter_against(base, &[]).env("SSL_CERT_FILE", &missing));
    assert_ne!(code, 0);
    assert_one_line(&stderr, &["cannot set up the HTTP client", &expected]);

    let (code, stderr) =
        run(exporter_against(base, &["--config.check"]).env("SSL_CERT_FILE", &missing));
    assert_eq!(code, 1, "{stderr}");
    assert_one_line(&stderr, &[&expected]);

    let pki = Pki::new();
    let out = exporter_against(base, &["--config.check"])
        .env("SSL_CERT_FILE", &pki.ca_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = format!(
        "outbound TLS roots: SSL_CERT_FILE {} (1 certificate)\n",
        pki.ca_file.display()
    );
    assert!(stdout.contains(&line), "{line:?} missing from\n{stdout}");
}

/// `*` in NO_PROXY (or no_proxy), alone or in a list, sends nothing through the proxy, as
/// curl takes it; reqwest alone still tunnelled to IP addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_in_no_proxy_sends_nothing_through_the_proxy() {
    let pki = Pki::new();
    let fakes = https_fakes(&pki, "127.0.0.2").await;
    let (proxy, targets) = connect_proxy().await;
    for (variable, hosts) in [
        ("NO_PROXY", "*"),
        ("no_proxy", "*"),
        ("NO_PROXY", "localhost,*"),
    ] {
        let process = Process::spawn(
            exporter_against(&fakes.base, &["--report.periods", "D7"])
                .env("SSL_CERT_FILE", &pki.ca_file)
                .env("HTTPS_PROXY", format!("http://{proxy}"))
                .env(variable, hosts),
        );
        let (_, outcome) = listening_and_outcome(&process);
        assert_eq!(
            message(&outcome),
            "report refreshed",
            "{variable}={hosts}: {outcome}"
        );
        let targets = targets.lock().unwrap().clone();
        assert!(
            targets.is_empty(),
            "{variable}={hosts}: through the proxy: {targets:?}"
        );
    }
    assert!(fakes.graph_front.handshakes.load(Ordering::SeqCst) >= 3);
}

/// SSL_CERT_FILE or SSL_CERT_DIR set empty is unset: the system store, not the path "".
#[cfg(all(unix, not(target_os = "macos")))]
#[test]
fn an_empty_ssl_cert_variable_leaves_the_system_store() {
    let base = "https://127.0.0.1:1";
    let check = |var: Option<&str>| {
        let mut cmd = exporter_against(base, &["--config.check"]);
        if let Some(var) = var {
            cmd.env(var, "");
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{var:?}: {stdout}");
        stdout
    };
    let system = "outbound TLS roots: the system store (";
    if !std::path::Path::new("/etc/ssl/certs").is_dir() || !check(None).contains(system) {
        eprintln!("skipped: this machine has no system CA store (/etc/ssl/certs) to fall back to");
        return;
    }
    for var in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
        let stdout = check(Some(var));
        assert!(
            stdout.contains(system),
            "{var}= : {system:?} missing from\n{stdout}"
        );
        assert!(!stdout.contains("warning:"), "{var}= : {stdout}");
    }
}

/// A proxy variable reqwest would skip (not a URL) or could not use (SOCKS, another scheme)
/// stops startup and fails the check, in one line naming it, credentials masked; the check
/// prints the proxy it would use.
#[test]
fn an_unusable_https_proxy_stops_startup_and_the_check() {
    let base = "https://127.0.0.1:1";
    let cases = [
        ("HTTPS_PROXY", "http://[::1", "not a URL"),
        ("HTTPS_PROXY", "http//127.0.0.1:18888", "not a URL"),
        ("https_proxy", "http://alice:s3cret@[::1", "not a URL"),
        (
            "HTTPS_PROXY",
            "ftp://127.0.0.1:21",
            "ftp:// is not a proxy scheme",
        ),
        (
            "ALL_PROXY",
            "socks5://alice:s3cret@127.0.0.1:1080",
            "SOCKS proxies are not supported",
        ),
    ];
    for (variable, value, why) in cases {
        let named = format!("{variable}=");
        let (code, stderr) = run(exporter_against(base, &[]).env(variable, value));
        assert_ne!(code, 0, "{variable}={value}");
        assert_one_line(&stderr, &["cannot set up the HTTP client", &named, why]);
        assert!(
            !stderr.contains("s3cret") && !stderr.contains("alice"),
            "{stderr}"
        );

        let (code, stderr) = run(exporter_against(base, &["--config.check"]).env(variable, value));
        assert_eq!(code, 1, "{variable}={value}: {stderr}");
        assert_one_line(&stderr, &[&named, why]);
        assert!(
            !stderr.contains("s3cret") && !stderr.contains("alice"),
            "{stderr}"
        );
    }

    let check = |vars: &[(&str, &str)]| {
        let mut cmd = exporter_against(base, &["--config.check"]);
        cmd.envs(vars.iter().copied());
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{vars:?}: {stdout}");
        stdout
    };
    let stdout = check(&[
        ("HTTPS_PROXY", "http://alice:s3cret@127.0.0.1:3128"),
        ("NO_PROXY", "127.0.0.2"),
    ]);
    let line =
        "outbound proxy: http://***@127.0.0.1:3128 (from HTTPS_PROXY), direct to NO_PROXY 127.0.0.2\n";
    assert!(stdout.contains(line), "{line:?} missing from\n{stdout}");
    assert!(
        !stdout.contains("s3cret") && !stdout.contains("alice"),
        "{stdout}"
    );
    assert!(check(&[]).contains("outbound proxy: none\n"));
    let stdout = check(&[("HTTPS_PROXY", "http://127.0.0.1:3128"), ("no_proxy", "*")]);
    assert!(
        stdout.contains("outbound proxy: none (no_proxy holds *)\n"),
        "{stdout}"
    );
}

/// A proxy that refuses every CONNECT: the CONNECT requests it was sent.
async fn refusing_proxy() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connects = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&connects);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let Ok(byte) = client.read_u8().await else {
                        return;
                    };
                    head.push(byte);
                }
                if head.starts_with(b"CONNECT ") {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
            });
        }
    });
    (addr, connects)
}

/// A refused CONNECT fails the refresh naming the proxy (host and port, never its
/// credentials) and the variable that named it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_names_the_proxy() {
    let pki = Pki::new();
    let fakes = https_fakes(&pki, "127.0.0.1").await;
    let (proxy, connects) = refusing_proxy().await;
    let process = Process::spawn(
        exporter_against(
            &fakes.base,
            &["--report.periods", "D7", "--graph.max-retries", "0"],
        )
        .env("SSL_CERT_FILE", &pki.ca_file)
        .env("HTTPS_PROXY", format!("http://alice:s3cret@{proxy}")),
    );
    let (_, outcome) = listening_and_outcome(&process);
    let line = outcome.to_string();
    for needle in [
        "refresh failed",
        &format!("through the proxy {proxy} (HTTPS_PROXY): "),
        "tunnel error",
        "\"reason\":\"network\"",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from {line}");
    }
    assert!(
        !line.contains("s3cret") && !line.contains("alice"),
        "{line}"
    );
    assert!(connects.load(Ordering::SeqCst) >= 1);
    assert_eq!(fakes.graph_front.handshakes.load(Ordering::SeqCst), 0);
}
