//! `--web.config.file`: the TLS, basic auth and header settings that Prometheus' Go exporters
//! take (prometheus/exporter-toolkit), validated at startup with one-line errors.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The file as exporter-toolkit defines it; unknown keys are errors, as there. No Debug: it
/// may hold an inline private key.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    cert: Option<String>,
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_ca: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    /// Ignored by Go since 1.18 as well.
    #[allow(dead_code)]
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

impl TlsFile {
    /// Go reads an empty string as unset; so do we.
    fn without_empty(mut self) -> TlsFile {
        fn text(v: &mut Option<String>) {
            v.take_if(|v| v.is_empty());
        }
        fn path(v: &mut Option<PathBuf>) {
            v.take_if(|v| v.as_os_str().is_empty());
        }
        text(&mut self.cert);
        text(&mut self.key);
        text(&mut self.client_ca);
        text(&mut self.client_auth_type);
        path(&mut self.cert_file);
        path(&mut self.key_file);
        path(&mut self.client_ca_file);
        self
    }

    /// exporter-toolkit's TLSConfig.IsEnabled.
    fn is_enabled(&self) -> bool {
        self.cert.is_some()
            || self.cert_file.is_some()
            || self.key.is_some()
            || self.key_file.is_some()
            || self.client_ca.is_some()
            || self.client_ca_file.is_some()
            || self.client_auth_type.is_some()
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// Accepted for compatibility; the exporter serves HTTP/1.1.
    #[allow(dead_code)]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// The headers exporter-toolkit lets a web config set.
const ALLOWED_HEADERS: [&str; 5] = [
    "Content-Security-Policy",
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
];

#[derive(Debug, thiserror::Error)]
#[error("--web.config.file {path:?}: {message}")]
pub struct WebConfigError {
    path: PathBuf,
    message: String,
}

/// What the web config asks of the server.
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    pub security: Arc<Security>,
    /// The files this configuration was read from, as they were then.
    pub sources: Sources,
}

/// Size and modification time of every file a configuration was read from, to tell when it
/// must be read again (certificates get rotated; Kubernetes swaps mounted secrets by symlink,
/// which the metadata, following links, sees).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources(Vec<(PathBuf, Option<(std::time::SystemTime, u64)>)>);

impl Sources {
    fn of(paths: Vec<PathBuf>) -> Sources {
        Sources(
            paths
                .into_iter()
                .map(|path| {
                    let meta = std::fs::metadata(&path)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())));
                    (path, meta)
                })
                .collect(),
        )
    }

    /// The same files as they are now.
    pub fn now(&self) -> Sources {
        Sources::of(self.0.iter().map(|(path, _)| path.clone()).collect())
    }
}

/// Basic auth and response headers, applied to every route.
pub struct Security {
    users: Option<Users>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// One bcrypt at a time: a flood of wrong passwords queues here instead of taking every
    /// core, while scrapers with cached credentials never wait on it.
    bcrypt_slot: tokio::sync::Semaphore,
}

struct Users {
    hashes: HashMap<String, String>,
    /// Checked for unknown users, so the time taken does not reveal which users exist.
    dummy: String,
    /// Outcomes by (user, SHA-256 of password): bcrypt costs tens of milliseconds, a scraper
    /// sends the same credentials every few seconds, and an attacker's repeats should cost
    /// nothing either.
    outcomes: Mutex<Vec<(String, [u8; 32], bool)>>,
}

const OUTCOME_CACHE: usize = 256;

impl WebConfig {
    /// No TLS, no auth, no extra headers: what runs without --web.config.file.
    pub fn plain() -> WebConfig {
        WebConfig {
            tls: None,
            security: Security::none(),
            sources: Sources(Vec::new()),
        }
    }

    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let fail = |message: String| WebConfigError {
            path: path.to_path_buf(),
            message: crate::text::one_line(&message, 400),
        };
        let mut files = vec![path.to_path_buf()];
        // Taken before reading, so that a change made while reading is seen next time.
        let sources = Sources::of(files.clone());
        let text =
            std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        // Relative file names in the config are relative to the config file, as in the toolkit.
        let dir = path.parent().unwrap_or(Path::new("."));
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_norway::from_str(&text)
                .map_err(|e| fail(format!("invalid YAML: {}", without_quoted(&e.to_string()))))?
        };
        if let Some(t) = &file.tls_server_config {
            files.extend(
                [&t.cert_file, &t.key_file, &t.client_ca_file]
                    .into_iter()
                    .flatten()
                    .map(|f| dir.join(f)),
            );
        }
        let sources = Sources(
            sources
                .0
                .into_iter()
                .chain(Sources::of(files.split_off(1)).0)
                .collect(),
        );
        // A tls_server_config that sets none of certificate, key, client CA or client auth
        // means plain HTTP, as there; setting any of them asks for TLS, and a missing
        // certificate is then an error, never a silent fall-back to plain HTTP.
        let tls = file
            .tls_server_config
            .map(TlsFile::without_empty)
            .filter(TlsFile::is_enabled)
            .map(|t| tls_config(t, dir).map(Arc::new))
            .transpose()
            .map_err(fail)?;
        let headers = file
            .http_server_config
            .and_then(|h| h.headers)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| header_pair(&name, &value))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        // As in exporter-toolkit, an empty user list means no basic auth.
        let users = file
            .basic_auth_users
            .filter(|u| !u.is_empty())
            .map(users)
            .transpose()
            .map_err(fail)?;
        Ok(WebConfig {
            tls,
            security: Arc::new(Security::new(users, headers)),
            sources,
        })
    }
}

/// The YAML parser quotes offending values, which may be passwords or keys: keep the message,
/// drop what is between quotes.
fn without_quoted(message: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in message.chars() {
        match (c, quoted) {
            ('"', false) => {
                quoted = true;
                out.push_str("\"…");
            }
            ('"', true) => {
                quoted = false;
                out.push('"');
            }
            (c, false) => out.push(c),
            _ => {}
        }
    }
    out
}

fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let Some(allowed) = ALLOWED_HEADERS
        .iter()
        .find(|h| h.eq_ignore_ascii_case(name))
    else {
        return Err(format!(
            "http_server_config.headers: {name:?} cannot be set; allowed: {}",
            ALLOWED_HEADERS.join(", ")
        ));
    };
    let value = HeaderValue::from_str(value)
        .map_err(|_| format!("http_server_config.headers: invalid value for {allowed}"))?;
    // from_bytes normalizes the configured spelling to the lowercase form HeaderName holds.
    let name = HeaderName::from_bytes(allowed.as_bytes())
        .map_err(|_| format!("http_server_config.headers: invalid name {allowed}"))?;
    Ok((name, value))
}

fn users(hashes: BTreeMap<String, String>) -> Result<Users, String> {
    let mut cost = 0;
    for (user, hash) in &hashes {
        let parts: bcrypt::HashParts = hash.parse().map_err(|_| {
            format!("basic_auth_users: the password of {user:?} is not a bcrypt hash")
        })?;
        cost = cost.max(parts.get_cost());
    }
    // As costly as the dearest real hash, so an unknown user takes as long as a known one.
    let dummy = bcrypt::hash(fastrand::u64(..).to_string(), cost.max(4))
        .map_err(|e| format!("basic_auth_users: {e}"))?;
    Ok(Users {
        hashes: hashes.into_iter().collect(),
        dummy,
        outcomes: Mutex::new(Vec::new()),
    })
}

impl Users {
    fn cached(&self, user: &str, digest: &[u8; 32]) -> Option<bool> {
        let outcomes = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        outcomes
            .iter()
            .find(|(u, d, _)| u == user && d == digest)
            .map(|(_, _, ok)| *ok)
    }

    /// The slow check, with bcrypt; unknown users are checked against the dummy hash.
    fn verify(&self, user: &str, password: &str, digest: [u8; 32]) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(hash) => (hash.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let ok = bcrypt::verify(password, hash).unwrap_or(false) && known;
        let mut outcomes = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        if outcomes.len() >= OUTCOME_CACHE {
            outcomes.clear();
        }
        outcomes.push((user.to_string(), digest, ok));
        ok
    }

    #[cfg(test)]
    fn check(&self, user: &str, password: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        self.cached(user, &digest)
            .unwrap_or_else(|| self.verify(user, password, digest))
    }
}

impl Security {
    /// Nothing to enforce.
    pub fn none() -> Arc<Security> {
        Arc::new(Security::new(None, Vec::new()))
    }

    fn new(users: Option<Users>, headers: Vec<(HeaderName, HeaderValue)>) -> Security {
        Security {
            users,
            headers,
            bcrypt_slot: tokio::sync::Semaphore::new(1),
        }
    }

    pub fn requires_auth(&self) -> bool {
        self.users.is_some()
    }
}

/// Middleware: configured headers on every response, basic auth on every route.
pub async fn guard(
    State(current): State<Arc<ArcSwap<Security>>>,
    request: Request,
    next: Next,
) -> Response {
    let security = current.load_full();
    let mut response = match &security.users {
        Some(_) if !authorized(&security, request.headers()).await => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"sfb-exporter\"")],
            "Unauthorized\n",
        )
            .into_response(),
        _ => next.run(request).await,
    };
    for (name, value) in &security.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

async fn authorized(security: &Arc<Security>, headers: &HeaderMap) -> bool {
    let (Some(users), Some((user, password))) = (&security.users, basic_credentials(headers))
    else {
        return false;
    };
    let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
    if let Some(ok) = users.cached(&user, &digest) {
        return ok;
    }
    let Ok(_slot) = security.bcrypt_slot.acquire().await else {
        return false;
    };
    let security = Arc::clone(security);
    // bcrypt is deliberately slow: keep it off the threads that serve other requests.
    tokio::task::spawn_blocking(move || {
        security
            .users
            .as_ref()
            .is_some_and(|users| users.verify(&user, &password, digest))
    })
    .await
    .unwrap_or(false)
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

fn tls_config(t: TlsFile, dir: &Path) -> Result<ServerConfig, String> {
    for (set, key) in [
        (t.cipher_suites.is_some(), "cipher_suites"),
        (t.curve_preferences.is_some(), "curve_preferences"),
        (t.client_allowed_sans.is_some(), "client_allowed_sans"),
    ] {
        if set {
            return Err(format!(
                "tls_server_config.{key} is not supported by sfb-exporter (rustls offers only modern, secure choices); remove it"
            ));
        }
    }
    let read = |what: &str,
                inline: Option<String>,
                file: Option<PathBuf>|
     -> Result<Option<Vec<u8>>, String> {
        match (inline, file) {
            (Some(_), Some(_)) => Err(format!(
                "tls_server_config: give {what} or {what}_file, not both"
            )),
            (Some(text), None) => Ok(Some(text.into_bytes())),
            (None, Some(file)) => {
                let file = dir.join(file);
                std::fs::read(&file)
                    .map(Some)
                    .map_err(|e| format!("tls_server_config.{what}_file {file:?}: {e}"))
            }
            (None, None) => Ok(None),
        }
    };
    // Checked first, as in the toolkit: TLS was asked for, so there must be a certificate.
    if t.cert.is_none() && t.cert_file.is_none() {
        return Err("tls_server_config: missing one of cert or cert_file".into());
    }
    if t.key.is_none() && t.key_file.is_none() {
        return Err("tls_server_config: missing one of key or key_file".into());
    }
    // The settings are checked before any file is read, so a wrong setting is named first.
    let auth = match t.client_auth_type.as_deref().unwrap_or("") {
        "" | "NoClientCert" => ClientAuth::NoClientCert,
        "RequestClientCert" => ClientAuth::RequestClientCert,
        // RequireClientCert: exporter-toolkit's older name for it.
        "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type {other:?} is not one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
            ))
        }
    };
    let verifies = matches!(
        auth,
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
    );
    match (t.client_ca.is_some() || t.client_ca_file.is_some(), verifies) {
        // Request/RequireAny take a CA without verifying against it, as Go does.
        (true, false) if auth == ClientAuth::NoClientCert => {
            return Err("tls_server_config: client_ca_file is set but client_auth_type is NoClientCert: set a client_auth_type".into())
        }
        (false, true) => return Err(format!("tls_server_config: client_auth_type {auth:?} needs client_ca_file")),
        _ => {}
    }

    let client_ca = read("client_ca", t.client_ca, t.client_ca_file)?;
    let cert = read("cert", t.cert, t.cert_file)?.unwrap_or_default();
    let key = read("key", t.key, t.key_file)?.unwrap_or_default();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_server_config: cert_file is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("tls_server_config: cert_file holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| format!("tls_server_config: key_file is not a PEM private key: {e}"))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = versions(t.min_version.as_deref(), t.max_version.as_deref())?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;
    let builder = match (auth, client_ca) {
        (ClientAuth::NoClientCert, _) => builder.with_no_client_auth(),
        (ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert, _) => builder
            .with_client_cert_verifier(Arc::new(AnyClientCert {
                mandatory: auth == ClientAuth::RequireAnyClientCert,
                provider: Arc::clone(&provider),
            })),
        (_, ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca.unwrap_or_default()) {
                let cert =
                    cert.map_err(|e| format!("tls_server_config: client_ca_file is not PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("tls_server_config: client_ca_file: {e}"))?;
            }
            if roots.is_empty() {
                return Err("tls_server_config: client_ca_file holds no certificate".into());
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = if auth == ClientAuth::VerifyClientCertIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("tls_server_config: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_server_config: certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn versions(
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let parse = |key: &str, v: Option<&str>, default: u8| match v {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some(old @ ("TLS10" | "TLS11")) => Err(format!(
            "tls_server_config.{key} {old} is not supported: sfb-exporter speaks TLS 1.2 and 1.3"
        )),
        Some(other) => Err(format!(
            "tls_server_config.{key} {other:?} is not one of TLS12, TLS13"
        )),
    };
    let (min, max) = (
        parse("min_version", min, 12)?,
        parse("max_version", max, 13)?,
    );
    let versions: Vec<_> = [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(v, _)| (min..=max).contains(v))
        .map(|(_, version)| version)
        .collect();
    if versions.is_empty() {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    Ok(versions)
}

/// Go's RequestClientCert and RequireAnyClientCert: ask for a certificate and check it signs
/// the handshake, but do not verify it against any CA.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<WebConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        std::fs::write(&path, yaml).unwrap();
        WebConfig::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_plain_http() {
        let c = load("").unwrap();
        assert!(c.tls.is_none() && !c.security.requires_auth());
        let c = load(
            "basic_auth_users: {}
tls_server_config:
  min_version: TLS13
",
        )
        .unwrap();
        assert!(
            !c.security.requires_auth(),
            "an empty user list means no auth, as in the toolkit"
        );
        assert!(
            c.tls.is_none(),
            "no certificate and no key means plain HTTP, as in the toolkit"
        );
    }

    #[test]
    fn client_auth_without_a_certificate_is_refused_not_plain_http() {
        for tls in [
            "client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt",
            "client_auth_type: RequireAnyClientCert",
            "client_ca_file: ca.crt",
            "client_ca: x",
            "key_file: server.key",
            "cert_file: \"\"\n  key_file: server.key",
        ] {
            let err = load(&format!("tls_server_config:\n  {tls}\n"))
                .err()
                .unwrap_or_else(|| panic!("{tls:?} accepted"));
            assert!(err.contains("missing one of cert or cert_file"), "{err}");
        }
        let err = load("tls_server_config:\n  cert_file: server.crt\n  key: \"\"\n")
            .err()
            .unwrap();
        assert!(err.contains("missing one of key or key_file"), "{err}");
    }

    #[test]
    fn bad_configurations_name_what_is_wrong() {
        let cases = [
            (
                "tls_server_config:\n  key_file: k\n",
                "missing one of cert or cert_file",
            ),
            (
                "tls_server_config:\n  cert_file: /nonexistent/c\n  key_file: k\n",
                "/nonexistent/c",
            ),
            (
                "tls_server_config:\n  key_file: k\n  min_version: TLS10\n",
                "missing one of cert or cert_file",
            ),
            ("unknown_key: 1\n", "unknown field `unknown_key`"),
            (
                "tls_server_config:\n  cert_file: c\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
                "cipher_suites is not supported",
            ),
            (
                "basic_auth_users:\n  alice: plaintext\n",
                "the password of \"alice\" is not a bcrypt hash",
            ),
            (
                "http_server_config:\n  headers:\n    Server: x\n",
                "\"Server\" cannot be set",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: \"a\\nb\"\n",
                "invalid value for X-Frame-Options",
            ),
            ("tls_server_config: [\n", "invalid YAML"),
            ("basic_auth_users: \"hunter2secret\"\n", "invalid YAML"),
        ];
        for (yaml, expected) in cases {
            let err = load(yaml)
                .err()
                .unwrap_or_else(|| panic!("{yaml:?} accepted"));
            assert!(err.contains(expected), "{yaml:?}: {err}");
            assert!(!err.contains('\n'), "{err:?}");
            assert!(!err.contains("hunter2secret"), "{err:?}");
        }
    }

    #[test]
    fn versions_follow_min_and_max() {
        assert_eq!(versions(None, None).unwrap().len(), 2);
        assert_eq!(
            versions(Some("TLS13"), None).unwrap(),
            vec![&rustls::version::TLS13]
        );
        assert_eq!(
            versions(None, Some("TLS12")).unwrap(),
            vec![&rustls::version::TLS12]
        );
        assert!(versions(Some("TLS11"), None)
            .unwrap_err()
            .contains("TLS 1.2 and 1.3"));
        assert!(versions(Some("TLS13"), Some("TLS12"))
            .unwrap_err()
            .contains("above"));
        assert!(versions(Some("SSL3"), None).is_err());
    }

    #[test]
    fn basic_auth_checks_and_caches() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = users([("alice".to_string(), hash)].into_iter().collect()).unwrap();
        let dummy: bcrypt::HashParts = users.dummy.parse().unwrap();
        assert_eq!(dummy.get_cost(), 4, "as costly as the configured hashes");
        assert!(!users.check("alice", "wrong"));
        assert!(!users.check("bob", "s3cret"));
        assert!(users.check("alice", "s3cret"));
        assert_eq!(
            users.outcomes.lock().unwrap().len(),
            3,
            "failures are cached too"
        );
        assert!(users.check("alice", "s3cret"));
        assert!(!users.check("alice", "s3cret2"));
    }

    #[test]
    fn credentials_from_the_header() {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("alice".into(), "pa:ss".into()))
        );
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_credentials(&headers), None);
        headers.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(basic_credentials(&headers), None);
    }
}
