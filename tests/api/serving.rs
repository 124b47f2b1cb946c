//! Serving: gzip, and --web.config.file (TLS, mutual TLS, basic auth, headers) with real
//! handshakes against certificates generated for the test.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use crate::helpers::*;
use crate::process::{assert_one_line, exporter, run};

/// A CA, a server certificate for localhost signed by it, and a client certificate.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_pem: String,
    server_pem: (String, String),
}

impl Pki {
    fn new() -> Pki {
        let ca = TestCa::new("sfb-exporter test CA");
        let (server, server_key) = ca.server(&["localhost"]);
        let (client, client_key) = ca.client();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca_pem: ca.cert.pem(),
            client_pem: format!("{}{}", client.pem(), client_key.serialize_pem()),
            server_pem: (server.pem(), server_key.serialize_pem()),
        };
        pki.install_server_cert(pki.dir.path());
        std::fs::write(pki.dir.path().join("ca.crt"), ca.cert.pem()).unwrap();
        pki
    }

    /// Writes this PKI's server certificate and key as server.crt and server.key in `dir`.
    fn install_server_cert(&self, dir: &std::path::Path) {
        std::fs::write(dir.join("server.crt"), &self.server_pem.0).unwrap();
        std::fs::write(dir.join("server.key"), &self.server_pem.1).unwrap();
    }

    /// Writes a web config next to the certificates (which it names relatively).
    fn web_config(&self, yaml: &str) -> PathBuf {
        let path = self.dir.path().join("web.yml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn client(&self, app: &TestApp, with_client_cert: bool) -> reqwest::Client {
        let mut builder = test_client_builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .resolve("localhost", app.addr)
            .timeout(Duration::from_secs(10));
        if with_client_cert {
            builder =
                builder.identity(reqwest::Identity::from_pem(self.client_pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }
}

const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

async fn spawn_with(web_config: PathBuf) -> TestApp {
    Scenario::healthy()
        .await
        .web_config(web_config)
        .spawn()
        .await
}

fn https(app: &TestApp, path: &str) -> String {
    format!("https://localhost:{}{path}", app.addr.port())
}

#[tokio::test]
async fn gzip_is_served_when_asked_for_and_matches_the_plain_body() {
    let app = Scenario::healthy().await.spawn().await;
    let plain = app
        .metrics_when("the first refresh", |b| b.contains("sfb_report_rows{"))
        .await;
    let response = app.get_metrics_gzip().await;
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.headers()["vary"], "Accept-Encoding");
    let compressed = response.bytes().await.unwrap();
    assert!(
        compressed.len() < plain.len() / 3,
        "{} vs {}",
        compressed.len(),
        plain.len()
    );
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    // The process_* readings may be a second apart.
    let families = |body: &str| -> Vec<String> {
        body.lines()
            .filter(|l| !l.starts_with("process_"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(families(&unzipped), families(&plain));
    for refused in ["identity", "gzip;q=0", "br"] {
        let r = app
            .http
            .get(format!("http://{}/metrics", app.addr))
            .header("accept-encoding", refused)
            .send()
            .await
            .unwrap();
        assert!(r.headers().get("content-encoding").is_none(), "{refused}");
    }
    app.stop().await;
}

#[tokio::test]
async fn tls_serves_every_endpoint() {
    let pki = Pki::new();
    let app = spawn_with(pki.web_config(TLS)).await;
    let client = pki.client(&app, false);
    for path in ["/", "/healthz", "/readyz", "/metrics"] {
        let response = client.get(https(&app, path)).send().await.unwrap();
        assert!(
            response.status().is_success() || response.status() == 503,
            "{path}: {}",
            response.status()
        );
    }
    let body = client
        .get(https(&app, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("sfb_build_info"), "{body}");
    // Plain HTTP on the TLS port is refused.
    let plain = app
        .http
        .get(format!("http://{}/metrics", app.addr))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    app.stop().await;
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let pki = Pki::new();
    let config = format!("{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS13\n");
    let app = spawn_with(pki.web_config(&config)).await;
    let refused = pki
        .client(&app, false)
        .get(https(&app, "/metrics"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "served without a client certificate: {refused:?}"
    );
    let accepted = pki
        .client(&app, true)
        .get(https(&app, "/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn basic_auth_guards_every_path_and_headers_are_set() {
    let pki = Pki::new();
    let hash = bcrypt::hash("correct horse", 4).unwrap();
    let config = format!(
        "{TLS}basic_auth_users:\n  prometheus: {hash}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n"
    );
    let app = spawn_with(pki.web_config(&config)).await;
    let client = pki.client(&app, false);
    for path in ["/", "/healthz", "/readyz", "/metrics", "/no-such-page"] {
        for (user, password) in [
            (None, None),
            (Some("prometheus"), Some("wrong")),
            (Some("nobody"), Some("correct horse")),
        ] {
            let mut request = client.get(https(&app, path));
            if let Some(user) = user {
                request = request.basic_auth(user, password);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{path} {user:?}");
            assert_eq!(
                response.headers()["www-authenticate"],
                "Basic realm=\"sfb-exporter\""
            );
            assert_eq!(response.headers()["x-frame-options"], "deny");
        }
        let response = client
            .get(https(&app, path))
            .basic_auth("prometheus", Some("correct horse"))
            .send()
            .await
            .unwrap();
        // /readyz may still be 503 (not ready), which is not an auth answer either.
        let expected: &[u16] = match path {
            "/no-such-page" => &[404],
            "/readyz" => &[200, 503],
            _ => &[200],
        };
        assert!(
            expected.contains(&response.status().as_u16()),
            "{path}: {}",
            response.status()
        );
        assert_eq!(
            response.headers()["strict-transport-security"],
            "max-age=31536000"
        );
    }
    app.stop().await;
}

#[test]
fn a_bad_web_config_stops_startup_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
            "missing.crt",
        ),
        (
            // Files are read in the toolkit's order: the certificate first.
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
            "cert_file",
        ),
        ("basic_auth_users:\n  alice: hunter2\n", "not a bcrypt hash"),
        (
            "tls_server_config:\n  cert_file: a\n  key_fil: b\n",
            "unknown field",
        ),
    ];
    for (yaml, needle) in cases {
        let path = dir.path().join("web.yml");
        std::fs::write(&path, yaml).unwrap();
        let (code, stderr) = run(exporter()
            .args([
                "--demo",
                "--web.listen-address",
                "127.0.0.1:0",
                "--web.config.file",
            ])
            .arg(&path));
        assert_eq!(code, 1, "{yaml}: {stderr}");
        assert_one_line(&stderr, &["--web.config.file", needle]);
    }
}

#[tokio::test]
async fn the_web_config_is_reloaded_when_its_files_change() {
    let pki = Pki::new();
    let user = |name: &str| {
        format!(
            "basic_auth_users:\n  {name}: {}\n",
            bcrypt::hash("pw", 4).unwrap()
        )
    };
    let path = pki.web_config(&format!("{TLS}{}", user("alice")));
    let app = spawn_with(path.clone()).await;
    let client = pki.client(&app, false);
    let status = |name: &'static str| {
        let request = client
            .get(https(&app, "/healthz"))
            .basic_auth(name, Some("pw"));
        async move {
            request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(status("alice").await, 200);
    assert_eq!(status("bob").await, 401);

    // New users: bob in, alice out.
    std::fs::write(&path, format!("{TLS}{}", user("bob"))).unwrap();
    assert!(
        eventually(|| async { status("bob").await == 200 }).await,
        "bob never let in"
    );
    assert_eq!(status("alice").await, 401);

    // A broken file, or one emptied while being rewritten, is refused: the last good
    // configuration stays, and auth is never switched off by it.
    let anonymous = || async {
        client
            .get(https(&app, "/healthz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    for (broken, why) in [
        ("basic_auth_users: [\n", "invalid YAML"),
        ("", "TLS cannot be turned on or off without a restart"),
        (TLS, "has no basic_auth_users"),
    ] {
        std::fs::write(&path, broken).unwrap();
        // The periodic check's verdict on this content (a write caught half done is refused
        // for another reason, or not a change at all).
        app.log_line(why, |l| {
            l["requested"] == false
                && l["message"].as_str().is_some_and(|m| {
                    m.contains(why) && m.ends_with("; keeping the previous web configuration")
                })
        })
        .await;
        assert_eq!(status("bob").await, 200, "{broken:?}");
        assert_eq!(anonymous().await, 401, "{broken:?}");
    }

    // A rotated certificate, from another CA, is served to new connections.
    std::fs::write(&path, format!("{TLS}{}", user("bob"))).unwrap();
    let rotated = Pki::new();
    rotated.install_server_cert(pki.dir.path());
    let new_client = rotated.client(&app, false);
    let served = eventually(|| async {
        let r = new_client
            .get(https(&app, "/healthz"))
            .basic_auth("bob", Some("pw"))
            .send()
            .await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(served, "the rotated certificate was never served");
    app.stop().await;
}

/// exporter-toolkit's user list holds a cost-18 hash. Unknown users are checked against a
/// fixed cost-10 dummy, not one as dear as the dearest hash, several at once: a flood of them
/// neither stalls startup nor holds a valid login for long (each answer within the client's
/// 10 s timeout).
#[tokio::test]
async fn an_unknown_user_flood_does_not_starve_a_valid_login() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/webconfig/web_config_users_noTLS.good.yml");
    let app = spawn_with(path).await;
    let url = format!("http://{}/healthz", app.addr);
    let client = test_client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let login = |user: String, password: &'static str| {
        let request = client.get(&url).basic_auth(user, Some(password));
        tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
    };
    let flood: Vec<_> = (0..6)
        .map(|i| login(format!("intruder{i}"), "guess"))
        .collect();
    let valid = login("dave".into(), "dave123");
    assert_eq!(valid.await.unwrap().unwrap(), 200);
    for attempt in flood {
        assert_eq!(attempt.await.unwrap().unwrap(), 401);
    }
    // Once in, a scraper is answered from the cache.
    assert_eq!(login("dave".into(), "dave123").await.unwrap().unwrap(), 200);
    app.stop().await;
}

/// Status line, headers but Date (sorted: their order carries no meaning) and body of a raw
/// HTTP/1 exchange on a new connection.
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> (String, Vec<String>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head to {request:?}"));
    let head = String::from_utf8(response[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n").map(str::to_string);
    let status = lines.next().unwrap();
    let mut headers: Vec<String> = lines
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect();
    headers.sort();
    (status, headers, response[end + 4..].to_vec())
}

/// The server answers the scrape before the router sees it when nothing but headers stands
/// between the two; on the wire the answer is the router's, for every request the shortcut
/// could mistake for its own: with and without a web config's headers and basic auth, HEAD,
/// gzip asked for and refused, a query, other methods and paths, HTTP/1.0.
#[tokio::test]
async fn the_scrape_is_answered_on_the_wire_as_the_router_answers_it() {
    use sfb_exporter::{app, serve, Lifecycle, Period, Published, ServerLimits, WebConfig};

    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let configs = [
        None,
        Some("http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n".to_string()),
        Some(format!("basic_auth_users:\n  prometheus: {hash}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n")),
    ];
    let body: String = (0..200)
        .map(|i| format!("sfb_x{{i=\"{i}\"}} {i}\n"))
        .collect();
    let published = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(Published::new(
        sfb_exporter::State::new("t", [Period::D7]),
        body.clone().into(),
    )));
    let limits = ServerLimits {
        max_connections: Some(64),
        ..ServerLimits::default()
    };
    let requests = [
        "GET /metrics HTTP/1.1\r\nHost: e\r\n",
        "GET /metrics HTTP/1.1\r\nHost: e\r\nAccept-Encoding: gzip\r\n",
        "GET /metrics HTTP/1.1\r\nHost: e\r\nAccept-Encoding: gzip;q=0, identity\r\n",
        "HEAD /metrics HTTP/1.1\r\nHost: e\r\n",
        "HEAD /metrics HTTP/1.1\r\nHost: e\r\nAccept-Encoding: gzip\r\n",
        "GET /metrics?name[]=x HTTP/1.1\r\nHost: e\r\n",
        "GET http://e/metrics HTTP/1.1\r\nHost: e\r\n",
        "POST /metrics HTTP/1.1\r\nHost: e\r\nContent-Length: 0\r\n",
        "GET /metrics/ HTTP/1.1\r\nHost: e\r\n",
        "GET /Metrics HTTP/1.1\r\nHost: e\r\n",
        "GET /healthz HTTP/1.1\r\nHost: e\r\n",
        "GET /metrics HTTP/1.1\r\nHost: e\r\nAuthorization: Basic cHJvbWV0aGV1czpwdw==\r\n",
        "GET /metrics HTTP/1.0\r\n",
    ];
    for config in configs {
        let security = config.as_ref().map(|yaml| {
            let path = dir.path().join("web.yml");
            std::fs::write(&path, yaml).unwrap();
            let web = WebConfig::load(&path).unwrap();
            std::sync::Arc::new(arc_swap::ArcSwap::new(web.security))
        });
        let app = app(
            std::sync::Arc::clone(&published),
            "/metrics",
            security,
            Lifecycle::Disabled,
            40,
            false,
        );
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut addrs = Vec::new();
        for served in [app.clone(), app.router().clone().into()] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            tokio::spawn(serve(
                listener,
                served,
                None,
                limits.clone(),
                cancel.clone(),
            ));
        }
        for request in requests {
            let request = format!("{request}Connection: close\r\n\r\n");
            let shortcut = raw_exchange(addrs[0], &request).await;
            let router = raw_exchange(addrs[1], &request).await;
            assert_eq!(shortcut, router, "{config:?} {request:?}");
        }
        // The body is the snapshot's, whichever answered.
        let (status, _, plain) = raw_exchange(
            addrs[0],
            "GET /metrics HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n",
        )
        .await;
        if config.as_deref().is_none_or(|c| !c.contains("basic_auth")) {
            assert_eq!(
                (status.as_str(), plain),
                ("HTTP/1.1 200 OK", body.clone().into_bytes())
            );
        }
        cancel.cancel();
    }
}
