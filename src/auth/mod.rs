//! OAuth 2.0 client credentials against the Microsoft identity platform (or a managed identity
//! endpoint), with a token cache shared by every period so that one token serves all reports
//! until shortly before it expires.

pub(crate) mod certificate;
pub(crate) mod credential;
pub(crate) mod load;
pub(crate) mod managed;

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

pub use self::credential::{Credential, Origin};
use crate::error::{RefreshError, Stage};
use crate::http::{exchange, Answer, Limits};
use crate::text::one_line;

/// Renew this long before the token expires, but never later than half its lifetime.
const RENEW_MARGIN: Duration = Duration::from_secs(300);
/// Tokens live about an hour; a longer claimed lifetime is capped rather than trusted.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The least lifetime taken from an `expires_on`: an absolute time read against a local clock
/// that may run ahead, which must not turn every token request into another one.
const MIN_EXPIRES_ON_LIFETIME: Duration = Duration::from_secs(120);

/// Who the exporter signs in as: the tenant (token endpoint and `tenant` label), how it
/// proves itself, and where both were configured. Debug output never shows a secret:
/// [`Credential`] redacts its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub tenant_id: String,
    pub credential: Credential,
    pub origin: Origin,
}

impl Identity {
    /// An app registration signing in with a client secret.
    pub fn with_secret(tenant_id: &str, client_id: &str, secret: SecretString) -> Identity {
        Identity {
            tenant_id: tenant_id.into(),
            credential: Credential::Secret {
                client_id: client_id.into(),
                secret,
            },
            origin: Origin::Environment,
        }
    }
}

pub(crate) struct TokenSource {
    http: reqwest::Client,
    token_url: Url,
    tenant_id: String,
    credential: Credential,
    /// Where the identity was configured: what refusals tell the operator to change.
    origin: Origin,
    scope: String,
    /// Managed identity endpoints take the resource (the Graph root) instead of a scope.
    resource: String,
    limits: Limits,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    token: Option<CachedToken>,
    /// The last failed request and when it ended.
    failure: Option<(Instant, RefreshError)>,
}

struct CachedToken {
    value: SecretString,
    renew_at: Instant,
}

impl TokenSource {
    pub(crate) fn new(
        http: reqwest::Client,
        authority: &Url,
        graph: &Url,
        identity: Identity,
        limits: Limits,
    ) -> TokenSource {
        let mut token_url = authority.clone();
        token_url
            .path_segments_mut()
            .expect("authority is an http(s) URL")
            .pop_if_empty()
            .extend([identity.tenant_id.as_str(), "oauth2", "v2.0", "token"]);
        TokenSource {
            http,
            token_url,
            tenant_id: identity.tenant_id,
            credential: identity.credential,
            origin: identity.origin,
            scope: format!("{}/.default", graph.as_str().trim_end_matches('/')),
            resource: graph.as_str().trim_end_matches('/').to_string(),
            limits,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// A valid access token, from the cache when it has one. Holding the lock across the request
    /// makes concurrent periods wait for one token instead of each asking for its own.
    pub(crate) async fn token(&self) -> Result<SecretString, RefreshError> {
        let asked = Instant::now();
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.token.as_ref().filter(|c| Instant::now() < c.renew_at) {
            return Ok(cached.value.clone());
        }
        // A request that failed while this one waited answers it too: repeating it at once
        // would most likely fail the same way, after the same timeout.
        if let Some((_, error)) = cache.failure.as_ref().filter(|(at, _)| *at >= asked) {
            return Err(error.clone());
        }
        match self.request().await {
            Ok(fresh) => {
                let value = fresh.value.clone();
                *cache = Cache {
                    token: Some(fresh),
                    failure: None,
                };
                Ok(value)
            }
            Err(error) => {
                cache.failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// Forgets `rejected` after Graph refused it, unless another task already replaced it.
    pub(crate) async fn invalidate(&self, rejected: &SecretString) {
        let mut cache = self.cache.lock().await;
        if cache
            .token
            .as_ref()
            .is_some_and(|c| c.value.expose_secret() == rejected.expose_secret())
        {
            cache.token = None;
        }
    }

    async fn request(&self) -> Result<CachedToken, RefreshError> {
        let answer = match &self.credential {
            Credential::ManagedIdentity {
                client_id,
                endpoint,
            } => {
                endpoint
                    .request(
                        &self.http,
                        &self.resource,
                        client_id.as_deref(),
                        &self.limits,
                    )
                    .await?
            }
            credential => {
                // Built afresh for every request: an assertion is single-use and short-lived,
                // and a federated token file is rotated by the kubelet.
                let proof = credential
                    .client_proof(self.token_url.as_str(), self.limits.timeout, self.origin)
                    .await?;
                let mut form = vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", credential.client_id().unwrap_or_default()),
                    ("scope", self.scope.as_str()),
                ];
                form.extend(proof.iter().map(|(k, v)| (*k, v.expose_secret())));
                let request = self.http.post(self.token_url.clone()).form(&form);
                exchange(Stage::Token, request, &self.limits).await?
            }
        };
        if answer.status.is_success() {
            let (value, lifetime) = parse_token(&answer.body, SystemTime::now())?;
            tracing::debug!(expires_in = lifetime.as_secs(), "obtained an access token");
            return Ok(CachedToken {
                value,
                renew_at: Instant::now() + renew_after(lifetime),
            });
        }
        Err(token_error(&answer, self.origin, &self.tenant_id))
    }
}

/// How long a token of the given lifetime is used before a new one is requested.
fn renew_after(lifetime: Duration) -> Duration {
    lifetime - RENEW_MARGIN.min(lifetime / 2)
}

/// The access token and its lifetime. Managed identity endpoints send `expires_in` and
/// `expires_on` as strings of seconds; `now` turns `expires_on` into a lifetime.
fn parse_token(body: &[u8], now: SystemTime) -> Result<(SecretString, Duration), RefreshError> {
    let bad = |detail: &str| RefreshError::Http {
        stage: Stage::Token,
        status: Some(200),
        request_id: Default::default(),
        detail: format!("the identity platform answered 200 {detail}"),
    };
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| bad("without a JSON body"))?;
    let token = json
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("without an access_token"))?;
    // It goes into an Authorization header: anything else would fail every report request
    // for as long as the token stayed cached, and as an unclear network error. Refused as
    // auth, and so never cached.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RefreshError::Auth {
            status: 200,
            code: None,
            detail: "the access_token cannot be sent in an HTTP header (it holds spaces or control characters); is AZURE_AUTHORITY_HOST the identity platform?".into(),
        });
    }
    // Number in v2.0 answers, a string in some older ones and from managed identity. None:
    // absent; Some(None): present but not an integer number of seconds.
    let seconds = |name: &str| match json.get(name) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(n.as_u64()),
        Some(serde_json::Value::String(s)) => Some(s.trim().parse().ok()),
        Some(_) => Some(None),
    };
    let lifetime = match (seconds("expires_in"), seconds("expires_on")) {
        (Some(None), _) => {
            return Err(bad(
                "with an expires_in that is not an integer number of seconds",
            ))
        }
        (Some(Some(expires_in)), _) if expires_in > 0 => Duration::from_secs(expires_in),
        (_, Some(Some(on))) => lifetime_until(on, now),
        (_, Some(None)) => {
            return Err(bad(
                "with an expires_on that is not an integer Unix time in seconds",
            ))
        }
        (Some(Some(_)), None) => return Err(bad("with an expires_in of 0")),
        (None, None) => return Err(bad("without an expires_in or expires_on")),
    };
    Ok((SecretString::from(token), lifetime.min(MAX_LIFETIME)))
}

/// The lifetime of a token that expires at the Unix time `on`, at least
/// [`MIN_EXPIRES_ON_LIFETIME`]: the platform handed the token out as valid, so a time already
/// past says more about the local clock than about the token.
fn lifetime_until(on: u64, now: SystemTime) -> Duration {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if on <= now {
        tracing::warn!(
            expires_on = on,
            local_time = now,
            "the access token's expires_on is not after the local clock: check the host's clock (NTP); using the token for {}",
            humantime::format_duration(MIN_EXPIRES_ON_LIFETIME)
        );
    }
    Duration::from_secs(on.saturating_sub(now)).max(MIN_EXPIRES_ON_LIFETIME)
}

/// Turns a refused token request into one actionable line, classified by `error_codes` (the
/// `error` string has changed over the years, the codes have not). `origin` and `tenant_id`
/// say where the setting to fix is.
fn token_error(answer: &Answer, origin: Origin, tenant_id: &str) -> RefreshError {
    let status = answer.status.as_u16();
    if status == 429 {
        return RefreshError::Throttled {
            stage: Stage::Token,
            request_id: Default::default(),
            retry_after: answer.retry_after(),
        };
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let code = json
        .as_ref()
        .and_then(|j| j.get("error_codes"))
        .and_then(|c| c.get(0))
        .and_then(|c| c.as_u64());
    let (Some(error), false) = (field("error"), answer.status.is_server_error()) else {
        return RefreshError::Http {
            stage: Stage::Token,
            status: Some(status),
            request_id: Default::default(),
            detail: answer.describe(),
        };
    };
    let description = field("error_description")
        .and_then(|d| d.lines().next().map(str::to_string))
        .unwrap_or_default();
    let detail = match code.and_then(|code| hint(code, origin, tenant_id)) {
        Some(hint) => format!("{hint} ({})", one_line(&error, 80)),
        None => one_line(&format!("{error}: {description}"), 300),
    };
    let trace = field("trace_id").map(|t| format!(" [trace_id {}]", one_line(&t, 64)));
    RefreshError::Auth {
        status,
        code,
        detail: format!("{detail}{}", trace.unwrap_or_default()),
    }
}

fn hint(code: u64, origin: Origin, tenant_id: &str) -> Option<Cow<'static, str>> {
    if code == 7000215 && origin == Origin::File {
        return Some(Cow::Owned(format!("invalid client secret: set client_secret (or the content of client_secret_file) of tenant {tenant_id} in --config.file to the secret's value, not its ID")));
    }
    Some(Cow::Borrowed(match code {
        7000215 => "invalid client secret: set AZURE_CLIENT_SECRET to the secret's value, not its ID",
        7000222 => "the client secret has expired: create a new one in the app registration",
        700016 => "application not found in the tenant: check AZURE_CLIENT_ID and AZURE_TENANT_ID, and --azure.cloud",
        90002 => "tenant not found: check AZURE_TENANT_ID and --azure.cloud",
        900023 => "AZURE_TENANT_ID is not a valid tenant ID or domain",
        700027 | 7000218 => "the client credential was not accepted: check the client secret, or that the certificate is uploaded to the app registration",
        700024 => "the client assertion is outside its validity window: check the host's clock",
        70021 | 700213 | 700212 => "no federated credential matches the token's issuer, subject and audience: check the federated credential of the app registration or managed identity",
        1002012 | 70011 => "the scope was refused: check --graph.url, the token scope is <graph.url>/.default",
        7000112 => "the application is disabled in the tenant",
        _ => return None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            headers: Default::default(),
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn token_answers() {
        let (t, d) = parse_token(
            br#"{"token_type":"Bearer","expires_in":3599,"access_token":"abc"}"#,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!((t.expose_secret(), d.as_secs()), ("abc", 3599));
        let (_, d) = parse_token(
            br#"{"expires_in":"60","access_token":"abc"}"#,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(d.as_secs(), 60);
        let (_, d) = parse_token(
            br#"{"expires_in":18446744073709551615,"access_token":"abc"}"#,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(d, MAX_LIFETIME);
        for (bad, says) in [
            (&b"<html>"[..], "without a JSON body"),
            (br#"{"expires_in":1}"#, "without an access_token"),
            (br#"{"access_token":"x"}"#, "without an expires_in"),
            (
                br#"{"access_token":"x","expires_in":"soon"}"#,
                "not an integer",
            ),
            (
                br#"{"access_token":"x","expires_in":1.5}"#,
                "not an integer",
            ),
            (br#"{"access_token":"x","expires_in":-1}"#, "not an integer"),
            (br#"{"access_token":"x","expires_in":0}"#, "expires_in of 0"),
        ] {
            let e = parse_token(bad, SystemTime::now()).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
        // Refused as auth (so never cached), in one line, without the token.
        for bad in [
            &br#"{"expires_in":60,"access_token":"abc\r\nX-Injected: 1"}"#[..],
            br#"{"expires_in":60,"access_token":"abc def"}"#,
            br#"{"expires_in":60,"access_token":"abc\u00e9"}"#,
        ] {
            let e = parse_token(bad, SystemTime::now()).unwrap_err();
            assert_eq!(e.reason().as_str(), "auth");
            let error = e.to_string();
            assert!(error.contains("control characters"), "{error}");
            assert!(
                !error.contains("abc") && error.lines().count() == 1,
                "{error}"
            );
        }
    }

    #[test]
    fn managed_identity_answers_carry_strings_and_expires_on() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let body = br#"{"access_token":"mi","expires_in":"3599","expires_on":"1700003599","resource":"https://graph.microsoft.com","token_type":"Bearer"}"#;
        assert_eq!(parse_token(body, now).unwrap().1.as_secs(), 3599);
        // App Service sends expires_on alone.
        let body = br#"{"access_token":"mi","expires_on":"1700000600"}"#;
        assert_eq!(parse_token(body, now).unwrap().1.as_secs(), 600);
        // An expires_on already past (a host clock running ahead) or about to pass: the token
        // is used for a short while rather than requested again at once.
        for on in ["1600000000", "1700000000", "1700000001"] {
            let body = format!(r#"{{"access_token":"mi","expires_on":"{on}"}}"#);
            assert_eq!(
                parse_token(body.as_bytes(), now).unwrap().1,
                MIN_EXPIRES_ON_LIFETIME
            );
        }
        let body = br#"{"access_token":"mi","expires_on":"-1"}"#;
        let e = parse_token(body, now).unwrap_err();
        assert!(
            e.to_string().contains("expires_on that is not an integer"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_past_expires_on_is_used_for_a_while_not_requested_again_and_again() {
        let endpoint = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::method("GET"))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_string(
                r#"{"access_token":"mi","expires_on":"1000000000","token_type":"Bearer"}"#,
            ))
            .expect(1)
            .mount(&endpoint)
            .await;
        let identity = Identity {
            tenant_id: "t".into(),
            credential: Credential::ManagedIdentity {
                client_id: None,
                endpoint: managed::ManagedEndpoint::AppService {
                    endpoint: Url::parse(&endpoint.uri()).unwrap(),
                    header: SecretString::from("h"),
                },
            },
            origin: Origin::Environment,
        };
        let url = Url::parse("https://example.test/").unwrap();
        let source = TokenSource::new(crate::http::test_client(), &url, &url, identity, limits());
        for _ in 0..3 {
            assert_eq!(source.token().await.unwrap().expose_secret(), "mi");
        }
    }

    #[test]
    fn renewal_comes_before_expiry() {
        assert_eq!(
            renew_after(Duration::from_secs(3599)),
            Duration::from_secs(3299)
        );
        assert_eq!(renew_after(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(
            renew_after(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn errors_classified_by_code() {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1\r\nCorrelation ID: 2","error_codes":[7000215],"trace_id":"t-1"}"#;
        // A tenant of --config.file is sent to its keys in the file, not to the environment.
        let e = token_error(&answer(401, body), Origin::File, "contoso.onmicrosoft.com");
        assert_eq!(e.reason().as_str(), "auth");
        let msg = e.to_string();
        assert_eq!(
            msg,
            "token request rejected with HTTP 401, AADSTS7000215: invalid client secret: set client_secret (or the content of client_secret_file) of tenant contoso.onmicrosoft.com in --config.file to the secret's value, not its ID (invalid_client) [trace_id t-1]"
        );
        let e = token_error(&answer(401, body), Origin::Environment, "t1");
        assert_eq!(
            e.to_string(),
            "token request rejected with HTTP 401, AADSTS7000215: invalid client secret: set AZURE_CLIENT_SECRET to the secret's value, not its ID (invalid_client) [trace_id t-1]"
        );
        let body = r#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 'x' not found.","error_codes":[90002]}"#;
        assert!(token_error(&answer(400, body), Origin::Environment, "t1")
            .to_string()
            .contains("tenant not found"));
        let body =
            r#"{"error":"weird","error_description":"AADSTS1: something\nmore","error_codes":[1]}"#;
        assert!(token_error(&answer(400, body), Origin::Environment, "t1")
            .to_string()
            .ends_with("weird: AADSTS1: something"));
        assert_eq!(
            token_error(&answer(503, ""), Origin::Environment, "t1")
                .reason()
                .as_str(),
            "http"
        );
        assert_eq!(
            token_error(&answer(429, ""), Origin::Environment, "t1")
                .reason()
                .as_str(),
            "throttled"
        );
        assert_eq!(
            token_error(&answer(400, "<html>"), Origin::Environment, "t1")
                .reason()
                .as_str(),
            "http"
        );
    }

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_secs(30),
            max_body_bytes: 1024,
            in_flight: None,
            requests: Default::default(),
        }
    }

    #[test]
    fn token_url_and_scope() {
        let identity = Identity::with_secret("t1", "c1", SecretString::from("s"));
        let authority = Url::parse("https://login.example.test/").unwrap();
        let graph = Url::parse("https://graph.example.test/").unwrap();
        let source = TokenSource::new(
            crate::http::test_client(),
            &authority,
            &graph,
            identity,
            limits(),
        );
        assert_eq!(
            source.token_url.as_str(),
            "https://login.example.test/t1/oauth2/v2.0/token"
        );
        assert_eq!(source.scope, "https://graph.example.test/.default");
        assert_eq!(source.resource, "https://graph.example.test");
    }
}
