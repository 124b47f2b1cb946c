//! --web.config.file against exporter-toolkit's own test data (tests/fixtures/webconfig, copied
//! from prometheus/exporter-toolkit's web/testdata) and the expectations of its Go tests.

use crate::process::{assert_one_line, exporter, run};

/// Client authentication asked for without a certificate: the toolkit refuses to start, and
/// so do we; falling back to plain HTTP would open what the operator meant to close.
#[test]
fn client_auth_without_a_certificate_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    for tls in [
        "client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt",
        "client_auth_type: VerifyClientCertIfGiven",
        "client_ca_file: ca.crt",
    ] {
        let path = dir.path().join("web.yml");
        std::fs::write(&path, format!("tls_server_config:\n  {tls}\n")).unwrap();
        let (code, stderr) = run(exporter()
            .args(["--demo", "--web.listen-address", "127.0.0.1:0"])
            .arg("--web.config.file")
            .arg(&path));
        assert_eq!(code, 1, "{tls}: {stderr}");
        assert_one_line(&stderr, &["missing one of cert or cert_file"]);
    }
}

/// What a client who need not show a certificate could skip, a bcrypt cost bcrypt cannot check,
/// and nesting too deep to parse quickly: refused at startup and by --config.check, on one
/// line naming it.
#[test]
fn refused_at_startup_and_by_config_check_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("deep.yml");
    std::fs::write(
        &deep,
        format!(
            "tls_server_config: {}{}\n",
            "[".repeat(50_000),
            "]".repeat(50_000)
        ),
    )
    .unwrap();
    let cases = [
        (
            fixture("web_config_auth_client_san_no_client_auth.bad.yaml"),
            SANS_NEED_A_CERTIFICATE,
        ),
        (
            fixture("web_config_auth_client_san_optional_cert.bad.yaml"),
            SANS_NEED_A_CERTIFICATE,
        ),
        (
            fixture("web_config_auth_client_san_request_cert.bad.yml"),
            SANS_NEED_A_CERTIFICATE,
        ),
        (
            fixture("web_config_auth_client_san_no_client_cert.bad.yml"),
            SANS_NEED_A_CERTIFICATE,
        ),
        (
            fixture("web_config_users_bcrypt_cost.bad.yml"),
            "basic_auth_users: the password of \"dave\" is a bcrypt hash of cost 99",
        ),
        (deep, "not a web config: brackets nested more than 32 deep"),
    ];
    for (path, needle) in cases {
        let (code, stderr) = run(exporter()
            .args(["--demo", "--web.listen-address", "127.0.0.1:0"])
            .arg("--web.config.file")
            .arg(&path));
        assert_eq!(code, 1, "{path:?}: {stderr}");
        assert_one_line(&stderr, &[needle, "--web.config.file"]);
        let (code, stderr) = run(exporter()
            .args(["--demo", "--config.check", "--web.config.file"])
            .arg(&path));
        assert_ne!(code, 0, "{path:?}: {stderr}");
        assert!(stderr.contains(needle), "--config.check {path:?}: {stderr}");
    }
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{aws_lc_rs, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CipherSuite, NamedGroup, RootCertStore};
use sfb_exporter::{WebConfig, ECDH_P521};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// exporter-toolkit's wording (its PR #436).
const SANS_NEED_A_CERTIFICATE: &str =
    "client_allowed_sans requires client_auth_type to be one of RequireAnyClientCert or RequireAndVerifyClientCert";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/webconfig")
        .join(name)
}

/// The toolkit's TestYAMLFiles (run and validate) and the start-up failures of its
/// TestServerBehaviour: what loading each file gives.
#[test]
fn toolkit_config_files_are_accepted_or_refused_as_there() {
    let cases: &[(&str, Option<&str>)] = &[
        ("somefile", Some("No such file")),
        ("web_config_empty.yml", None),
        ("web_config_junk.yml", Some("invalid YAML")),
        (
            "web_config_junk_key.yml",
            Some("unknown field `cert_filse`"),
        ),
        (
            "web_config_noAuth_certPath_empty.bad.yml",
            Some("missing one of cert or cert_file"),
        ),
        (
            "web_config_noAuth_cert_empty.bad.yml",
            Some("missing one of cert or cert_file"),
        ),
        (
            "web_config_noAuth_keyPath_empty.bad.yml",
            Some("missing one of key or key_file"),
        ),
        (
            "web_config_noAuth_key_empty.bad.yml",
            Some("missing one of key or key_file"),
        ),
        (
            "web_config_noAuth_certPath_keyPath_empty.bad.yml",
            Some("missing one of cert or cert_file"),
        ),
        (
            "web_config_noAuth_certPath_invalid.bad.yml",
            Some("No such file"),
        ),
        (
            "web_config_noAuth_keyPath_invalid.bad.yml",
            Some("No such file"),
        ),
        (
            "web_config_noAuth_certPath_keyPath_invalid.bad.yml",
            Some("No such file"),
        ),
        (
            "web_config_noAuth.bad.yml",
            Some("client CA's have been configured without a Client Auth Policy"),
        ),
        (
            "web_config_auth_clientCAs_invalid.bad.yml",
            Some("No such file"),
        ),
        (
            "web_config_auth_user_list_invalid.bad.yml",
            Some("not a bcrypt hash"),
        ),
        (
            "web_config_noAuth_inventedCiphers.bad.yml",
            Some("unknown cipher"),
        ),
        (
            "web_config_noAuth_inventedCurves.bad.yml",
            Some("unknown curve"),
        ),
        (
            "web_config_noAuth_wrongTLSVersion.bad.yml",
            Some("unknown TLS version"),
        ),
        (
            "web_config_noAuth_noHTTP2Cipher.bad.yml",
            Some("TLSConfig.CipherSuites is missing an HTTP/2-required"),
        ),
        (
            "web_config_headers_content_type_options.bad.yml",
            Some("invalid value for X-Content-Type-Options"),
        ),
        (
            "web_config_headers_frame_options.bad.yml",
            Some("invalid value for X-Frame-Options"),
        ),
        (
            "web_config_headers_extra_header.bad.yml",
            Some("HTTP header \"Content-Type\" can not be configured"),
        ),
        // The toolkit's PR #436, and ours beside them: client_allowed_sans where a client may
        // show no certificate would let such a client in unchecked.
        (
            "web_config_auth_client_san_no_client_auth.bad.yaml",
            Some(SANS_NEED_A_CERTIFICATE),
        ),
        (
            "web_config_auth_client_san_optional_cert.bad.yaml",
            Some(SANS_NEED_A_CERTIFICATE),
        ),
        (
            "web_config_auth_client_san_request_cert.bad.yml",
            Some(SANS_NEED_A_CERTIFICATE),
        ),
        (
            "web_config_auth_client_san_no_client_cert.bad.yml",
            Some(SANS_NEED_A_CERTIFICATE),
        ),
        (
            "web_config_users_bcrypt_cost.bad.yml",
            Some("the password of \"dave\" is a bcrypt hash of cost 99, outside the allowed inclusive range 4..31"),
        ),
        // Good files, and the one the toolkit names bad but never drives: without
        // client_ca_file, client certificates are verified against the system's roots.
        ("web_config_auth_clientCAs_missing.bad.yml", None),
        ("web_config_noAuth.good.yml", None),
        ("web_config_noAuth.good.blocking.yml", None),
        ("web_config_noAuth_tlsInline.good.yml", None),
        ("web_config_noAuth_allCiphers.good.yml", None),
        ("web_config_noAuth_someCiphers.good.yml", None),
        ("web_config_noAuth_someCiphers_noOrder.good.yml", None),
        ("web_config_noAuth_allCurves.good.yml", None),
        ("web_config_noAuth_someCurves.good.yml", None),
        ("web_config_noAuth_noHTTP2.good.yml", None),
        ("web_config_headers.good.yml", None),
        ("tls_config_noAuth.requireanyclientcert.good.yml", None),
        (
            "tls_config_noAuth.requireanyclientcertkeyinline.good.yml",
            None,
        ),
        (
            "tls_config_noAuth.requireandverifyclientcert.good.yml",
            None,
        ),
        ("web_config_auth_client_san.good.yaml", None),
        ("web_config_auth_client_san.bad.yaml", None),
        ("web_config_rate_limiter_nonblocking.yaml", None),
        ("web_config_rate_limiter_one_second.yaml", None),
        ("web_config_users.good.yml", None),
        ("web_config_users_noTLS.good.yml", None),
    ];
    // Every web config among the fixtures is a case here, so that none added is left out.
    for entry in std::fs::read_dir(fixture("")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yml") || name.ends_with(".yaml") {
            assert!(
                cases.iter().any(|(file, _)| *file == name),
                "{name} is not a case"
            );
        }
    }
    for (file, expected) in cases {
        match (WebConfig::load(&fixture(file)), expected) {
            (Ok(_), None) => {}
            (Err(e), Some(needle)) => {
                let e = e.to_string();
                assert!(e.contains(needle), "{file}: {e}");
                assert!(!e.contains('\n'), "{file}: {e:?}");
            }
            (Ok(_), Some(needle)) => panic!("{file}: accepted, expected {needle:?}"),
            (Err(e), None) => panic!("{file}: refused: {e}"),
        }
    }
}

/// What a test client asks of the handshake.
#[derive(Default)]
struct Hello {
    tls12_only: bool,
    suites: Option<Vec<CipherSuite>>,
    groups: Option<Vec<NamedGroup>>,
    /// A client certificate from the toolkit's test data: client_selfsigned, client2_selfsigned.
    cert: Option<&'static str>,
    alpn: Vec<Vec<u8>>,
    basic_auth: Option<(&'static str, &'static str)>,
}

/// What came back over TLS.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    suite: Option<CipherSuite>,
    alpn: Option<Vec<u8>>,
}

/// The toolkit's getTLSClient: trusts tls-ca-chain.pem, offers a client certificate if given.
async fn tls_get(app: &TestApp, path: &str, hello: Hello) -> Result<Answer, String> {
    tls_get_at(app.addr, path, hello).await
}

async fn tls_get_at(addr: SocketAddr, path: &str, hello: Hello) -> Result<Answer, String> {
    let mut provider = aws_lc_rs::default_provider();
    if let Some(suites) = &hello.suites {
        provider
            .cipher_suites
            .retain(|s| suites.contains(&s.suite()));
    }
    if let Some(groups) = &hello.groups {
        provider.kx_groups = aws_lc_rs::ALL_KX_GROUPS
            .iter()
            .copied()
            .chain([ECDH_P521])
            .filter(|g: &&dyn SupportedKxGroup| groups.contains(&g.name()))
            .collect();
    }
    let versions: &[_] = if hello.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        rustls::ALL_VERSIONS
    };
    let mut roots = RootCertStore::empty();
    let chain = std::fs::read(fixture("tls-ca-chain.pem")).unwrap();
    roots.add_parsable_certificates(CertificateDer::pem_slice_iter(&chain).map(|c| c.unwrap()));
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match hello.cert {
        Some(name) => {
            let pem = std::fs::read(fixture(&format!("{name}.pem"))).unwrap();
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(fixture(&format!("{name}.key"))).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = hello.alpn;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let suite = session.negotiated_cipher_suite().map(|s| s.suite());
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let auth = hello.basic_auth.map(|(user, password)| {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {token}")
    });
    if alpn.as_deref() == Some(b"h2") {
        // HTTP/2 as ALPN agreed: a client that negotiated h2 speaks nothing else.
        let mut h2 = H2::handshake(tls).await?;
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, head) = h2.get(path, &headers).await?;
        return Ok(Answer {
            status,
            head,
            suite,
            alpn,
        });
    }
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let read = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let Some(status) = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse().ok())
    else {
        return Err(read
            .err()
            .map_or(format!("no HTTP response: {text:?}"), |e| e.to_string()));
    };
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    Ok(Answer {
        status,
        head,
        suite,
        alpn,
    })
}

async fn spawn_with(file: &str) -> TestApp {
    Scenario::healthy()
        .await
        .web_config(fixture(file))
        .spawn()
        .await
}

async fn plain_status(app: &TestApp, path: &str) -> Result<u16, String> {
    app.http
        .get(format!("http://{}{path}", app.addr))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

fn ok(answer: Result<Answer, String>) -> Answer {
    let answer = answer.unwrap_or_else(|e| panic!("refused: {e}"));
    assert_eq!(answer.status, 200, "{}", answer.head);
    answer
}

#[tokio::test]
async fn tls_as_the_toolkit_serves_it() {
    // valid tls config yml and default client / tls client
    let app = spawn_with("web_config_noAuth.good.yml").await;
    assert!(
        plain_status(&app, "/healthz").await.is_err(),
        "plain HTTP to the TLS port"
    );
    let answer = ok(tls_get(&app, "/healthz", Hello::default()).await);
    assert_eq!(answer.alpn, None, "no ALPN asked, none given");
    // HTTP/2 is offered by ALPN.
    let h2 = tls_get(
        &app,
        "/healthz",
        Hello {
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(h2.map(|a| a.alpn), Ok(Some(b"h2".to_vec())));
    // with TLS 1.1 client: refused (rustls speaks neither 1.0 nor 1.1; so nor do we).
    assert_eq!(tls11_hello(&app).await, 0x15, "TLS 1.1 gets an alert");
    app.stop().await;

    // valid tls config yml (cert and key inline) and tls client
    let app = spawn_with("web_config_noAuth_tlsInline.good.yml").await;
    ok(tls_get(&app, "/healthz", Hello::default()).await);
    app.stop().await;

    // valid tls config yml with all ciphers (the CBC ones are warned about and left out)
    let app = spawn_with("web_config_noAuth_allCiphers.good.yml").await;
    ok(tls_get(&app, "/healthz", Hello::default()).await);
    app.stop().await;
}

#[tokio::test]
async fn cipher_suites_as_the_toolkit_chooses_them() {
    for file in [
        "web_config_noAuth_someCiphers.good.yml",
        "web_config_noAuth_someCiphers_noOrder.good.yml",
    ] {
        let app = spawn_with(file).await;
        let only = |suites: Vec<CipherSuite>| Hello {
            tls12_only: true,
            suites: Some(suites),
            ..Default::default()
        };
        let answer = ok(tls_get(
            &app,
            "/healthz",
            only(vec![CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]),
        )
        .await);
        assert_eq!(
            answer.suite,
            Some(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
        );
        // No common cipher (the toolkit's client offers a CBC suite, which rustls lacks;
        // CHACHA20 is as foreign to this server).
        let refused = tls_get(
            &app,
            "/healthz",
            only(vec![
                CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ]),
        )
        .await;
        assert!(refused.is_err(), "{file}: {refused:?}");
        // Multiple client ciphers: AES-128-GCM is chosen, whatever the server's order.
        let answer = ok(tls_get(
            &app,
            "/healthz",
            only(vec![
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            ]),
        )
        .await);
        assert_eq!(
            answer.suite,
            Some(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            "{file}"
        );
        app.stop().await;
    }

    // Non-HTTP/2 ciphers with http2: false: served, over HTTP/1.1 only.
    let app = spawn_with("web_config_noAuth_noHTTP2.good.yml").await;
    let answer = ok(tls_get(
        &app,
        "/healthz",
        Hello {
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            ..Default::default()
        },
    )
    .await);
    assert_eq!(answer.alpn, Some(b"http/1.1".to_vec()));
    app.stop().await;
}

#[tokio::test]
async fn curves_as_the_toolkit_chooses_them() {
    let app = spawn_with("web_config_noAuth_allCurves.good.yml").await;
    ok(tls_get(&app, "/healthz", Hello::default()).await);
    app.stop().await;

    let app = spawn_with("web_config_noAuth_someCurves.good.yml").await;
    let with = |group| Hello {
        groups: Some(vec![group]),
        ..Default::default()
    };
    ok(tls_get(&app, "/healthz", with(NamedGroup::secp521r1)).await);
    let refused = tls_get(&app, "/healthz", with(NamedGroup::secp384r1)).await;
    assert!(refused.is_err(), "no common curve: {refused:?}");
    app.stop().await;
}

#[tokio::test]
async fn client_certificates_as_the_toolkit_checks_them() {
    let with = |cert| Hello {
        cert: Some(cert),
        ..Default::default()
    };
    for file in [
        "tls_config_noAuth.requireanyclientcert.good.yml",
        "tls_config_noAuth.requireanyclientcertkeyinline.good.yml",
    ] {
        let app = spawn_with(file).await;
        ok(tls_get(&app, "/healthz", with("client_selfsigned")).await);
        let refused = tls_get(&app, "/healthz", Hello::default()).await;
        assert!(
            refused.is_err(),
            "{file} without a certificate: {refused:?}"
        );
        app.stop().await;
    }

    // The client certificate is itself the pool, and marked as a CA: trusted, as in Go.
    let app = spawn_with("tls_config_noAuth.requireandverifyclientcert.good.yml").await;
    ok(tls_get(&app, "/healthz", with("client_selfsigned")).await);
    let refused = tls_get(&app, "/healthz", with("client2_selfsigned")).await;
    assert!(
        refused.is_err(),
        "a certificate not in the pool: {refused:?}"
    );
    let refused = tls_get(&app, "/healthz", Hello::default()).await;
    assert!(refused.is_err(), "no certificate: {refused:?}");
    app.stop().await;

    // client_allowed_sans: test3 is the certificate's DNS SAN.
    let app = spawn_with("web_config_auth_client_san.good.yaml").await;
    ok(tls_get(&app, "/healthz", with("client2_selfsigned")).await);
    app.stop().await;
    let app = spawn_with("web_config_auth_client_san.bad.yaml").await;
    let refused = tls_get(&app, "/healthz", with("client2_selfsigned")).await;
    assert!(refused.is_err(), "no allowed SAN: {refused:?}");
    app.stop().await;

    // VerifyClientCertIfGiven without client_ca_file: no certificate is fine; one that the
    // system's roots do not vouch for is not.
    let app = spawn_with("web_config_noAuth.good.yml").await;
    ok(tls_get(&app, "/healthz", Hello::default()).await);
    let refused = tls_get(&app, "/healthz", with("client_selfsigned")).await;
    assert!(refused.is_err(), "a self-signed certificate: {refused:?}");
    app.stop().await;
}

#[tokio::test]
async fn headers_as_the_toolkit_sets_them() {
    let app = spawn_with("web_config_headers.good.yml").await;
    let response = app
        .http
        .get(format!("http://{}/healthz", app.addr))
        .send()
        .await
        .unwrap();
    for (name, value) in [
        (
            "Strict-Transport-Security",
            "max-age=31536000; includeSubDomains",
        ),
        ("X-Frame-Options", "deny"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-XSS-Protection", "1"),
        (
            "Content-Security-Policy",
            "default-src 'self' *.test.example.net",
        ),
    ] {
        assert_eq!(response.headers()[name], value, "{name}");
    }
    app.stop().await;
}

#[tokio::test]
async fn rate_limit_as_the_toolkit_applies_it() {
    let app = spawn_with("web_config_rate_limiter_nonblocking.yaml").await;
    for _ in 0..=10 {
        assert_eq!(plain_status(&app, "/healthz").await, Ok(200));
    }
    app.stop().await;
    // interval 1s, burst 0: golang.org/x/time/rate lets nothing through.
    let app = spawn_with("web_config_rate_limiter_one_second.yaml").await;
    let mut codes = Vec::new();
    for _ in 0..=10 {
        codes.push(plain_status(&app, "/healthz").await.unwrap());
    }
    assert!(codes.contains(&429), "{codes:?}");
    let body = app
        .http
        .get(format!("http://{}/healthz", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(body.text().await.unwrap(), "Too Many Requests\n");
    app.stop().await;
}

/// GET /healthz over plain HTTP with basic auth, started at once: its status.
fn login(app: &TestApp, user: &str, password: &str) -> tokio::task::JoinHandle<u16> {
    let request = app
        .http
        .get(format!("http://{}/healthz", app.addr))
        .basic_auth(user, Some(password));
    tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
}

/// The toolkit's TestUsers, TestBasicAuthWithFakepassword and TestByPassBasicAuthVuln
/// (CVE-2022-46146).
#[tokio::test]
async fn users_as_the_toolkit_checks_them() {
    let app = spawn_with("web_config_users_noTLS.good.yml").await;
    let login = |user, password| {
        let answer = login(&app, user, password);
        async move { answer.await.unwrap() }
    };
    assert_eq!(plain_status(&app, "/healthz").await, Ok(401));
    assert_eq!(login("dave", "dave123").await, 200);
    assert_eq!(login("fakeuser", "fakepassword").await, 401);
    assert_eq!(
        login("fakeuser", "fakepassword").await,
        401,
        "cached or not"
    );
    assert_eq!(
        login(
            "alice$2y$12$1DpfPeqF9HzHJt.EWswy1exHluGfbhnn3yXhR7Xes6m3WJqFg0Wby",
            "fakepassword"
        )
        .await,
        401
    );
    assert_eq!(
        login(
            "alice",
            "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSifakepassword"
        )
        .await,
        401
    );
    app.stop().await;

    let app = spawn_with("web_config_users.good.yml").await;
    let as_user = |user, password| Hello {
        basic_auth: Some((user, password)),
        ..Default::default()
    };
    let status = |a: Result<Answer, String>| a.map(|a| a.status);
    assert_eq!(
        status(tls_get(&app, "/healthz", Hello::default()).await),
        Ok(401)
    );
    assert_eq!(
        status(tls_get(&app, "/healthz", as_user("dave", "dave123")).await),
        Ok(200)
    );
    assert_eq!(
        status(tls_get(&app, "/healthz", as_user("carol", "carol123")).await),
        Ok(200)
    );
    assert_eq!(
        status(tls_get(&app, "/healthz", as_user("dave", "bad")).await),
        Ok(401)
    );
    assert_eq!(
        status(tls_get(&app, "/healthz", as_user("nonexistent", "nonexistent")).await),
        Ok(401)
    );
    app.stop().await;
}

/// The toolkit's TestBasicAuthCache, smaller: concurrent right and wrong passwords each get
/// their own answer.
#[tokio::test]
async fn concurrent_logins_get_their_own_answers() {
    let app = spawn_with("web_config_users_noTLS.good.yml").await;
    let login = |password| login(&app, "dave", password);
    assert_eq!(login("dave123").await.unwrap(), 200);
    assert_eq!(login("dave1234").await.unwrap(), 401);
    let logins: Vec<_> = (0..8)
        .flat_map(|_| [(login("dave123"), 200), (login("dave1234"), 401)])
        .collect();
    for (login, expected) in logins {
        assert_eq!(login.await.unwrap(), expected);
    }
    app.stop().await;
}

/// A TLS 1.1 ClientHello, by hand (rustls cannot send one): the first byte of the answer.
async fn tls11_hello(app: &TestApp) -> u8 {
    let mut hello = vec![0x03, 0x02];
    hello.extend([7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend([0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    hello.extend([0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend(handshake);
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut first = [0u8; 1];
    match tcp.read_exact(&mut first).await {
        Ok(_) => first[0],
        Err(_) => 0,
    }
}

/// A copy of the toolkit's server certificate and key next to a web config we can rewrite.
fn rewritable(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "server.crt",
        "server.key",
        "client_selfsigned.pem",
        "client2_selfsigned.pem",
    ] {
        std::fs::copy(fixture(file), dir.path().join(file)).unwrap();
    }
    let path = dir.path().join("web.yml");
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

async fn spawn_at(path: PathBuf) -> TestApp {
    Scenario::new()
        .await
        .token_ok()
        .web_config(path)
        .spawn()
        .await
}

/// The toolkit's TestConfigReloading, the other way round: there a configuration that refuses
/// the client gives way to one that takes it; here loosening takes a restart (see
/// a_reload_tightens_client_certificate_checks_but_never_loosens_them), so a configuration
/// that takes the client gives way, without a restart, to one that refuses it.
#[tokio::test]
async fn a_changed_file_is_served_without_a_restart() {
    let blocking = std::fs::read_to_string(fixture("web_config_noAuth.good.blocking.yml")).unwrap();
    let good = std::fs::read_to_string(fixture("web_config_noAuth.good.yml")).unwrap();
    let (_dir, path) = rewritable(&good);
    let app = spawn_at(path.clone()).await;
    ok(tls_get(&app, "/healthz", Hello::default()).await);
    std::fs::write(&path, blocking).unwrap();
    let refused =
        eventually(|| async { tls_get(&app, "/healthz", Hello::default()).await.is_err() }).await;
    assert!(refused, "the new configuration was never served");
    app.stop().await;
}

/// A new file that fails a reload check installs nothing: not its TLS settings either.
#[tokio::test]
async fn a_refused_reload_installs_nothing() {
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let users =
        "basic_auth_users:\n  dave: $2y$10$2UXri9cIDdgeKjBo4Rlpx.U3ZLDV8X1IxKmsfOvhcM5oXQt/mLmXq\n";
    let (_dir, path) = rewritable(&format!("{tls}{users}"));
    let (process, addr) = serve_process(&path);
    let dave = || Hello {
        basic_auth: Some(("dave", "dave123")),
        ..Default::default()
    };
    assert_eq!(
        tls_get_at(addr, "/healthz", dave()).await.map(|a| a.status),
        Ok(200)
    );
    // Client certificates required, and basic auth dropped: refused as a whole, since auth
    // is never switched off by a reload.
    let line = reload_to(
        &process,
        &path,
        &format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client_selfsigned.pem\n"),
    );
    refused_reload(
        &line,
        "has no basic_auth_users; removing basic auth needs a restart",
    );
    assert_eq!(
        tls_get_at(addr, "/healthz", dave()).await.map(|a| a.status),
        Ok(200),
        "the new TLS settings went live although the file was refused"
    );
    process.signal("TERM");
}

/// SIGHUP reloads the web configuration and says so; SIGUSR1 and SIGUSR2 are logged and
/// ignored; none of them stops the process.
#[tokio::test]
async fn sighup_reloads_and_sigusr_is_ignored() {
    use crate::process::{demo_json, Process};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yml");
    let frame =
        |value: &str| format!("http_server_config:\n  headers:\n    X-Frame-Options: {value}\n");
    std::fs::write(&path, frame("deny")).unwrap();
    let mut process = Process::spawn(demo_json().arg("--web.config.file").arg(&path));
    let listening = process.log_line(|l| l["message"] == "sfb-exporter listening");
    let url = format!("http://{}/healthz", listening["address"].as_str().unwrap());
    let header = || async {
        let response = test_client().get(&url).send().await.unwrap();
        response.headers()["x-frame-options"]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(header().await, "deny");

    std::fs::write(&path, frame("sameorigin")).unwrap();
    process.signal("HUP");
    let reloaded = process.log_line(|l| l["message"] == "web configuration reloaded");
    assert_eq!(reloaded["requested"], true, "{reloaded}");
    assert_eq!(header().await, "sameorigin");

    for signal in ["USR1", "USR2"] {
        process.signal(signal);
        let message = format!("SIG{signal} received: ignored");
        process.log_line(|l| l["message"] == message.as_str());
    }
    assert_eq!(header().await, "sameorigin", "still serving");
    process.signal("TERM");
    assert_eq!(process.wait_exit().code(), Some(0));

    // Without a web config there is nothing to reload, and it says so.
    let mut process = Process::spawn(&mut demo_json());
    process.log_line(|l| l["message"] == "sfb-exporter listening");
    process.signal("HUP");
    process.log_line(|l| {
        l["message"] == "SIGHUP received: nothing to reload (no --web.config.file or --config.file)"
    });
    process.signal("TERM");
    assert_eq!(process.wait_exit().code(), Some(0));
}

/// The exporter as a process (demo mode, JSON logs) serving the web config at `path`, and the
/// address it listens on.
fn serve_process(path: &Path) -> (crate::process::Process, SocketAddr) {
    use crate::process::{demo_json, Process};
    let process = Process::spawn(demo_json().arg("--web.config.file").arg(path));
    let listening = process.log_line(|l| l["message"] == "sfb-exporter listening");
    let addr = listening["address"].as_str().unwrap().parse().unwrap();
    (process, addr)
}

/// Writes `yaml`, sends SIGHUP and returns the reload's outcome as logged.
fn reload_to(process: &crate::process::Process, path: &Path, yaml: &str) -> serde_json::Value {
    std::fs::write(path, yaml).unwrap();
    process.signal("HUP");
    // Only the outcome of the SIGHUP: the periodic check may see the file first.
    process.log_line(|l| {
        l["requested"] == true
            && l["message"].as_str().is_some_and(|m| {
                m == "web configuration reloaded"
                    || m.ends_with("keeping the previous web configuration")
            })
    })
}

fn refused_reload(line: &serde_json::Value, needle: &str) {
    let message = line["message"].as_str().unwrap();
    assert_eq!(line["level"], "WARN", "{line}");
    assert!(message.contains(needle), "{needle:?} not in {message}");
    assert!(
        message.ends_with("; keeping the previous web configuration"),
        "{message}"
    );
}

/// A reload may tighten client certificate checks, never loosen them: a file cut short before
/// client_auth_type or client_allowed_sans, or one whose client_allowed_sans a client may
/// skip, is refused and the previous configuration keeps serving; a narrower
/// client_allowed_sans applies at once.
#[tokio::test]
async fn a_reload_tightens_client_certificate_checks_but_never_loosens_them() {
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let verify =
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client2_selfsigned.pem\n";
    let sans = |list: &str| format!("  client_allowed_sans: [{list}]\n");
    let (_dir, path) = rewritable(&format!("{tls}{verify}{}", sans("one, test3")));
    let (process, addr) = serve_process(&path);
    let client2 = || Hello {
        cert: Some("client2_selfsigned"),
        ..Default::default()
    };
    let still_strict = || async {
        let served = tls_get_at(addr, "/healthz", client2()).await;
        assert_eq!(served.map(|a| a.status), Ok(200));
        let refused = tls_get_at(addr, "/healthz", Hello::default()).await;
        assert!(
            refused.is_err(),
            "served without a certificate: {refused:?}"
        );
    };
    still_strict().await;

    let optional = format!(
        "{tls}  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: client2_selfsigned.pem\n{}",
        sans("test3")
    );
    refused_reload(
        &reload_to(&process, &path, &optional),
        SANS_NEED_A_CERTIFICATE,
    );
    still_strict().await;

    for (cut_short, needle) in [
        (
            tls.to_string(),
            "the new web configuration sets client_auth_type NoClientCert, which does not require a client certificate as RequireAndVerifyClientCert did; loosening client certificate checks needs a restart",
        ),
        (
            format!("{tls}{verify}"),
            "the new web configuration has no client_allowed_sans; loosening client certificate checks needs a restart",
        ),
        (
            format!("{tls}{verify}{}", sans("one, test3, two")),
            "adds [\"two\"] to client_allowed_sans",
        ),
    ] {
        refused_reload(&reload_to(&process, &path, &cut_short), needle);
        still_strict().await;
    }

    let narrower = format!("{tls}{verify}{}", sans("one"));
    let line = reload_to(&process, &path, &narrower);
    assert_eq!(line["message"], "web configuration reloaded", "{line}");
    let refused = tls_get_at(addr, "/healthz", client2()).await;
    assert!(refused.is_err(), "test3 is no longer allowed: {refused:?}");
    process.signal("TERM");
}

/// With RequireAnyClientCert nobody verifies the certificate whose SANs are matched: allowed,
/// as in Go, with a warning at startup.
#[test]
fn client_allowed_sans_on_an_unverified_certificate_is_warned_about() {
    let (_dir, path) = rewritable(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAnyClientCert\n  client_allowed_sans: [test3]\n",
    );
    let process = crate::process::Process::spawn(
        crate::process::demo_json()
            .arg("--web.config.file")
            .arg(&path),
    );
    let lines = process.log_until(|lines| {
        lines
            .last()
            .is_some_and(|l| l["message"] == "sfb-exporter listening")
    });
    let warning = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("client_allowed_sans with client_auth_type RequireAnyClientCert is matched on a client certificate nobody verified"))
        })
        .unwrap_or_else(|| panic!("no warning before listening: {lines:#?}"));
    assert_eq!(warning["level"], "WARN", "{warning}");
    process.signal("TERM");

    // --config.check, which logs nothing, prints it with its other warnings.
    let stdout = checked_ok(&path);
    assert!(
        stdout.lines().any(|l| l.starts_with("warning: tls_server_config: client_allowed_sans with client_auth_type RequireAnyClientCert")),
        "{stdout}"
    );
}

/// The change check compares contents: a user's hash swapped for one of the same length, with
/// the file's modification time put back (as `cp -p` leaves it), is seen.
#[tokio::test]
async fn a_same_size_change_with_the_old_mtime_is_picked_up() {
    let users = |hash: &str| format!("basic_auth_users:\n  dave: {hash}\n");
    let old = bcrypt::hash("dave123", 4).unwrap();
    let new = bcrypt::hash("dave456", 4).unwrap();
    let (_dir, path) = rewritable(&users(&old));
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let app = spawn_at(path.clone()).await;
    assert_eq!(login(&app, "dave", "dave123").await.unwrap(), 200);

    let replacement = users(&new);
    assert_eq!(replacement.len(), users(&old).len());
    std::fs::write(&path, replacement).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let picked_up =
        eventually(|| async { login(&app, "dave", "dave456").await.unwrap() == 200 }).await;
    assert!(picked_up, "the new hash was never served");
    assert_eq!(login(&app, "dave", "dave123").await.unwrap(), 401);
    app.stop().await;
}

/// An empty web config is the toolkit's empty configuration, but never silently: a file
/// emptied by a cut-short write would switch TLS and basic auth off at the next start.
#[test]
fn an_empty_web_config_serves_plain_http_with_a_warning() {
    let (_dir, path) = rewritable("\n");
    let stdout = checked_ok(&path);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("warning: --web.config.file")
                && l.ends_with("is empty: serving plain HTTP without basic auth")),
        "{stdout}"
    );
}

/// A flood of wrong logins, more than the connection cap, each waiting for bcrypt: logins
/// beyond the few admitted to it are answered 429 at once, so their connections can be closed
/// to make room, and a scraper whose login is cached is answered meanwhile.
#[tokio::test]
async fn a_flood_of_wrong_logins_never_locks_a_valid_scrape_out() {
    const CAP: usize = 32;
    let app = Scenario::new()
        .await
        .token_ok()
        .web_config(fixture("web_config_users_noTLS.good.yml"))
        .max_connections(CAP)
        .spawn()
        .await;
    let request = |user: &str, password: &str| {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("GET /healthz HTTP/1.1\r\nHost: exporter\r\nAuthorization: Basic {auth}\r\n\r\n")
    };
    let scrape = request("dave", "dave123");
    let (answer, _) = raw_exchange(app.addr, &scrape).await.expect("answered");
    assert!(answer.starts_with("http/1.1 200"), "{answer}");

    // Unknown users: each costs a cost-10 bcrypt, a few at once.
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..CAP + 8 {
        let (tx, addr, login) = (tx.clone(), app.addr, request(&format!("intruder{i}"), "x"));
        flood.spawn(async move {
            let answer = raw_exchange(addr, &login).await;
            let _ = tx.send(answer.as_ref().map(|(a, _)| a.clone()));
            // Kept open, idle, as an attacker would.
            std::future::pending::<()>().await;
        });
    }
    // At most 16 (4 per bcrypt slot, at most 4 slots) wait for bcrypt, and at most 8 of the
    // others can be closed for room.
    let mut busy = 0;
    while busy < 16 {
        let answer = tokio::time::timeout(std::time::Duration::from_secs(30), answers.recv())
            .await
            .expect("logins beyond the admitted ones are answered at once")
            .unwrap();
        if let Some(answer) = answer.filter(|a| a.starts_with("http/1.1 429")) {
            assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
            assert!(!answer.contains("www-authenticate"), "{answer}");
            busy += 1;
        }
    }
    for round in 0..3 {
        let answer = raw_exchange(app.addr, &scrape).await;
        assert!(
            answer
                .as_ref()
                .is_some_and(|(a, _)| a.starts_with("http/1.1 200")),
            "round {round}: {answer:?}"
        );
    }
    flood.abort_all();
    app.stop().await;
}

/// `--demo --config.check` with the web config at `path`: asserts it passes, returns stdout.
fn checked_ok(path: &std::path::Path) -> String {
    let out = exporter()
        .args(["--demo", "--config.check", "--web.config.file"])
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    stdout
}
