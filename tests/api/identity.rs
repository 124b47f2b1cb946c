//! Every kind of credential against a loopback fake of the Microsoft identity platform that
//! checks client assertions as Entra ID does, and fakes of the managed identity endpoints
//! (reached through their overrides, never 169.254.169.254).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use secrecy::SecretString;
use sfb_exporter::Credential;
use sfb_exporter::ManagedEndpoint;
use sfb_exporter::Period;
use sfb_exporter::{CertificateSettings, ClientCertificate};
use url::Url;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::*;
use crate::process::{assert_one_line, exporter, run, Process};

const P12_PASSWORD: &str = "test-p12-password";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/identity")
        .join(name)
}

fn sha256(bytes: &[u8]) -> aws_lc_rs::digest::Digest {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
}

fn key(name: &str) -> rcgen::KeyPair {
    rcgen::KeyPair::from_pem(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// A certificate for `key`, issued by `issuer` (key and name) or self-signed.
fn certificate(
    key: &rcgen::KeyPair,
    subject: &str,
    not_after: time::OffsetDateTime,
    issuer: Option<(&rcgen::KeyPair, &rcgen::CertificateParams)>,
) -> (rcgen::CertificateParams, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, subject);
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = not_after;
    let cert = match issuer {
        None => params.self_signed(key).unwrap(),
        Some((issuer_key, issuer_params)) => params
            .signed_by(key, &rcgen::Issuer::from_params(issuer_params, issuer_key))
            .unwrap(),
    };
    (params, cert.pem())
}

fn in_days(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

/// The fake identity platform's token endpoint. It knows the certificates "uploaded to the app
/// registration" and the federated tokens it trusts, and records what it saw.
#[derive(Clone, Default)]
struct EntraId {
    /// x5t#S256 → the RSA public key (PKCS#1 DER) of each registered certificate.
    registered: Arc<Vec<(String, Vec<u8>)>>,
    /// The x5c chain length expected in every assertion; 0 for none.
    x5c_len: usize,
    /// The token endpoint's URL: the only `aud` accepted.
    audience: String,
    trusted_federated: Arc<Vec<String>>,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen {
    jtis: HashSet<String>,
    accepted: Vec<String>,
    rejected: Vec<String>,
}

impl EntraId {
    fn for_certificates(pems: &[&str], x5c_len: usize) -> EntraId {
        let registered = pems
            .iter()
            .map(|pem| {
                let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
                let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
                let public = cert.public_key().subject_public_key.data.to_vec();
                (URL_SAFE_NO_PAD.encode(sha256(&der)), public)
            })
            .collect();
        EntraId {
            registered: Arc::new(registered),
            x5c_len,
            ..Default::default()
        }
    }

    fn for_federated(tokens: &[&str]) -> EntraId {
        EntraId {
            trusted_federated: Arc::new(tokens.iter().map(|t| t.to_string()).collect()),
            ..Default::default()
        }
    }

    /// Answers the token endpoint of `scenario`'s fake Graph.
    fn answering(mut self, scenario: Scenario) -> (EntraId, Scenario) {
        self.audience = format!("{}/{TENANT}/oauth2/v2.0/token", scenario.graph_uri());
        let scenario = scenario.token_answers(self.clone());
        (self, scenario)
    }

    fn accepted(&self) -> Vec<String> {
        self.seen.lock().unwrap().accepted.clone()
    }

    fn rejected(&self) -> Vec<String> {
        self.seen.lock().unwrap().rejected.clone()
    }

    /// Checks the token request as Entra ID does; Err names the first rule broken.
    fn check(&self, request: &Request) -> Result<String, String> {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let expect = |name: &str, value: &str| match field(name) {
            Some(v) if v == value => Ok(()),
            other => Err(format!("{name} is {other:?}, expected {value}")),
        };
        expect("grant_type", "client_credentials")?;
        expect("client_id", CLIENT_ID)?;
        expect(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )?;
        if !field("scope").is_some_and(|s| s.ends_with("/.default")) {
            return Err("scope is not <graph>/.default".into());
        }
        if field("client_secret").is_some() {
            return Err("a client_secret beside the assertion".into());
        }
        let assertion = field("client_assertion").ok_or("no client_assertion")?;
        if !self.trusted_federated.is_empty() {
            return match self.trusted_federated.iter().any(|t| t == assertion) {
                true => Ok(assertion.to_string()),
                false => Err(format!("untrusted federated token {assertion:?}")),
            };
        }
        self.check_jwt(assertion)?;
        Ok(assertion.to_string())
    }

    fn check_jwt(&self, jwt: &str) -> Result<(), String> {
        let parts: Vec<&str> = jwt.split('.').collect();
        let [head, body, signature] = parts[..] else {
            return Err("not a JWS compact serialization".into());
        };
        let decode = |part: &str| -> Result<serde_json::Value, String> {
            let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|e| e.to_string())?;
            serde_json::from_slice(&bytes).map_err(|e| e.to_string())
        };
        let (header, claims) = (decode(head)?, decode(body)?);
        if header["typ"] != "JWT" {
            return Err(format!("typ {}", header["typ"]));
        }
        use aws_lc_rs::signature as sig;
        let algorithm: &dyn sig::VerificationAlgorithm = match header["alg"].as_str() {
            Some("PS256") => &sig::RSA_PSS_2048_8192_SHA256,
            Some("RS256") => &sig::RSA_PKCS1_2048_8192_SHA256,
            other => return Err(format!("alg {other:?}")),
        };
        let thumbprint = header["x5t#S256"].as_str().ok_or("no x5t#S256")?;
        let (_, public) = self
            .registered
            .iter()
            .find(|(t, _)| t == thumbprint)
            .ok_or("x5t#S256 names no registered certificate")?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|e| e.to_string())?;
        sig::UnparsedPublicKey::new(algorithm, public)
            .verify(format!("{head}.{body}").as_bytes(), &signature)
            .map_err(|_| "bad signature")?;
        let x5c = header["x5c"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if x5c.len() != self.x5c_len {
            return Err(format!("x5c has {} certificates", x5c.len()));
        }
        if let Some(leaf) = x5c.first() {
            let der = STANDARD
                .decode(leaf.as_str().unwrap_or(""))
                .map_err(|e| e.to_string())?;
            if URL_SAFE_NO_PAD.encode(sha256(&der)) != thumbprint {
                return Err("x5c does not start with the signing certificate".into());
            }
        }
        if claims["aud"] != self.audience.as_str() {
            let audience = &self.audience;
            return Err(format!(
                "aud {} is not the token endpoint {audience}",
                claims["aud"]
            ));
        }
        if claims["iss"] != CLIENT_ID || claims["sub"] != CLIENT_ID {
            return Err("iss and sub must be the client id".into());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let (nbf, exp) = (claims["nbf"].as_i64(), claims["exp"].as_i64());
        let (Some(nbf), Some(exp)) = (nbf, exp) else {
            return Err("nbf and exp are required".into());
        };
        if nbf > now + 5 || exp <= now || exp - nbf > 600 {
            return Err(format!("validity {nbf}..{exp} at {now}"));
        }
        let jti = claims["jti"].as_str().ok_or("no jti")?;
        if !self.seen.lock().unwrap().jtis.insert(jti.to_string()) {
            return Err(format!("jti {jti} replayed"));
        }
        Ok(())
    }
}

impl Respond for EntraId {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let verdict = self.check(request);
        let mut seen = self.seen.lock().unwrap();
        match verdict {
            Ok(assertion) => {
                seen.accepted.push(assertion);
                // Short-lived, so that a test sees the token renewed within seconds.
                token_response(2)
            }
            Err(why) => {
                seen.rejected.push(why.clone());
                ResponseTemplate::new(401).set_body_json(serde_json::json!({
                    "error": "invalid_client",
                    "error_description": format!("AADSTS700027: {why}"),
                    "error_codes": [700027],
                }))
            }
        }
    }
}

/// The exporter, refreshing D7 every second, signed in with `credential`.
async fn spawn_with(scenario: Scenario, credential: Credential) -> TestApp {
    scenario
        .report(Period::D7, ONE_DAY)
        .interval(Duration::from_secs(1))
        .credential(credential)
        .spawn()
        .await
}

fn certificate_credential(path: &Path, password: Option<&str>, send_chain: bool) -> Credential {
    let password = password.map(SecretString::from);
    Credential::Certificate {
        client_id: CLIENT_ID.into(),
        certificate: std::sync::Arc::new(
            ClientCertificate::load(path, password.as_ref(), CertificateSettings::ENVIRONMENT)
                .unwrap(),
        ),
        send_chain,
    }
}

/// Waits until the fake has accepted `n` token requests, and checks it refused none.
async fn accepted_at_least(entra: &EntraId, n: usize) -> Vec<String> {
    let done = eventually(|| async { entra.accepted().len() >= n }).await;
    assert!(
        done,
        "accepted {:?}, rejected {:?}",
        entra.accepted(),
        entra.rejected()
    );
    assert_eq!(entra.rejected(), Vec::<String>::new());
    entra.accepted()
}

#[tokio::test]
async fn certificates_sign_in_with_a_fresh_assertion_for_every_token() {
    let dir = tempfile::tempdir().unwrap();
    let (_, leaf) = certificate(&key("rsa-a.pkcs8.pem"), "sfb leaf", in_days(30), None);
    let pem = dir.path().join("credential.pem");
    std::fs::write(
        &pem,
        format!(
            "{}{leaf}",
            std::fs::read_to_string(fixture("rsa-a.pkcs1.pem")).unwrap()
        ),
    )
    .unwrap();
    let openssl_cert = std::fs::read_to_string(fixture("cert-a.pem")).unwrap();
    let cases = [
        (pem, None, leaf.clone()),
        (fixture("aes.p12"), Some(P12_PASSWORD), openssl_cert.clone()),
        (fixture("legacy.p12"), Some(P12_PASSWORD), openssl_cert),
    ];
    for (file, password, registered) in cases {
        let (entra, scenario) =
            EntraId::for_certificates(&[&registered], 0).answering(Scenario::new().await);
        let credential = certificate_credential(&file, password, false);
        let not_after = credential_not_after(&credential);
        let app = spawn_with(scenario, credential).await;
        // Tokens live 2s: the second request comes with its own, new assertion.
        let assertions = accepted_at_least(&entra, 2).await;
        assert_ne!(assertions[0], assertions[1]);
        let body = app.first_attempt(Period::D7).await;
        assert_eq!(sample(&body, &success(Period::D7)), Some(1.0), "{body}");
        let series =
            format!(r#"sfb_client_certificate_expiry_timestamp_seconds{{tenant="{TENANT}"}}"#);
        assert_eq!(sample(&body, &series), Some(not_after), "{file:?}");
        app.stop().await;
    }
}

fn credential_not_after(credential: &Credential) -> f64 {
    let not_after = credential.certificate().unwrap().not_after();
    not_after.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[tokio::test]
async fn the_chain_goes_into_x5c_leaf_first_when_asked() {
    let ca_key = key("rsa-b.pkcs8.pem");
    let (ca_params, ca) = certificate(&ca_key, "sfb test CA", in_days(365), None);
    let (_, leaf) = certificate(
        &key("rsa-a.pkcs8.pem"),
        "sfb leaf",
        in_days(30),
        Some((&ca_key, &ca_params)),
    );
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("chain.pem");
    // CA first in the file: the exporter still puts the key's certificate first.
    let key_pem = std::fs::read_to_string(fixture("rsa-a.pkcs8.pem")).unwrap();
    std::fs::write(&pem, format!("{ca}{key_pem}{leaf}")).unwrap();

    let (entra, scenario) = EntraId::for_certificates(&[&leaf], 2).answering(Scenario::new().await);
    let app = spawn_with(scenario, certificate_credential(&pem, None, true)).await;
    accepted_at_least(&entra, 1).await;
    app.stop().await;
}

#[tokio::test]
async fn an_unregistered_certificate_is_refused_and_counted_as_auth() {
    let (_, other) = certificate(&key("rsa-b.pkcs8.pem"), "other", in_days(30), None);
    let (entra, scenario) =
        EntraId::for_certificates(&[&other], 0).answering(Scenario::new().await);
    let credential = certificate_credential(&fixture("aes.p12"), Some(P12_PASSWORD), false);
    let app = spawn_with(scenario, credential).await;
    let body = app.first_attempt(Period::D7).await;
    assert_eq!(
        sample(&body, &failures(Period::D7, "auth")),
        Some(1.0),
        "{body}"
    );
    assert!(entra.rejected()[0].contains("no registered certificate"));
    let (_, readyz) = app.readyz().await;
    let readyz = readyz.to_string();
    assert!(
        readyz.contains("AADSTS700027") && !readyz.contains("eyJ"),
        "{readyz}"
    );
    app.stop().await;
}

#[tokio::test]
async fn workload_identity_reads_the_rotated_token_file_at_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, "federated-token-1\n").unwrap();
    let (entra, scenario) = EntraId::for_federated(&["federated-token-1", "federated-token-2"])
        .answering(Scenario::new().await);
    let credential = Credential::WorkloadIdentity {
        client_id: CLIENT_ID.into(),
        token_file: file.clone(),
    };
    let app = spawn_with(scenario, credential).await;
    accepted_at_least(&entra, 1).await;
    // The kubelet replaces the file; the next token request presents the new token.
    std::fs::write(&file, "federated-token-2").unwrap();
    let rotated =
        eventually(|| async { entra.accepted().iter().any(|t| t == "federated-token-2") }).await;
    assert!(rotated, "{:?}", entra.accepted());
    assert_eq!(entra.rejected(), Vec::<String>::new());
    let body = app.metrics().await;
    assert!(!body.contains("federated-token"));
    app.stop().await;
}

fn managed_token() -> ResponseTemplate {
    let expires_on = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "access_token": ACCESS_TOKEN,
        "expires_in": "3599",
        "expires_on": expires_on.to_string(),
        "resource": "x",
        "token_type": "Bearer",
    }))
}

/// The managed identity endpoint on loopback, mounted on `server` at `endpoint_path` with the
/// matchers common to both kinds.
fn managed_mock(
    endpoint_path: &str,
    api_version: &str,
    scenario: &Scenario,
) -> wiremock::MockBuilder {
    Mock::given(method("GET"))
        .and(path(endpoint_path))
        .and(query_param("api-version", api_version))
        // The Graph root itself: no /.default, no trailing slash.
        .and(query_param(
            "resource",
            scenario.graph_uri().trim_end_matches('/'),
        ))
}

#[tokio::test]
async fn imds_user_assigned_identity_with_retries_on_410_and_429() {
    let imds = MockServer::start().await;
    let scenario = Scenario::new().await;
    let imds_path = "/metadata/identity/oauth2/token";
    for status in [410, 429] {
        managed_mock(imds_path, "2018-02-01", &scenario)
            .respond_with(ResponseTemplate::new(status))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&imds)
            .await;
    }
    managed_mock(imds_path, "2018-02-01", &scenario)
        .and(query_param("client_id", "user-assigned-1"))
        .and(header("Metadata", "true"))
        .respond_with(managed_token())
        .with_priority(2)
        .mount(&imds)
        .await;
    let credential = Credential::ManagedIdentity {
        client_id: Some("user-assigned-1".into()),
        endpoint: ManagedEndpoint::Imds {
            host: Url::parse(&imds.uri()).unwrap(),
        },
    };
    let app = spawn_with(scenario, credential).await;
    let body = app.first_attempt(Period::D7).await;
    assert_eq!(sample(&body, &success(Period::D7)), Some(1.0), "{body}");
    assert_eq!(app.requests_to(&imds, imds_path).await.len(), 3);
    assert!(app.requests_to(&app.graph, "/oauth2/").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn imds_retries_stop_within_the_timeout() {
    let imds = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&imds)
        .await;
    let app = Scenario::new()
        .await
        .report(Period::D7, ONE_DAY)
        .timeout(Duration::from_secs(1))
        // One token request per refresh, so that only the IMDS retries are counted.
        .max_retries(0)
        .credential(Credential::ManagedIdentity {
            client_id: None,
            endpoint: ManagedEndpoint::Imds {
                host: Url::parse(&imds.uri()).unwrap(),
            },
        })
        .spawn()
        .await;
    let body = app.first_attempt(Period::D7).await;
    assert_eq!(
        sample(&body, &failures(Period::D7, "http")),
        Some(1.0),
        "{body}"
    );
    // 200ms, 400ms: two retries fit into the second, the next would not.
    let tries = imds.received_requests().await.unwrap().len();
    assert!((2..=4).contains(&tries), "{tries} tries");
    app.stop().await;
}

#[tokio::test]
async fn app_service_managed_identity_sends_the_identity_header() {
    let endpoint = MockServer::start().await;
    let scenario = Scenario::new().await;
    managed_mock("/msi/token", "2019-08-01", &scenario)
        .and(header("X-IDENTITY-HEADER", "identity-header-secret"))
        .respond_with(managed_token())
        .mount(&endpoint)
        .await;
    let credential = Credential::ManagedIdentity {
        client_id: None,
        endpoint: ManagedEndpoint::AppService {
            endpoint: Url::parse(&format!("{}/msi/token", endpoint.uri())).unwrap(),
            header: SecretString::from("identity-header-secret"),
        },
    };
    let app = spawn_with(scenario, credential).await;
    let body = app.first_attempt(Period::D7).await;
    assert_eq!(sample(&body, &success(Period::D7)), Some(1.0), "{body}");
    let (_, readyz) = app.readyz().await;
    assert!(!readyz.to_string().contains("identity-header-secret"));
    app.stop().await;
}

/// The binary with a tenant and client id and nothing else of the environment.
fn exporter_with(vars: &[(&str, &str)], args: &[&str]) -> std::process::Command {
    let mut cmd = exporter();
    cmd.env("AZURE_TENANT_ID", TENANT)
        .env("AZURE_CLIENT_ID", CLIENT_ID)
        .envs(vars.iter().copied())
        .args(args);
    cmd
}

/// Runs the binary with `vars` and `args`; it must stop with one line holding `needles`.
fn fails_with(vars: &[(&str, &str)], args: &[&str], needles: &[&str]) {
    let (code, stderr) = run(&mut exporter_with(vars, args));
    assert_eq!(code, 1, "{vars:?}: {stderr}");
    assert_one_line(&stderr, needles);
    assert!(!stderr.contains("very-wrong-pw"), "{stderr}");
}

#[test]
fn startup_errors_are_one_line_naming_the_file_and_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let concat = |name: &str, parts: [&str; 2]| {
        let file = dir.path().join(name);
        let pieces = parts.map(|f| std::fs::read(fixture(f)).unwrap());
        std::fs::write(&file, pieces.concat()).unwrap();
        file.to_str().unwrap().to_string()
    };
    let mismatched = concat("mismatched.pem", ["cert-a.pem", "rsa-b.pkcs8.pem"]);
    let not_rsa = concat("ec.pem", ["cert-a.pem", "ec.pkcs8.pem"]);
    let p12 = fixture("aes.p12").to_str().unwrap().to_string();
    let readme = fixture("README.md").to_str().unwrap().to_string();
    let cert_only = fixture("cert-a.pem").to_str().unwrap().to_string();
    let certificate = |path: &str| ("AZURE_CLIENT_CERTIFICATE_PATH", path.to_string());

    fails_with(
        &[],
        &[],
        &[
            "no credential configured",
            "AZURE_CLIENT_SECRET",
            "AZURE_CLIENT_CERTIFICATE_PATH",
            "AZURE_FEDERATED_TOKEN_FILE",
            "--azure.credential managed-identity",
        ],
    );
    let cases = [
        (certificate("/nonexistent/c.pem"), "cannot read"),
        (certificate(&readme), "not a certificate"),
        (certificate(&cert_only), "no private key"),
        (certificate(&mismatched), "does not match"),
        (certificate(&not_rsa), "not RSA"),
        (
            ("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent/token".into()),
            "cannot read",
        ),
    ];
    for ((name, path), needle) in &cases {
        fails_with(&[(name, path)], &[], &[path, needle]);
    }
    fails_with(
        &[
            ("AZURE_CLIENT_CERTIFICATE_PATH", &p12),
            ("AZURE_CLIENT_CERTIFICATE_PASSWORD", "very-wrong-pw"),
        ],
        &[],
        &[&p12, "wrong PKCS#12 password"],
    );
    fails_with(
        &[],
        &["--azure.credential", "workload-identity"],
        &["AZURE_FEDERATED_TOKEN_FILE is not set"],
    );
    fails_with(
        &[("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi")],
        &["--azure.credential", "managed-identity"],
        &["IDENTITY_HEADER"],
    );
}

#[test]
fn config_check_prints_the_setup_for_each_cloud_without_secrets() {
    let p12 = fixture("legacy.p12");
    let vars = [
        ("AZURE_CLIENT_CERTIFICATE_PATH", p12.to_str().unwrap()),
        ("AZURE_CLIENT_CERTIFICATE_PASSWORD", P12_PASSWORD),
    ];
    for (cloud, authority, graph) in [
        (
            "global",
            "https://login.microsoftonline.com/",
            "https://graph.microsoft.com/",
        ),
        (
            "china",
            "https://login.chinacloudapi.cn/",
            "https://microsoftgraph.chinacloudapi.cn/",
        ),
        (
            "usgov",
            "https://login.microsoftonline.us/",
            "https://graph.microsoft.us/",
        ),
        (
            "usgov-dod",
            "https://login.microsoftonline.us/",
            "https://dod-graph.microsoft.us/",
        ),
    ] {
        let out = exporter_with(&vars, &["--config.check", "--azure.cloud", cloud])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{cloud}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in [
            "configuration OK".to_string(),
            "credential: certificate".into(),
            format!("tenant: {TENANT}"),
            format!("client id: {CLIENT_ID}"),
            format!("authority: {authority}"),
            format!("graph: {graph}"),
            "certificate subject: CN=sfb-exporter test".into(),
            "certificate notAfter: ".into(),
            "periods: D7,D30,D90,D180".into(),
        ] {
            assert!(
                stdout.contains(&line),
                "{cloud}: {line:?} missing from\n{stdout}"
            );
        }
        assert!(!stdout.contains(P12_PASSWORD));
    }
}

#[test]
fn config_check_lists_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: /nonexistent/tls.crt\n",
    )
    .unwrap();
    let mut cmd = exporter();
    cmd.env("AZURE_CLIENT_CERTIFICATE_PATH", "/nonexistent/c.pem")
        .env("AZURE_CLIENT_SECRET", "never-printed-secret")
        .args(["--config.check", "--azure.credential", "certificate"])
        .args(["--web.config.file", web.to_str().unwrap()]);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    for (line, needle) in lines.iter().zip([
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "/nonexistent/c.pem",
        "web.yml",
    ]) {
        assert!(line.contains(needle), "{needle:?} missing from {line:?}");
    }
    assert!(!stderr.contains("never-printed-secret"));
    assert!(out.stdout.is_empty());
}

#[test]
fn auto_picks_the_credential_in_the_sdk_order_as_config_check_shows() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "federated").unwrap();
    let p12 = fixture("aes.p12");
    let all = [
        ("AZURE_CLIENT_SECRET", "s"),
        ("AZURE_CLIENT_CERTIFICATE_PATH", p12.to_str().unwrap()),
        ("AZURE_CLIENT_CERTIFICATE_PASSWORD", P12_PASSWORD),
        ("AZURE_FEDERATED_TOKEN_FILE", token.to_str().unwrap()),
        ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
        ("IDENTITY_HEADER", "h"),
    ];
    for (skip, kind) in [
        (0, "secret"),
        (1, "certificate"),
        (3, "workload-identity"),
        (4, "managed-identity"),
    ] {
        let out = exporter_with(&all[skip..], &["--config.check"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("credential: {kind}\n")),
            "{stdout}"
        );
    }
}

/// An expired certificate: a warning naming notAfter at startup, then the exporter tries
/// anyway; nothing secret reaches the log even at debug level.
#[tokio::test]
async fn an_expired_certificate_is_a_warning_and_logs_stay_free_of_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let expired = time::macros::datetime!(2020-01-01 0:00 UTC);
    let (_, leaf) = certificate(&key("rsa-a.pkcs8.pem"), "expired", expired, None);
    let pem = dir.path().join("expired.pem");
    let key_pem = std::fs::read_to_string(fixture("rsa-a.pkcs8.pem")).unwrap();
    std::fs::write(&pem, format!("{leaf}{key_pem}")).unwrap();

    let (entra, scenario) = EntraId::for_certificates(&[&leaf], 0).answering(Scenario::new().await);
    let fakes = scenario.servers().await;
    let base = fakes.graph.uri();
    let process = Process::spawn(
        exporter_with(
            &[("AZURE_CLIENT_CERTIFICATE_PATH", pem.to_str().unwrap())],
            &[],
        )
        .env("AZURE_AUTHORITY_HOST", &base)
        .args(["--graph.url", &base, "--report.periods", "D7"])
        .args([
            "--web.listen-address",
            "127.0.0.1:0",
            "--log.format",
            "json",
        ])
        .args(["--log.level", "debug"]),
    );
    let log = process.log_until(|lines| {
        lines.iter().any(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("refresh failed"))
        })
    });
    let warning = log
        .iter()
        .find(|l| l.contains("expired at 2020-01-01T00:00:00Z"))
        .unwrap_or_else(|| panic!("no expiry warning in {log:#?}"));
    assert!(warning.contains("\"WARN\""), "{warning}");
    // The fake accepted the signature (Entra would refuse the expired certificate itself).
    accepted_at_least(&entra, 1).await;
    for line in &log {
        assert!(!line.contains("eyJ"), "an assertion in the log: {line}");
        assert!(!line.contains(ACCESS_TOKEN), "{line}");
        assert!(!line.contains("PRIVATE KEY"), "{line}");
    }
}

/// `--config.check` and the client certificate's notAfter: expired is a problem naming the
/// date (exit 1), within 14 days a warning (exit 0), later nothing; from the environment
/// and from --config.file alike.
#[test]
fn config_check_refuses_an_expired_certificate_and_warns_of_one_expiring_soon() {
    let dir = tempfile::tempdir().unwrap();
    let key_pem = std::fs::read_to_string(fixture("rsa-a.pkcs8.pem")).unwrap();
    let write = |name: &str, not_after: time::OffsetDateTime| {
        let (_, leaf) = certificate(&key("rsa-a.pkcs8.pem"), name, not_after, None);
        let pem = dir.path().join(format!("{name}.pem"));
        std::fs::write(&pem, format!("{leaf}{key_pem}")).unwrap();
        pem.to_str().unwrap().to_string()
    };
    let expired = write("expired", time::macros::datetime!(2020-01-01 0:00 UTC));
    let soon = write("soon", in_days(7));
    let later = write("later", in_days(30));
    let check = |pem: &str| {
        exporter_with(
            &[("AZURE_CLIENT_CERTIFICATE_PATH", pem)],
            &["--config.check"],
        )
        .output()
        .unwrap()
    };

    let out = check(&expired);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_one_line(&stderr, &["expired.pem", "expired at 2020-01-01T00:00:00Z"]);
    assert!(out.stdout.is_empty());

    let out = check(&soon);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let warning = stdout
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning in {stdout}"));
    assert!(
        warning.contains("soon.pem") && warning.contains(", in 6 days: "),
        "{warning}"
    );

    let out = check(&later);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(!stdout.contains("warning: "), "{stdout}");

    // The same from a tenant of --config.file, named by its tenant_id.
    let file = dir.path().join("tenants.yml");
    for (pem, expect_ok, needle) in [
        (&expired, false, "tenant t1: the client certificate in "),
        (
            &soon,
            true,
            "warning: tenant t1: the client certificate in ",
        ),
    ] {
        std::fs::write(
            &file,
            format!(
                "tenants:\n  - {{tenant_id: t1, client_id: c, client_certificate_path: {pem}}}\n"
            ),
        )
        .unwrap();
        let out = exporter()
            .args(["--config.check", "--config.file", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.success(), expect_ok, "{out:?}");
        let text = if expect_ok { &out.stdout } else { &out.stderr };
        let text = String::from_utf8_lossy(text);
        assert!(text.contains(needle), "{text}");
    }
}
