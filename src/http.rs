//! One bounded HTTP exchange: the whole answer, body included, within the timeout and the size
//! cap, or an error that says which limit was hit; and the client it goes through, with the
//! CA certificates that client trusts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::Semaphore;

use crate::error::{RefreshError, RequestId, Stage};
use crate::files::read_bounded;
use crate::text::one_line;

/// Clones share the in-flight bound and the counts.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub timeout: Duration,
    pub max_body_bytes: u64,
    /// Shared by every tenant: bounds the exchanges in flight (--graph.max-concurrency).
    pub in_flight: Option<Arc<Semaphore>>,
    /// Shared by every exchange of a tenant, for `sfb_graph_requests_total`.
    pub requests: Arc<RequestCounts>,
}

/// Exchanges by stage and HTTP status (None: no answer came back), retries included.
#[derive(Debug, Default)]
pub(crate) struct RequestCounts(Mutex<BTreeMap<(Stage, Option<u16>), u64>>);

impl RequestCounts {
    fn count(&self, stage: Stage, status: Option<u16>) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry((stage, status)).or_default() += 1;
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<(Stage, Option<u16>), u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// A string field of Graph's error envelope (`{"error":{"code","message","innerError":{..}}}`),
    /// by JSON pointer; None when the body is not that envelope.
    fn graph_error(&self, pointer: &str) -> Option<String> {
        let envelope: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        Some(envelope.pointer(pointer)?.as_str()?.to_string())
    }

    /// Graph's error code (`error.code`), such as S2SUnauthorized.
    pub(crate) fn graph_code(&self) -> Option<String> {
        self.graph_error("/error/code")
    }

    /// Graph's request-id, from the header or else from the error envelope's innerError.
    pub(crate) fn request_id(&self) -> RequestId {
        let header = self
            .headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(|v| one_line(v, 64));
        RequestId(header.or_else(|| {
            let id = self.graph_error("/error/innerError/request-id")?;
            Some(one_line(&id, 64))
        }))
    }

    /// Retry-After, in seconds or as an HTTP date.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        let value = self.headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        let at = httpdate::parse_http_date(value).ok()?;
        Some(
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }

    /// A one-line account of an unexpected answer: Graph's error code and message when the body
    /// is its JSON envelope, else the status line.
    pub(crate) fn describe(&self) -> String {
        let graph_error = self.graph_code().map(|code| {
            let message = self.graph_error("/error/message").unwrap_or_default();
            one_line(&format!("{code}: {message}"), 200)
        });
        match graph_error {
            Some(e) => format!("HTTP {}: {e}", self.status.as_u16()),
            None => format!("HTTP {}", self.status),
        }
    }
}

pub(crate) async fn exchange(
    stage: Stage,
    request: RequestBuilder,
    limits: &Limits,
) -> Result<Answer, RefreshError> {
    let timeout = limits.timeout;
    // Waiting for a slot is not part of the exchange's own timeout.
    let _slot = match &limits.in_flight {
        Some(slots) => Some(Arc::clone(slots).acquire_owned().await),
        None => None,
    };
    let answered = AtomicBool::new(false);
    let work = async {
        let sent = request.send().await;
        answered.store(true, Ordering::Relaxed);
        limits
            .requests
            .count(stage, sent.as_ref().ok().map(|r| r.status().as_u16()));
        let mut response = sent.map_err(|e| network_error(stage, e, timeout))?;
        let too_large = RefreshError::TooLarge {
            stage,
            limit: limits.max_body_bytes,
        };
        if response
            .content_length()
            .is_some_and(|n| n > limits.max_body_bytes)
        {
            return Err(too_large);
        }
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = BytesMut::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| RefreshError::network(stage, e, timeout))?
        {
            if (body.len() + chunk.len()) as u64 > limits.max_body_bytes {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            headers,
            body: body.freeze(),
        })
    };
    let outcome = tokio::time::timeout(timeout, work).await;
    if outcome.is_err() && !answered.load(Ordering::Relaxed) {
        limits.requests.count(stage, None);
    }
    outcome.map_err(|_| RefreshError::Timeout { stage, timeout })?
}

/// A failed send, as [`RefreshError::network`] words it, and through which proxy when the
/// proxy's tunnel failed: hyper-util's tunnel error names neither the proxy nor its answer,
/// and its type is private, so it is recognised by its words. The proxy is the one
/// [`outbound_proxy`] reads from the environment, which is the one reqwest read.
fn network_error(stage: Stage, err: reqwest::Error, timeout: Duration) -> RefreshError {
    let tunnel = std::iter::successors(std::error::Error::source(&err), |cause| cause.source())
        .any(|cause| cause.to_string().starts_with("tunnel error"));
    match RefreshError::network(stage, err, timeout) {
        RefreshError::Network { stage, detail } if tunnel => {
            let proxy = match outbound_proxy(|name| std::env::var(name).ok()) {
                Ok(Proxies::Via { proxy, .. }) => {
                    format!("the proxy {} ({})", proxy.address, proxy.variable)
                }
                _ => "the proxy".into(),
            };
            RefreshError::Network {
                stage,
                detail: format!("through {proxy}: {detail}"),
            }
        }
        error => error,
    }
}

/// The client every exchange goes through, trusting [`trusted_roots`] of this process's
/// environment, through the proxy [`outbound_proxy`] reads from it. Redirects are never
/// followed automatically: the report's redirect must be followed by hand, without the
/// Authorization header.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    let env = |name: &str| std::env::var(name).ok();
    let roots = trusted_roots(env, system_store)?;
    if let Some(warning) = &roots.warning {
        tracing::warn!("{warning}");
    }
    tracing::debug!(roots = %roots.origin, "outbound TLS trusts these CA certificates");
    let proxies = outbound_proxy(env)?;
    tracing::debug!(proxy = %proxies.describe(), "outbound proxy");
    let mut builder = builder(roots.store)?;
    if let Proxies::Bypassed(_) = proxies {
        // reqwest's matcher takes `*` as a host name, so it never matches an IP address.
        builder = builder.no_proxy();
    }
    builder
        // An async resolver: no blocking getaddrinfo threads to outlive shutdown, and no
        // dependency on glibc's NSS, which a static binary cannot load. Its hosts file
        // answers are final, as the system resolver's are (see dns.rs).
        .dns_resolver(Arc::new(crate::dns::Resolver::system()))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .user_agent(concat!("sfb-exporter/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// reqwest over TLS from aws-lc-rs, the one crypto provider of the process: reqwest's own
/// rustls setup would bring ring. HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY are honoured
/// (reqwest's system proxy), and the TLS session to the server runs inside the proxy's tunnel.
/// [`client`] adds what reqwest leaves out: NO_PROXY=* and the refusal of unusable proxies.
pub(crate) fn builder(roots: RootCertStore) -> Result<reqwest::ClientBuilder, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // reqwest is built without HTTP/2; offering h2 would let a server pick what it cannot speak.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls))
}

/// A CA bundle is a few hundred KiB; the cap keeps a wrong path from eating memory.
const MAX_BUNDLE: u64 = 16 * 1024 * 1024;

/// The CA certificates outbound TLS trusts, and where they came from.
pub(crate) struct TrustedRoots {
    pub store: RootCertStore,
    /// Where they came from, for `--config.check` and the logs.
    pub origin: String,
    /// Something the operator should know that did not stop the client from being built.
    pub warning: Option<String>,
}

/// The platform's trust, as OpenSSL-based tools read it: only `SSL_CERT_FILE` (a PEM bundle)
/// and `SSL_CERT_DIR` (directories of PEM files, `:`-separated) when either is set, else the
/// system store that `system` loads (the distribution's bundle on Linux, the keychain on macOS).
///
/// A variable the operator set must deliver: unreadable, malformed or without a certificate, it
/// is an error naming it, never a silent fallback to roots they did not choose. A system with
/// no store at all (a scratch container) falls back to the bundled Mozilla roots, with a
/// warning, as the exporter trusted before it read the platform's store.
pub(crate) fn trusted_roots(
    env: impl Fn(&str) -> Option<String>,
    system: impl FnOnce() -> rustls_native_certs::CertificateResult,
) -> Result<TrustedRoots, String> {
    // Empty is unset, as in most tools that read these variables.
    let set = |name: &str| env(name).filter(|value| !value.is_empty());
    let file = set("SSL_CERT_FILE").map(PathBuf::from);
    let dirs: Vec<PathBuf> = set("SSL_CERT_DIR")
        .map(|value| {
            std::env::split_paths(&value)
                .filter(|dir| !dir.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if file.is_none() && dirs.is_empty() {
        return Ok(system_roots(system()));
    }
    let mut roots = TrustedRoots {
        store: RootCertStore::empty(),
        origin: String::new(),
        warning: None,
    };
    let mut origins = Vec::new();
    let mut warnings = Vec::new();
    let mut add = |store: &mut RootCertStore, what: String, certs| {
        let (added, ignored) = store.add_parsable_certificates(certs);
        if ignored > 0 {
            warnings.push(format!(
                "{what}: {} ignored, not usable as a trust anchor",
                count(ignored)
            ));
        }
        origins.push(format!("{what} ({})", count(added)));
        added
    };
    if let Some(file) = &file {
        let what = format!("SSL_CERT_FILE {}", file.display());
        let bytes = read_bounded(file, MAX_BUNDLE)
            .map_err(|e| format!("{what}: cannot read the file: {e}"))?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{what}: not a valid PEM file ({e})"))?;
        if add(&mut roots.store, what.clone(), certs) == 0 {
            return Err(format!("{what}: no usable CA certificate in the file: it must hold the PEM certificates to trust"));
        }
    }
    for dir in &dirs {
        let what = format!("SSL_CERT_DIR {}", dir.display());
        let found = rustls_native_certs::load_certs_from_paths(None, Some(dir));
        if let Some(error) = found.errors.first() {
            use rustls_native_certs::ErrorKind;
            let problem = match &error.kind {
                ErrorKind::Io { inner, path } if path == dir => {
                    format!("cannot read the directory: {inner}")
                }
                ErrorKind::Io { inner, path } => format!("cannot read {}: {inner}", path.display()),
                ErrorKind::Pem(e) => format!("a file in it is not valid PEM ({e})"),
                _ => one_line(&error.to_string(), 300),
            };
            return Err(format!("{what}: {problem}"));
        }
        if add(&mut roots.store, what.clone(), found.certs) == 0 {
            return Err(format!("{what}: no usable CA certificate in the directory: it must hold PEM files of the certificates to trust"));
        }
    }
    roots.origin = origins.join(", ");
    roots.warning = (!warnings.is_empty()).then(|| warnings.join("; "));
    Ok(roots)
}

/// The system store, or the bundled Mozilla roots when it holds nothing.
fn system_roots(found: rustls_native_certs::CertificateResult) -> TrustedRoots {
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    let first_error = found.errors.first().map(|e| one_line(&e.to_string(), 300));
    if added == 0 {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let why = first_error.map_or_else(String::new, |e| format!(" ({e})"));
        return TrustedRoots {
            store,
            origin: "the bundled Mozilla roots (no system store found)".into(),
            warning: Some(format!("no trusted CA certificates found on this system{why}: trusting the bundled Mozilla roots instead; behind a TLS-inspecting proxy, install its CA in the system store or set SSL_CERT_FILE")),
        };
    }
    TrustedRoots {
        store,
        origin: format!("the system store ({})", count(added)),
        warning: first_error.map(|e| {
            format!(
                "some of the system's CA certificates cannot be read ({e}); trusting the {} that can",
                count(added)
            )
        }),
    }
}

/// The system store, read without `SSL_CERT_FILE` and `SSL_CERT_DIR`: [`trusted_roots`] has
/// already read them (an empty value is unset there), while rustls-native-certs'
/// `load_native_certs` reads them again and takes an empty SSL_CERT_FILE for the path "".
/// These are the bundle and directories that `load_native_certs` reads on such a system.
#[cfg(all(unix, not(target_os = "macos")))]
pub(crate) fn system_store() -> rustls_native_certs::CertificateResult {
    // probe() takes SSL_CERT_FILE only when it names an existing file; here it is unset or
    // empty, so the file is the distribution's bundle.
    let bundle = openssl_probe::probe().cert_file;
    let mut found = rustls_native_certs::load_certs_from_paths(bundle.as_deref(), None);
    for dir in openssl_probe::candidate_cert_dirs() {
        let more = rustls_native_certs::load_certs_from_paths(None, Some(dir));
        found.certs.extend(more.certs);
        found.errors.extend(more.errors);
    }
    // The directories hold the bundle's certificates again, a file each.
    found
        .certs
        .sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
    found.certs.dedup();
    found
}

/// The keychain (macOS) or the system store (Windows). rustls-native-certs reads the two
/// variables first there, with no other way to the platform's store: an empty one must be
/// unset, not set empty (README).
#[cfg(not(all(unix, not(target_os = "macos"))))]
pub(crate) fn system_store() -> rustls_native_certs::CertificateResult {
    rustls_native_certs::load_native_certs()
}

/// The proxy HTTPS goes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboundProxy {
    /// The variable that names it.
    pub variable: &'static str,
    /// `host:port`, never the credentials.
    pub address: String,
    /// The URL with any credentials masked.
    pub shown: String,
}

/// Where outbound connections go, as reqwest reads the proxy variables (hyper-util's
/// matcher, curl's rules), and NO_PROXY=* as curl takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Proxies {
    /// No proxy for the https endpoints (HTTP_PROXY, read by reqwest, serves http:// ones).
    None,
    /// NO_PROXY (or no_proxy, the variable named) holds `*`: no proxy at all.
    Bypassed(&'static str),
    /// REQUEST_METHOD is set: reqwest ignores every proxy variable, as CGI programs must
    /// (a request's `Proxy:` header becomes HTTP_PROXY there).
    Cgi,
    /// HTTPS through this proxy, except to the hosts of NO_PROXY (the variable and its value).
    Via {
        proxy: OutboundProxy,
        no_proxy: Option<(&'static str, String)>,
    },
}

impl Proxies {
    /// For `--config.check` and the logs; credentials masked.
    pub(crate) fn describe(&self) -> String {
        match self {
            Proxies::None => "none".into(),
            Proxies::Bypassed(variable) => format!("none ({variable} holds *)"),
            Proxies::Cgi => {
                "none (REQUEST_METHOD is set: proxy variables are ignored, as in a CGI program)"
                    .into()
            }
            Proxies::Via { proxy, no_proxy } => {
                let mut text = format!("{} (from {})", proxy.shown, proxy.variable);
                if let Some((variable, hosts)) = no_proxy.as_ref().filter(|(_, h)| !h.is_empty()) {
                    text.push_str(&format!(", direct to {variable} {}", one_line(hosts, 200)));
                }
                text
            }
        }
    }
}

/// The first of `names` that is set, as hyper-util reads them: a variable set empty hides
/// the ones after it.
fn first_set(
    env: &impl Fn(&str) -> Option<String>,
    names: [&'static str; 2],
) -> Option<(&'static str, String)> {
    names
        .into_iter()
        .find_map(|name| env(name).map(|value| (name, value)))
}

/// The proxy for the https endpoints, from the variables reqwest reads: HTTPS_PROXY (or
/// https_proxy), else ALL_PROXY (or all_proxy). A proxy that reqwest would skip (not a URL)
/// or could not use (SOCKS is not built in, other schemes are no proxy) is an error naming
/// the variable, where reqwest would connect directly without a word.
pub(crate) fn outbound_proxy(env: impl Fn(&str) -> Option<String>) -> Result<Proxies, String> {
    if env("REQUEST_METHOD").is_some() {
        return Ok(Proxies::Cgi);
    }
    let no_proxy = first_set(&env, ["NO_PROXY", "no_proxy"]);
    if let Some((variable, hosts)) = &no_proxy {
        if hosts.split(',').any(|host| host.trim() == "*") {
            return Ok(Proxies::Bypassed(variable));
        }
    }
    let named = |names| first_set(&env, names).filter(|(_, value)| !value.is_empty());
    let Some((variable, value)) =
        named(["HTTPS_PROXY", "https_proxy"]).or_else(|| named(["ALL_PROXY", "all_proxy"]))
    else {
        return Ok(Proxies::None);
    };
    Ok(Proxies::Via {
        proxy: parse_proxy(variable, &value)?,
        no_proxy,
    })
}

/// A proxy URL as hyper-util parses it (an `http::Uri`; no scheme is http), or why not.
fn parse_proxy(variable: &'static str, value: &str) -> Result<OutboundProxy, String> {
    use axum::http::Uri;
    let bad = |why: &str| {
        format!(
            "{variable}={}: {why}; it must be an HTTP proxy's URL, such as http://proxy.example:3128 (or http://user:password@proxy.example:3128)",
            one_line(&mask_credentials(value), 200)
        )
    };
    let uri: Uri = value.parse().map_err(|_| bad("not a URL"))?;
    let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
    match scheme.as_str() {
        "http" | "https" => {}
        "socks4" | "socks4a" | "socks5" | "socks5h" => {
            return Err(bad(
                "SOCKS proxies are not supported (this build has no SOCKS client)",
            ))
        }
        other => return Err(bad(&format!("{other}:// is not a proxy scheme"))),
    }
    let authority = uri.authority().ok_or_else(|| bad("no proxy host in it"))?;
    // The user information is hyper-util's up to the first '@'.
    let (credentials, host_port) = match authority.as_str().split_once('@') {
        Some((_, host_port)) => (true, host_port),
        None => (false, authority.as_str()),
    };
    let target = Uri::builder()
        .scheme(scheme.as_str())
        .authority(host_port)
        .path_and_query("/")
        .build()
        .map_err(|_| bad("not a URL"))?;
    let host = target.host().filter(|host| !host.is_empty());
    let host = host.ok_or_else(|| bad("no proxy host in it"))?;
    let port = target
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let address = format!("{host}:{port}");
    let masked = if credentials { "***@" } else { "" };
    Ok(OutboundProxy {
        variable,
        shown: format!("{scheme}://{masked}{address}"),
        address,
    })
}

/// `value` with whatever may be user information (up to the last '@' after the scheme)
/// replaced by `***`, for an error about a value that may not even parse.
fn mask_credentials(value: &str) -> String {
    let start = value.find("://").map_or(0, |i| i + 3);
    match value[start..].rfind('@') {
        Some(at) => format!("{}***{}", &value[..start], &value[start + at..]),
        None => value.to_string(),
    }
}

/// Retries within one refresh, for the failures that are worth another try soon.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: u32,
    /// First backoff when the server gives no Retry-After; doubled on each retry.
    pub base_delay: Duration,
    /// Longest backoff window.
    pub max_delay: Duration,
    /// Longest Retry-After honoured; beyond it the refresh ends and the next one tries again.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(120),
            // Graph's throttling window.
            max_retry_after: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// How long to wait before retry number `retry` (from 0) after `error`, or None to give up.
    /// 429 waits what Retry-After says; 502, 503, 504, connection errors and a refused
    /// download (its pre-authenticated URL may have expired: the retry asks for a new one) back
    /// off exponentially with jitter. Anything else (400, 403, parse errors, timeouts) is not
    /// retried.
    pub fn delay(&self, error: &RefreshError, retry: u32) -> Option<Duration> {
        if retry >= self.max_retries {
            return None;
        }
        match error.inner() {
            RefreshError::Throttled {
                retry_after: Some(wait),
                ..
            } => (*wait <= self.max_retry_after).then_some(*wait),
            RefreshError::Throttled {
                retry_after: None, ..
            }
            | RefreshError::Network { .. }
            | RefreshError::Http {
                status: Some(502..=504),
                ..
            }
            | RefreshError::Http {
                stage: Stage::Download,
                status: Some(401 | 403 | 404 | 410),
                ..
            } => Some(self.backoff(retry)),
            _ => None,
        }
    }

    /// Exponential backoff with jitter: a random point in the upper half of the window, so
    /// that periods failing together do not retry together.
    fn backoff(&self, retry: u32) -> Duration {
        let window = self
            .base_delay
            .saturating_mul(1 << retry.min(20))
            .min(self.max_delay);
        window.mul_f64(0.5 + 0.5 * fastrand::f64())
    }
}

/// Test support: a client for plain-HTTP fakes, trusting no CA at all.
#[cfg(test)]
pub(crate) fn test_client() -> reqwest::Client {
    builder(RootCertStore::empty())
        .and_then(|b| b.build().map_err(|e| e.to_string()))
        .unwrap()
}

fn count(n: usize) -> String {
    match n {
        1 => "1 certificate".into(),
        n => format!("{n} certificates"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::error::Reason;

    fn answer_with(retry_after: &str) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, retry_after.parse().unwrap());
        Answer {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers,
            body: Bytes::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn exchanges_wait_for_a_free_slot() {
        let slots = Arc::new(Semaphore::new(1));
        let held = Arc::clone(&slots).acquire_owned().await.unwrap();
        let limits = Limits {
            timeout: Duration::from_secs(1),
            max_body_bytes: 1024,
            in_flight: Some(Arc::clone(&slots)),
            requests: Default::default(),
        };
        let client = test_client();
        let request = || client.get("http://127.0.0.1:9/");
        let blocked = tokio::time::timeout(
            Duration::from_secs(3600),
            exchange(Stage::Report, request(), &limits),
        )
        .await;
        assert!(blocked.is_err(), "an exchange went ahead without a slot");
        drop(held);
        // With the slot free it goes ahead (and fails, nothing listens there).
        let done = exchange(Stage::Report, request(), &limits).await;
        assert!(done.is_err());
        assert_eq!(slots.available_permits(), 1, "the slot is given back");
    }

    fn ca_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    /// The environment of one case; the system store must not be looked at.
    fn explicit(vars: &[(&str, &Path)]) -> Result<TrustedRoots, String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.display().to_string()))
            .collect();
        trusted_roots(
            move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
            || panic!("the system store was read although SSL_CERT_FILE or SSL_CERT_DIR is set"),
        )
    }

    #[test]
    fn ssl_cert_file_and_dir_are_the_only_roots_when_set() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, ca_pem("proxy CA") + &ca_pem("other CA")).unwrap();
        let roots = explicit(&[("SSL_CERT_FILE", &bundle)]).unwrap();
        assert_eq!(roots.store.len(), 2);
        assert_eq!(
            roots.origin,
            format!("SSL_CERT_FILE {} (2 certificates)", bundle.display())
        );
        assert!(roots.warning.is_none());

        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        std::fs::write(certs.join("a.pem"), ca_pem("a")).unwrap();
        std::fs::write(certs.join("b.crt"), ca_pem("b")).unwrap();
        crate::files::make_fifo(&certs.join("fifo"));
        let roots = crate::files::without_blocking({
            let (bundle, certs) = (bundle.clone(), certs.clone());
            move || explicit(&[("SSL_CERT_FILE", &bundle), ("SSL_CERT_DIR", &certs)])
        })
        .unwrap();
        assert_eq!(roots.store.len(), 4, "{}", roots.origin);
        assert!(roots.origin.ends_with(&format!(
            ", SSL_CERT_DIR {} (2 certificates)",
            certs.display()
        )));

        // A PEM block that is no certificate is left out, and said so.
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&bundle, ca_pem("proxy CA") + junk).unwrap();
        let roots = explicit(&[("SSL_CERT_FILE", &bundle)]).unwrap();
        assert_eq!(roots.store.len(), 1);
        assert_eq!(
            roots.warning.unwrap(),
            format!(
                "SSL_CERT_FILE {}: 1 certificate ignored, not usable as a trust anchor",
                bundle.display()
            )
        );
    }

    #[test]
    fn an_ssl_cert_variable_that_delivers_nothing_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let no_cert = write("key-only.pem", "just text, no PEM section\n");
        let broken = write(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        );
        let empty_dir = dir.path().join("empty");
        std::fs::create_dir(&empty_dir).unwrap();
        let broken_dir = dir.path().join("broken");
        std::fs::create_dir(&broken_dir).unwrap();
        std::fs::copy(&broken, broken_dir.join("ca.pem")).unwrap();
        let fifo = dir.path().join("fifo.pem");
        crate::files::make_fifo(&fifo);
        let missing = Path::new("/nonexistent/ca.pem");
        let cases: &[(&str, &Path, &str)] = &[
            ("SSL_CERT_FILE", missing, "cannot read the file"),
            ("SSL_CERT_FILE", &fifo, "not a regular file"),
            (
                "SSL_CERT_FILE",
                &no_cert,
                "no usable CA certificate in the file",
            ),
            ("SSL_CERT_FILE", &broken, "not a valid PEM file"),
            (
                "SSL_CERT_DIR",
                &empty_dir,
                "no usable CA certificate in the directory",
            ),
            ("SSL_CERT_DIR", &broken_dir, "a file in it is not valid PEM"),
            (
                "SSL_CERT_DIR",
                Path::new("/nonexistent"),
                "cannot read the directory: No such file",
            ),
        ];
        for (var, path, needle) in cases {
            let (var, path) = (var.to_string(), path.to_path_buf());
            let error = crate::files::without_blocking({
                let (var, path) = (var.clone(), path.clone());
                move || explicit(&[(&var, &path)]).err().unwrap()
            });
            assert!(
                error.starts_with(&format!("{var} {}: ", path.display())),
                "{error}"
            );
            assert!(error.contains(needle), "{needle:?} missing from {error}");
            assert_eq!(error.lines().count(), 1, "{error}");
        }
    }

    #[test]
    fn the_system_store_is_used_unless_it_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca_pem("system CA")).unwrap();
        let system_cert = CertificateDer::from_pem_file(&path).unwrap();
        let no_env = |_: &str| None;
        // SSL_CERT_FILE= (empty) is unset, as in most tools.
        let empty_var = |name: &str| (name == "SSL_CERT_FILE").then(String::new);

        let with_cert = || {
            let mut found = rustls_native_certs::CertificateResult::default();
            found.certs.push(system_cert.clone());
            found
        };
        let roots = trusted_roots(empty_var, with_cert).unwrap();
        assert_eq!(roots.store.len(), 1);
        assert_eq!(roots.origin, "the system store (1 certificate)");
        assert!(roots.warning.is_none());

        // Nothing on this system: the bundled roots, and a warning that says how to add a CA.
        let roots = trusted_roots(no_env, rustls_native_certs::CertificateResult::default).unwrap();
        assert_eq!(roots.store.len(), webpki_roots::TLS_SERVER_ROOTS.len());
        let warning = roots.warning.unwrap();
        assert!(
            warning.contains("bundled Mozilla roots") && warning.contains("SSL_CERT_FILE"),
            "{warning}"
        );

        // Part of the store unreadable: what could be read, and a warning naming the problem.
        let dir_missing = || {
            let mut found = rustls_native_certs::load_certs_from_paths(
                None,
                Some(Path::new("/nonexistent/certs")),
            );
            found.certs.push(system_cert.clone());
            found
        };
        let roots = trusted_roots(no_env, dir_missing).unwrap();
        assert_eq!(roots.store.len(), 1);
        let warning = roots.warning.unwrap();
        assert!(warning.contains("/nonexistent/certs"), "{warning}");
    }

    fn proxies(vars: &[(&str, &str)]) -> Result<Proxies, String> {
        outbound_proxy(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    fn via(vars: &[(&str, &str)]) -> OutboundProxy {
        match proxies(vars) {
            Ok(Proxies::Via { proxy, .. }) => proxy,
            other => panic!("no proxy from {vars:?}: {other:?}"),
        }
    }

    #[test]
    fn the_https_proxy_is_chosen_as_reqwest_chooses_it() {
        assert_eq!(proxies(&[]), Ok(Proxies::None));
        assert_eq!(
            proxies(&[("HTTP_PROXY", "http://127.0.0.1:3128")]),
            Ok(Proxies::None)
        );
        let proxy = via(&[("HTTPS_PROXY", "http://127.0.0.1:3128")]);
        assert_eq!(proxy.variable, "HTTPS_PROXY");
        assert_eq!(proxy.address, "127.0.0.1:3128");
        assert_eq!(proxy.shown, "http://127.0.0.1:3128");
        // No scheme is http, no port the scheme's; the upper-case name comes first.
        let proxy = via(&[
            ("HTTPS_PROXY", "proxy.example"),
            ("https_proxy", "http://other:1"),
        ]);
        assert_eq!(proxy.shown, "http://proxy.example:80");
        // Set empty, HTTPS_PROXY hides https_proxy: ALL_PROXY is next.
        let proxy = via(&[
            ("HTTPS_PROXY", ""),
            ("https_proxy", "http://ignored:1"),
            ("all_proxy", "https://[::1]:8443/"),
        ]);
        assert_eq!(
            (proxy.variable, proxy.address.as_str()),
            ("all_proxy", "[::1]:8443")
        );
        assert_eq!(
            proxies(&[("HTTPS_PROXY", "http://p:1"), ("REQUEST_METHOD", "GET")]),
            Ok(Proxies::Cgi)
        );
    }

    #[test]
    fn a_star_in_no_proxy_means_no_proxy_at_all() {
        let https = ("HTTPS_PROXY", "http://127.0.0.1:3128");
        for (variable, hosts) in [
            ("NO_PROXY", "*"),
            ("no_proxy", "*"),
            ("NO_PROXY", "localhost, *"),
        ] {
            assert_eq!(
                proxies(&[https, (variable, hosts)]),
                Ok(Proxies::Bypassed(variable))
            );
        }
        // Anything else is reqwest's to match, and shown.
        let Ok(Proxies::Via { no_proxy, .. }) =
            proxies(&[https, ("no_proxy", "*.example,10.0.0.0/8")])
        else {
            panic!("no proxy")
        };
        assert_eq!(
            no_proxy,
            Some(("no_proxy", "*.example,10.0.0.0/8".to_string()))
        );
    }

    #[test]
    fn credentials_are_masked_and_an_unusable_proxy_is_refused_naming_the_variable() {
        let proxy = via(&[("https_proxy", "http://alice:s3cret@127.0.0.1:3128")]);
        assert_eq!(proxy.shown, "http://***@127.0.0.1:3128");
        assert_eq!(proxy.address, "127.0.0.1:3128");
        let cases = [
            ("HTTPS_PROXY", "http://[::1", "not a URL"),
            ("HTTPS_PROXY", "http//127.0.0.1:18888", "not a URL"),
            ("https_proxy", "http://alice:s3cret@[::1", "not a URL"),
            (
                "HTTPS_PROXY",
                "ftp://alice:s3cret@127.0.0.1:21",
                "ftp:// is not a proxy scheme",
            ),
            (
                "ALL_PROXY",
                "socks5://127.0.0.1:1080",
                "SOCKS proxies are not supported",
            ),
            (
                "all_proxy",
                "socks5h://alice:s3cret@127.0.0.1:1080",
                "SOCKS",
            ),
            ("HTTPS_PROXY", "http://:3128", "no proxy host"),
        ];
        for (variable, value, needle) in cases {
            let error = proxies(&[(variable, value)]).unwrap_err();
            assert!(error.starts_with(&format!("{variable}=")), "{error}");
            assert!(error.contains(needle), "{needle:?} missing from {error}");
            assert!(
                !error.contains("s3cret") && !error.contains("alice"),
                "{error}"
            );
            assert_eq!(error.lines().count(), 1, "{error}");
        }
    }

    /// A resolver that fails as a DNS server that never answers does.
    struct Unanswered;

    impl reqwest::dns::Resolve for Unanswered {
        fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
            Box::pin(async {
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer from DNS").into())
            })
        }
    }

    #[tokio::test]
    async fn a_dns_failure_is_a_network_error_even_when_it_timed_out() {
        let client = builder(RootCertStore::empty())
            .unwrap()
            .dns_resolver(std::sync::Arc::new(Unanswered))
            .build()
            .unwrap();
        let err = client
            .get("http://graph.example.invalid/")
            .send()
            .await
            .unwrap_err();
        let e = RefreshError::network(Stage::Token, err, Duration::from_secs(30));
        assert_eq!(e.reason(), Reason::Network, "{e}");
        let text = e.to_string();
        assert!(text.contains("cannot resolve the host name"), "{text}");
    }

    /// A real handshake with a server whose CA is not trusted, through the client every
    /// exchange uses: the words reach the error, whatever the layers in between.
    #[tokio::test]
    async fn an_untrusted_server_certificate_is_named_as_such() {
        // Valid for the address asked for: only its issuer is unknown.
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = acceptor.accept(stream).await;
            }
        });
        let client = builder(RootCertStore::empty()).unwrap().build().unwrap();
        let err = client
            .get(format!("https://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap_err();
        let e = RefreshError::network(Stage::Token, err, Duration::from_secs(30));
        assert_eq!(e.reason(), Reason::Network);
        let text = e.to_string();
        assert!(
            text.contains(
                "TLS: the server's certificate is not signed by a trusted certificate authority"
            ),
            "{text}"
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(answer_with("7").retry_after(), Some(Duration::from_secs(7)));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let wait = answer_with(&soon).retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(120));
        assert_eq!(answer_with(&past).retry_after(), Some(Duration::ZERO));
        assert_eq!(answer_with("soon").retry_after(), None);
    }
}
