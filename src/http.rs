//! One bounded HTTP exchange: the whole answer, body included, within the timeout and the size
//! cap, or an error that says which limit was hit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};
use tokio::sync::Semaphore;

use crate::error::{Error, RequestId, Stage};
use crate::text::one_line;

#[derive(Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub max_body_bytes: u64,
    /// Shared by every tenant: bounds the exchanges in flight (--graph.max-concurrency).
    pub in_flight: Option<Arc<Semaphore>>,
    /// Shared by every exchange of a tenant, for `sfb_graph_requests_total`.
    pub requests: Arc<RequestCounts>,
}

/// Exchanges by stage and HTTP status (None: no answer came back), retries included.
#[derive(Debug, Default)]
pub struct RequestCounts(Mutex<BTreeMap<(Stage, Option<u16>), u64>>);

impl RequestCounts {
    fn count(&self, stage: Stage, status: Option<u16>) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry((stage, status)).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<(Stage, Option<u16>), u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub struct Answer {
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
    pub fn graph_code(&self) -> Option<String> {
        self.graph_error("/error/code")
    }

    /// Graph's request-id, from the header or else from the error envelope's innerError.
    pub fn request_id(&self) -> RequestId {
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
    pub fn retry_after(&self) -> Option<Duration> {
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
    pub fn describe(&self) -> String {
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

pub async fn exchange(
    stage: Stage,
    request: RequestBuilder,
    limits: &Limits,
) -> Result<Answer, Error> {
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
        let mut response = sent.map_err(|e| Error::network(stage, e, timeout))?;
        let too_large = Error::TooLarge {
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
            .map_err(|e| Error::network(stage, e, timeout))?
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
    outcome.map_err(|_| Error::Timeout { stage, timeout })?
}

/// The client every exchange goes through. Redirects are never followed automatically: the
/// report's redirect must be followed by hand, without the Authorization header.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        // An async resolver: no blocking getaddrinfo threads to outlive shutdown, and no
        // dependency on glibc's NSS, which a static binary cannot load. Its hosts file
        // answers are final, as the system resolver's are (see dns.rs).
        .dns_resolver(Arc::new(crate::dns::Resolver::system()))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .user_agent(concat!("sfb-exporter/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let client = reqwest::Client::new();
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
