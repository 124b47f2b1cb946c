//! The file as exporter-toolkit defines it: its keys, and the checks the toolkit makes while
//! reading it (header names and values, durations), before anything is built from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::files::YamlError;

/// Unknown keys are errors, as there. No Debug: it may hold an inline private key.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub tls_server_config: Option<TlsFile>,
    pub http_server_config: Option<HttpFile>,
    pub rate_limit: Option<RateLimitFile>,
    pub basic_auth_users: Option<BTreeMap<String, String>>,
}

/// Serialize: only into the digest that tells one TLS configuration from another.
#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFile {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_auth_type: Option<String>,
    pub client_ca_file: Option<PathBuf>,
    pub client_ca: Option<String>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub cipher_suites: Option<Vec<String>>,
    pub curve_preferences: Option<Vec<String>>,
    /// Ignored by Go since 1.18 as well.
    #[allow(dead_code)]
    #[serde(skip_serializing)]
    pub prefer_server_cipher_suites: Option<bool>,
    pub client_allowed_sans: Option<Vec<String>>,
}

impl TlsFile {
    /// Go reads an empty string as unset; so do we.
    pub(super) fn without_empty(mut self) -> TlsFile {
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

    /// exporter-toolkit's TLSConfig.IsEnabled: any of these asks for TLS.
    pub(super) fn is_enabled(&self) -> bool {
        self.cert.is_some()
            || self.cert_file.is_some()
            || self.key.is_some()
            || self.key_file.is_some()
            || self.client_ca.is_some()
            || self.client_ca_file.is_some()
            || self.client_auth_type.is_some()
    }

    /// The files named, relative to the config file's directory as in the toolkit.
    pub(super) fn files(&self, dir: &Path) -> Vec<PathBuf> {
        [&self.cert_file, &self.key_file, &self.client_ca_file]
            .into_iter()
            .flatten()
            .map(|f| dir.join(f))
            .collect()
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpFile {
    /// HTTP/2 over TLS (ALPN h2); on unless false, as in the toolkit.
    pub http2: Option<bool>,
    pub headers: Option<BTreeMap<String, String>>,
}

/// exporter-toolkit 0.15's rate limiter: `burst` requests at once, one more per `interval`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitFile {
    pub interval: Option<GoDuration>,
    pub burst: Option<u32>,
}

/// A Go time.Duration in YAML: a string such as "1s" or "1m30s", or an integer of
/// nanoseconds.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum GoDuration {
    Nanos(u64),
    Text(String),
}

impl GoDuration {
    pub(super) fn to_duration(&self) -> Result<Duration, String> {
        match self {
            GoDuration::Nanos(n) => Ok(Duration::from_nanos(*n)),
            GoDuration::Text(t) if t == "0" => Ok(Duration::ZERO),
            GoDuration::Text(t) => humantime::parse_duration(t).map_err(|_| {
                format!("rate_limit.interval {t:?} is not a duration such as 1s or 500ms")
            }),
        }
    }
}

/// Web config files, certificates and keys are a few KiB; the cap keeps a wrong path from eating
/// memory.
pub(super) const MAX_FILE: u64 = 1024 * 1024;

/// Reads and parses the file; an empty file is a valid, empty configuration.
pub(super) fn read(path: &Path) -> Result<File, String> {
    let text =
        crate::files::read_text(path, MAX_FILE).map_err(|e| format!("cannot read it: {e}"))?;
    if text.trim().is_empty() {
        // As exporter-toolkit (its testdata starts with an empty file), but said aloud: a file
        // emptied by a cut-short write would otherwise switch TLS and basic auth off unseen
        // on the next start.
        super::tls::warn_once(format!(
            "--web.config.file {} is empty: serving plain HTTP without basic auth",
            path.display()
        ));
        return Ok(File::default());
    }
    crate::files::parse_yaml(&text).map_err(|e| match e {
        YamlError::TooDeep => format!("not a web config: {e}"),
        YamlError::Invalid(e) => format!("invalid YAML: {}", without_quoted(&e.to_string())),
    })
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

/// The headers exporter-toolkit lets a web config set, spelled as it spells them, with the
/// values it allows where it restricts them.
const ALLOWED_HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

pub(super) fn headers(
    configured: BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    configured
        .into_iter()
        .map(|(name, value)| header_pair(&name, &value))
        .collect()
}

fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let Some((_, values)) = ALLOWED_HEADERS.iter().find(|(h, _)| *h == name) else {
        let allowed: Vec<_> = ALLOWED_HEADERS.iter().map(|(h, _)| *h).collect();
        return Err(format!(
            "http_server_config.headers: HTTP header {name:?} can not be configured; allowed: {}",
            allowed.join(", ")
        ));
    };
    if !values.is_empty() && !values.contains(&value) {
        return Err(format!(
            "http_server_config.headers: invalid value for {name}: expected one of {values:?}, got {value:?}"
        ));
    }
    let value = HeaderValue::from_str(value)
        .map_err(|_| format!("http_server_config.headers: invalid value for {name}"))?;
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("http_server_config.headers: invalid name {name}"))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_as_the_toolkit_checks_them() {
        let check =
            |name: &str, value: &str| headers([(name.to_string(), value.to_string())].into());
        assert!(check("X-Frame-Options", "deny").is_ok());
        assert!(check("X-Frame-Options", "sameorigin").is_ok());
        assert!(check("X-Content-Type-Options", "nosniff").is_ok());
        assert!(check("X-XSS-Protection", "1").is_ok());
        for (name, value, needle) in [
            (
                "X-Frame-Options",
                "foo",
                "invalid value for X-Frame-Options",
            ),
            (
                "X-Frame-Options",
                "DENY",
                "invalid value for X-Frame-Options",
            ),
            (
                "X-Content-Type-Options",
                "sniff",
                "invalid value for X-Content-Type-Options",
            ),
            (
                "Content-Type",
                "foo",
                "\"Content-Type\" can not be configured",
            ),
            (
                "x-frame-options",
                "deny",
                "\"x-frame-options\" can not be configured",
            ),
        ] {
            let err = check(name, value).unwrap_err();
            assert!(err.contains(needle), "{name}: {err}");
        }
    }

    #[test]
    fn go_durations() {
        let d = |yaml: &str| {
            serde_norway::from_str::<GoDuration>(yaml)
                .unwrap()
                .to_duration()
        };
        assert_eq!(d("0"), Ok(Duration::ZERO));
        assert_eq!(d("\"0\""), Ok(Duration::ZERO));
        assert_eq!(d("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert!(d("soon").is_err());
    }
}
