//! The report request: bearer token, one redirect to a pre-authenticated download, CSV body.

use bytes::Bytes;
use reqwest::header::{ETAG, IF_NONE_MATCH, LOCATION, RETRY_AFTER};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::auth::TokenSource;
use crate::config::Period;
use crate::error::{Error, Stage};
use crate::http::{exchange, Answer, Limits};

pub struct GraphClient {
    http: reqwest::Client,
    graph: Url,
    tokens: TokenSource,
    limits: Limits,
}

/// What a report request brought.
#[derive(Debug, PartialEq)]
pub enum Fetched {
    /// 304: the report is unchanged since the download whose ETag was sent.
    NotModified,
    Body {
        csv: Bytes,
        etag: Option<String>,
    },
}

impl GraphClient {
    pub fn new(
        http: reqwest::Client,
        graph: Url,
        tokens: TokenSource,
        limits: Limits,
    ) -> GraphClient {
        GraphClient {
            http,
            graph,
            tokens,
            limits,
        }
    }

    pub fn report_url(&self, period: Period) -> Url {
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

    /// Fetches one period's report. A token Graph rejects with 401 is dropped and replaced once.
    pub async fn fetch(&self, period: Period, etag: Option<&str>) -> Result<Fetched, Error> {
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
                csv: answer.body,
            }),
            StatusCode::NOT_MODIFIED => Ok(Fetched::NotModified),
            s if s.is_redirection() => Ok(self.download(&url, &answer).await?),
            StatusCode::UNAUTHORIZED => Err(Unauthorized(
                token,
                Error::Unauthorized {
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
    async fn download(&self, base: &Url, redirect: &Answer) -> Result<Fetched, Error> {
        let http_error = |detail: &str| Error::Http {
            stage: Stage::Report,
            status: Some(redirect.status.as_u16()),
            request_id: redirect.request_id(),
            detail: format!("HTTP {}: {detail}", redirect.status.as_u16()),
        };
        let location = redirect
            .headers
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| http_error("redirect without a usable Location header"))?;
        let target = base
            .join(location)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| http_error("redirect to an invalid Location"))?;
        let target = SecretString::from(target.to_string());
        let request = self.http.get(target.expose_secret());
        let answer = exchange(Stage::Download, request, &self.limits).await?;
        match answer.status {
            StatusCode::OK => Ok(Fetched::Body {
                etag: etag_of(&answer).or_else(|| etag_of(redirect)),
                csv: answer.body,
            }),
            s if s.is_redirection() => Err(Error::Http {
                stage: Stage::Download,
                status: Some(s.as_u16()),
                request_id: answer.request_id(),
                detail: format!(
                    "HTTP {}: a second redirect; only one is expected",
                    s.as_u16()
                ),
            }),
            _ => Err(unexpected(Stage::Download, &answer)),
        }
    }
}

/// A 401 keeps the token it refused, so that exactly that token can be dropped from the cache.
enum Failure {
    Unauthorized(SecretString, Error),
    Other(Error),
}
use Failure::Unauthorized;

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::Unauthorized(_, e) | Failure::Other(e) => e,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
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

fn unexpected(stage: Stage, answer: &Answer) -> Error {
    let request_id = answer.request_id();
    match answer.status {
        StatusCode::FORBIDDEN => Error::Forbidden { stage, request_id },
        StatusCode::UNAUTHORIZED => Error::Unauthorized {
            stage,
            request_id,
            detail: answer.describe(),
        },
        StatusCode::TOO_MANY_REQUESTS => Error::Throttled {
            stage,
            request_id,
            retry_after: answer
                .headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .map(std::time::Duration::from_secs),
        },
        status => Error::Http {
            stage,
            status: Some(status.as_u16()),
            request_id,
            detail: answer.describe(),
        },
    }
}
