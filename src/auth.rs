//! OAuth 2.0 client credentials against the Microsoft identity platform, with a token cache
//! shared by every period so that one token serves all reports until shortly before it expires.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use crate::error::{Error, Stage};
use crate::http::{exchange, Answer, Limits};
use crate::text::one_line;

/// Renew this long before the token expires, but never later than half its lifetime.
const RENEW_MARGIN: Duration = Duration::from_secs(300);
/// Tokens live about an hour; a longer claimed lifetime is capped rather than trusted.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// App registration used for the client credentials grant.
pub struct Identity {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: SecretString,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

pub struct TokenSource {
    http: reqwest::Client,
    token_url: Url,
    client_id: String,
    client_secret: SecretString,
    scope: String,
    limits: Limits,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    token: Option<CachedToken>,
    /// The last failed request and when it ended.
    failure: Option<(Instant, Error)>,
}

struct CachedToken {
    value: SecretString,
    renew_at: Instant,
}

impl TokenSource {
    pub fn new(
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
            client_id: identity.client_id,
            client_secret: identity.client_secret,
            scope: format!("{}/.default", graph.as_str().trim_end_matches('/')),
            limits,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// A valid access token, from the cache when it has one. Holding the lock across the request
    /// makes concurrent periods wait for one token instead of each asking for its own.
    pub async fn token(&self) -> Result<SecretString, Error> {
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
    pub async fn invalidate(&self, rejected: &SecretString) {
        let mut cache = self.cache.lock().await;
        if cache
            .token
            .as_ref()
            .is_some_and(|c| c.value.expose_secret() == rejected.expose_secret())
        {
            cache.token = None;
        }
    }

    async fn request(&self) -> Result<CachedToken, Error> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("scope", self.scope.as_str()),
        ];
        let request = self.http.post(self.token_url.clone()).form(&form);
        let answer = exchange(Stage::Token, request, &self.limits).await?;
        if answer.status.is_success() {
            let (value, lifetime) = parse_token(&answer.body)?;
            tracing::debug!(expires_in = lifetime.as_secs(), "obtained an access token");
            return Ok(CachedToken {
                value,
                renew_at: Instant::now() + renew_after(lifetime),
            });
        }
        Err(token_error(&answer))
    }
}

/// How long a token of the given lifetime is used before a new one is requested.
fn renew_after(lifetime: Duration) -> Duration {
    lifetime - RENEW_MARGIN.min(lifetime / 2)
}

fn parse_token(body: &[u8]) -> Result<(SecretString, Duration), Error> {
    let bad = |detail: &str| Error::Http {
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
    // Refused here rather than failing every report request as a network error later.
    if reqwest::header::HeaderValue::from_str(token).is_err() {
        return Err(Error::Auth {
            status: 200,
            code: None,
            detail: "the access_token cannot be sent in an HTTP header (it holds control characters); is AZURE_AUTHORITY_HOST the identity platform?".into(),
        });
    }
    // Number in v2.0 answers, a string in some older ones.
    let expires_in = match json.get("expires_in") {
        None | Some(serde_json::Value::Null) => return Err(bad("without an expires_in")),
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        Some(_) => None,
    }
    .ok_or_else(|| bad("with an expires_in that is not an integer number of seconds"))?;
    if expires_in == 0 {
        return Err(bad("with an expires_in of 0"));
    }
    Ok((
        SecretString::from(token),
        Duration::from_secs(expires_in).min(MAX_LIFETIME),
    ))
}

/// Turns a refused token request into one actionable line, classified by `error_codes` (the
/// `error` string has changed over the years, the codes have not).
fn token_error(answer: &Answer) -> Error {
    let status = answer.status.as_u16();
    if status == 429 {
        return Error::Throttled {
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
        return Error::Http {
            stage: Stage::Token,
            status: Some(status),
            request_id: Default::default(),
            detail: answer.describe(),
        };
    };
    let description = field("error_description")
        .and_then(|d| d.lines().next().map(str::to_string))
        .unwrap_or_default();
    let detail = match code.and_then(hint) {
        Some(hint) => format!("{hint} ({})", one_line(&error, 80)),
        None => one_line(&format!("{error}: {description}"), 300),
    };
    let trace = field("trace_id").map(|t| format!(" [trace_id {}]", one_line(&t, 64)));
    Error::Auth {
        status,
        code,
        detail: format!("{detail}{}", trace.unwrap_or_default()),
    }
}

fn hint(code: u64) -> Option<&'static str> {
    Some(match code {
        7000215 => "invalid client secret: set AZURE_CLIENT_SECRET to the secret's value, not its ID",
        7000222 => "the client secret has expired: create a new one in the app registration",
        700016 => "application not found in the tenant: check AZURE_CLIENT_ID and AZURE_TENANT_ID, and --azure.cloud",
        90002 => "tenant not found: check AZURE_TENANT_ID and --azure.cloud",
        900023 => "AZURE_TENANT_ID is not a valid tenant ID or domain",
        700027 | 7000218 => "the client credential was not accepted: check AZURE_CLIENT_SECRET",
        1002012 | 70011 => "the scope was refused: check --graph.url, the token scope is <graph.url>/.default",
        7000112 => "the application is disabled in the tenant",
        _ => return None,
    })
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
        let (t, d) =
            parse_token(br#"{"token_type":"Bearer","expires_in":3599,"access_token":"abc"}"#)
                .unwrap();
        assert_eq!((t.expose_secret(), d.as_secs()), ("abc", 3599));
        let (_, d) = parse_token(br#"{"expires_in":"60","access_token":"abc"}"#).unwrap();
        assert_eq!(d.as_secs(), 60);
        let (_, d) =
            parse_token(br#"{"expires_in":18446744073709551615,"access_token":"abc"}"#).unwrap();
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
            let e = parse_token(bad).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
        let e = parse_token(br#"{"access_token":"a\r\nb","expires_in":60}"#).unwrap_err();
        assert_eq!(e.reason().as_str(), "auth");
        assert!(e.to_string().contains("control characters"), "{e}");
        assert!(!e.to_string().contains("a\r"), "{e}");
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
        let e = token_error(&answer(401, body));
        assert_eq!(e.reason().as_str(), "auth");
        let msg = e.to_string();
        assert_eq!(
            msg,
            "token request rejected with HTTP 401, AADSTS7000215: invalid client secret: set AZURE_CLIENT_SECRET to the secret's value, not its ID (invalid_client) [trace_id t-1]"
        );
        let body = r#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 'x' not found.","error_codes":[90002]}"#;
        assert!(token_error(&answer(400, body))
            .to_string()
            .contains("tenant not found"));
        let body =
            r#"{"error":"weird","error_description":"AADSTS1: something\nmore","error_codes":[1]}"#;
        assert!(token_error(&answer(400, body))
            .to_string()
            .ends_with("weird: AADSTS1: something"));
        assert_eq!(token_error(&answer(503, "")).reason().as_str(), "http");
        assert_eq!(token_error(&answer(429, "")).reason().as_str(), "throttled");
        assert_eq!(
            token_error(&answer(400, "<html>")).reason().as_str(),
            "http"
        );
    }

    #[test]
    fn token_url_and_scope() {
        let identity = Identity {
            tenant_id: "t1".into(),
            client_id: "c1".into(),
            client_secret: SecretString::from("s"),
        };
        let limits = Limits {
            timeout: Duration::from_secs(1),
            max_body_bytes: 1024,
            requests: Default::default(),
        };
        let authority = Url::parse("https://login.example.test/").unwrap();
        let graph = Url::parse("https://graph.example.test/").unwrap();
        let source = TokenSource::new(reqwest::Client::new(), &authority, &graph, identity, limits);
        assert_eq!(
            source.token_url.as_str(),
            "https://login.example.test/t1/oauth2/v2.0/token"
        );
        assert_eq!(source.scope, "https://graph.example.test/.default");
    }
}
