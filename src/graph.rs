//! The report request: bearer token, one redirect to a pre-authenticated download, CSV body.

use bytes::Bytes;
use reqwest::header::{ETAG, IF_NONE_MATCH, LOCATION};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::auth::{Identity, TokenSource};
use crate::error::{RefreshError, RequestId, Stage};
use crate::http::{exchange, Answer, Limits, RequestCounts, RetryPolicy};
use crate::report::Period;

pub(crate) struct GraphClient {
    http: reqwest::Client,
    graph: Url,
    tokens: TokenSource,
    limits: Limits,
    retry: RetryPolicy,
}

/// What a report request brought.
#[derive(Debug, PartialEq)]
pub(crate) enum Fetched {
    /// 304: the report is unchanged since the download whose ETag was sent.
    NotModified,
    Body {
        csv: Bytes,
        etag: Option<String>,
        /// Graph's request-id for the report request, for errors found in the body later.
        request_id: RequestId,
    },
}

impl GraphClient {
    /// The client of one tenant, signing in as `identity` at `authority` with a token source
    /// (and cache) of its own; its token and report exchanges share `limits`.
    pub(crate) fn for_identity(
        http: reqwest::Client,
        identity: Identity,
        authority: &Url,
        graph: Url,
        limits: Limits,
        retry: RetryPolicy,
    ) -> GraphClient {
        let tokens = TokenSource::new(http.clone(), authority, &graph, identity, limits.clone());
        GraphClient::new(http, graph, tokens, limits, retry)
    }

    pub(crate) fn new(
        http: reqwest::Client,
        graph: Url,
        tokens: TokenSource,
        limits: Limits,
        retry: RetryPolicy,
    ) -> GraphClient {
        GraphClient {
            http,
            graph,
            tokens,
            limits,
            retry,
        }
    }

    /// Every exchange made so far, token requests included.
    pub(crate) fn requests(&self) -> &RequestCounts {
        &self.limits.requests
    }

    pub(crate) fn report_url(&self, period: Period) -> Url {
        let mut url = self.graph.clone();
        url.path_segments_mut()
            .expect("graph URL is an http(s) URL")
            .pop_if_empty()
            .extend([
                "v1.0",
                "reports",
                &format!("getSkypeForBusinessOrganizerActivityMinuteCounts(period='{period}')"),
            ]);
        url
    }

    /// Fetches one period's report, retrying as the retry policy allows.
    pub(crate) async fn fetch(
        &self,
        period: Period,
        etag: Option<&str>,
    ) -> Result<Fetched, RefreshError> {
        let mut retry = 0;
        loop {
            let error = match self.fetch_reauthenticating(period, etag).await {
                Ok(fetched) => return Ok(fetched),
                Err(error) => error,
            };
            let Some(wait) = self.retry.delay(&error, retry) else {
                return Err(error);
            };
            retry += 1;
            tracing::info!(
                %period,
                reason = %error.reason(),
                "{error}; retry {retry} of {} in {wait:.1?}",
                self.retry.max_retries
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// A token Graph rejects with 401 is dropped and replaced once.
    async fn fetch_reauthenticating(
        &self,
        period: Period,
        etag: Option<&str>,
    ) -> Result<Fetched, RefreshError> {
        match self.fetch_once(period, etag).await {
            Err(Unauthorized(token, _)) => {
                tracing::info!(%period, "Graph rejected the cached access token; requesting a new one");
                self.tokens.invalidate(&token).await;
                self.fetch_once(period, etag)
                    .await
                    .map_err(Failure::into_error)
            }
            other => other.map_err(Failure::into_error),
        }
    }

    async fn fetch_once(&self, period: Period, etag: Option<&str>) -> Result<Fetched, Failure> {
        let token = self.tokens.token().await?;
        let url = self.report_url(period);
        let mut request = self
            .http
            .get(url.clone())
            .bearer_auth(token.expose_secret());
        if let Some(etag) = etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let answer = exchange(Stage::Report, request, &self.limits).await?;
        match answer.status {
            StatusCode::OK => Ok(Fetched::Body {
                etag: etag_of(&answer),
                request_id: answer.request_id(),
                csv: answer.body,
            }),
            StatusCode::NOT_MODIFIED => Ok(Fetched::NotModified),
            s if s.is_redirection() => Ok(self
                .download(&url, &answer)
                .await
                .map_err(|e| e.after_report(&answer.request_id()))?),
            // A missing permission can come as 401 too; a new token would not help.
            StatusCode::UNAUTHORIZED
                if answer.graph_code().as_deref() == Some("S2SUnauthorized") =>
            {
                Err(RefreshError::Forbidden {
                    stage: Stage::Report,
                    request_id: answer.request_id(),
                }
                .into())
            }
            StatusCode::UNAUTHORIZED => Err(Unauthorized(
                token,
                RefreshError::Unauthorized {
                    stage: Stage::Report,
                    request_id: answer.request_id(),
                    detail: answer.describe(),
                },
            )),
            _ => Err(unexpected(Stage::Report, &answer).into()),
        }
    }

    /// Follows the report's redirect. The Location is pre-authenticated and on another host:
    /// it gets no Authorization header, and it is never logged or put in an error.
    async fn download(&self, base: &Url, redirect: &Answer) -> Result<Fetched, RefreshError> {
        let http_error = |detail: &str| RefreshError::Http {
            stage: Stage::Report,
            status: Some(redirect.status.as_u16()),
            request_id: redirect.request_id(),
            detail: format!("HTTP {}: {detail}", redirect.status.as_u16()),
        };
        let location = redirect.headers.get(LOCATION).and_then(|l| l.to_str().ok());
        let target = redirect_target(base, location).map_err(http_error)?;
        let target = SecretString::from(target.to_string());
        let request = self.http.get(target.expose_secret());
        let answer = exchange(Stage::Download, request, &self.limits).await?;
        match answer.status {
            StatusCode::OK => Ok(Fetched::Body {
                etag: etag_of(&answer).or_else(|| etag_of(redirect)),
                request_id: redirect.request_id(),
                csv: answer.body,
            }),
            s if s.is_redirection() => Err(RefreshError::Http {
                stage: Stage::Download,
                status: Some(s.as_u16()),
                request_id: answer.request_id(),
                detail: format!(
                    "HTTP {}: a second redirect; only one is expected",
                    s.as_u16()
                ),
            }),
            // The download host knows nothing of the app's permissions: a refusal there means
            // the pre-authenticated URL was not accepted (expired, most likely).
            s @ (StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::NOT_FOUND
            | StatusCode::GONE) => Err(RefreshError::Http {
                stage: Stage::Download,
                status: Some(s.as_u16()),
                request_id: answer.request_id(),
                detail: format!(
                    "HTTP {}: the download URL was refused (expired?)",
                    s.as_u16()
                ),
            }),
            _ => Err(unexpected(Stage::Download, &answer)),
        }
    }
}

/// Where the report's redirect leads: an absolute http(s) URL, never a downgrade from https
/// to http, since the URL is a credential.
fn redirect_target(base: &Url, location: Option<&str>) -> Result<Url, &'static str> {
    let location = location.ok_or("redirect without a usable Location header")?;
    let target = base
        .join(location)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or("redirect to an invalid Location")?;
    if target.scheme() == "http" && base.scheme() == "https" {
        return Err("redirect from https to http refused");
    }
    Ok(target)
}

/// A 401 keeps the token it refused, so that exactly that token can be dropped from the cache.
enum Failure {
    Unauthorized(SecretString, RefreshError),
    Other(RefreshError),
}
use Failure::Unauthorized;

impl Failure {
    fn into_error(self) -> RefreshError {
        match self {
            Failure::Unauthorized(_, e) | Failure::Other(e) => e,
        }
    }
}

impl From<RefreshError> for Failure {
    fn from(e: RefreshError) -> Failure {
        Failure::Other(e)
    }
}

fn etag_of(answer: &Answer) -> Option<String> {
    answer
        .headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .map(str::to_string)
}

fn unexpected(stage: Stage, answer: &Answer) -> RefreshError {
    let request_id = answer.request_id();
    match answer.status {
        StatusCode::FORBIDDEN => RefreshError::Forbidden { stage, request_id },
        StatusCode::UNAUTHORIZED => RefreshError::Unauthorized {
            stage,
            request_id,
            detail: answer.describe(),
        },
        StatusCode::TOO_MANY_REQUESTS => RefreshError::Throttled {
            stage,
            request_id,
            retry_after: answer.retry_after(),
        },
        status => RefreshError::Http {
            stage,
            status: Some(status.as_u16()),
            request_id,
            detail: answer.describe(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn http(status: u16) -> RefreshError {
        RefreshError::Http {
            stage: Stage::Report,
            status: Some(status),
            request_id: RequestId::default(),
            detail: String::new(),
        }
    }

    fn throttled(retry_after: Option<u64>) -> RefreshError {
        RefreshError::Throttled {
            stage: Stage::Report,
            request_id: RequestId::default(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn redirect_targets() {
        let https = Url::parse("https://graph.example.test/v1.0/reports/x").unwrap();
        let http = Url::parse("http://127.0.0.1:1/v1.0/reports/x").unwrap();
        let ok = |base: &Url, l: &str| redirect_target(base, Some(l)).map(|u| u.to_string());
        assert_eq!(
            ok(&https, "https://dl.example.test/a?sig=1").unwrap(),
            "https://dl.example.test/a?sig=1"
        );
        assert_eq!(
            ok(&https, "/a?b").unwrap(),
            "https://graph.example.test/a?b"
        );
        assert_eq!(
            ok(&http, "http://127.0.0.2:2/a").unwrap(),
            "http://127.0.0.2:2/a"
        );
        assert_eq!(
            ok(&https, "http://dl.example.test/a"),
            Err("redirect from https to http refused")
        );
        assert_eq!(
            ok(&https, "ftp://dl.example.test/a"),
            Err("redirect to an invalid Location")
        );
        assert_eq!(
            ok(&https, "https://"),
            Err("redirect to an invalid Location")
        );
        assert_eq!(
            redirect_target(&https, None),
            Err("redirect without a usable Location header")
        );
    }

    #[test]
    fn what_is_retried_and_how_long_it_waits() {
        let policy = RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(600),
        };
        assert_eq!(
            policy.delay(&throttled(Some(7)), 0),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            policy.delay(&throttled(Some(599)), 0),
            Some(Duration::from_secs(599)),
            "Retry-After is honoured beyond the backoff cap"
        );
        assert_eq!(
            policy.delay(&throttled(Some(601)), 0),
            None,
            "beyond max_retry_after"
        );
        assert_eq!(
            policy.delay(&throttled(Some(1)), 3),
            None,
            "retries exhausted"
        );
        for retry in 0..3 {
            let window = Duration::from_secs(2 << retry);
            let refused_download = |status| RefreshError::Http {
                stage: Stage::Download,
                status: Some(status),
                request_id: RequestId::default(),
                detail: String::new(),
            };
            let tagged = RefreshError::AfterReport {
                request_id: "r".into(),
                error: Box::new(http(503)),
            };
            for error in [
                throttled(None),
                http(503),
                http(504),
                http(502),
                refused_download(403),
                refused_download(410),
                tagged,
            ] {
                let wait = policy.delay(&error, retry).unwrap();
                assert!(
                    wait >= window / 2 && wait <= window,
                    "{wait:?} for retry {retry}"
                );
            }
        }
        let network = RefreshError::Network {
            stage: Stage::Download,
            detail: String::new(),
        };
        assert!(policy.delay(&network, 0).is_some());
        for never in [
            http(400),
            http(404),
            http(500),
            RefreshError::Forbidden {
                stage: Stage::Report,
                request_id: RequestId::default(),
            },
            RefreshError::Timeout {
                stage: Stage::Report,
                timeout: Duration::from_secs(1),
            },
            RefreshError::Parse(crate::report::ReportError::Empty),
        ] {
            assert_eq!(policy.delay(&never, 0), None, "{never}");
        }
        // The window stops doubling at max_delay.
        assert!(policy.delay(&http(503), 2).unwrap() <= Duration::from_secs(60));
        let long = RetryPolicy {
            max_retries: 40,
            ..policy
        };
        assert!(long.delay(&http(503), 39).unwrap() <= Duration::from_secs(60));
    }
}
