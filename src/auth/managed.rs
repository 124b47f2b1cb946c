//! Managed identity: a token from the hosting platform instead of the identity platform. App
//! Service, Container Apps and Functions set IDENTITY_ENDPOINT and IDENTITY_HEADER; VMs, scale
//! sets and AKS nodes answer on the instance metadata service (IMDS).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use url::Url;

use crate::error::{RefreshError, Stage};
use crate::http::{exchange, Answer, Limits};

/// The IMDS address the Azure SDKs use; AZURE_POD_IDENTITY_AUTHORITY_HOST replaces it.
pub(crate) const IMDS_HOST: &str = "http://169.254.169.254";
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
const IMDS_API_VERSION: &str = "2018-02-01";
const APP_SERVICE_API_VERSION: &str = "2019-08-01";
/// First wait after a transient IMDS answer; doubled after each.
const IMDS_FIRST_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub enum ManagedEndpoint {
    /// IDENTITY_ENDPOINT, with IDENTITY_HEADER (a secret) in X-IDENTITY-HEADER.
    AppService { endpoint: Url, header: SecretString },
    /// The instance metadata service at `host` (IMDS_HOST unless overridden).
    Imds { host: Url },
}

impl fmt::Debug for ManagedEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// By value, header included: a tenant of --config.file compares its endpoint on reload.
impl PartialEq for ManagedEndpoint {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                ManagedEndpoint::AppService { endpoint, header },
                ManagedEndpoint::AppService {
                    endpoint: e,
                    header: h,
                },
            ) => endpoint == e && header.expose_secret() == h.expose_secret(),
            (ManagedEndpoint::Imds { host }, ManagedEndpoint::Imds { host: h }) => host == h,
            _ => false,
        }
    }
}

impl ManagedEndpoint {
    /// Where tokens come from, without the header: for logs and `--config.check`.
    pub fn describe(&self) -> String {
        match self {
            ManagedEndpoint::AppService { endpoint, .. } => {
                format!("App Service IDENTITY_ENDPOINT {endpoint}")
            }
            ManagedEndpoint::Imds { host } => format!("IMDS {}", self.url_for(host, "", None)),
        }
    }

    fn url_for(&self, base: &Url, resource: &str, client_id: Option<&str>) -> Url {
        let (mut url, version) = match self {
            ManagedEndpoint::AppService { .. } => (base.clone(), APP_SERVICE_API_VERSION),
            ManagedEndpoint::Imds { .. } => {
                let mut url = base.clone();
                url.set_path(IMDS_PATH);
                (url, IMDS_API_VERSION)
            }
        };
        if resource.is_empty() {
            return url;
        }
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("api-version", version)
                .append_pair("resource", resource);
            if let Some(id) = client_id {
                query.append_pair("client_id", id);
            }
        }
        url
    }

    /// The token request for `resource` (the Graph root, without `/.default`). IMDS answers
    /// 410 while it updates and 429 or 5xx when busy: those are retried with backoff for as
    /// long as the timeout allows, and the last answer is returned when it runs out.
    pub(super) async fn request(
        &self,
        http: &reqwest::Client,
        resource: &str,
        client_id: Option<&str>,
        limits: &Limits,
    ) -> Result<Answer, RefreshError> {
        let deadline = Instant::now() + limits.timeout;
        let mut backoff = IMDS_FIRST_BACKOFF;
        loop {
            let request = match self {
                ManagedEndpoint::AppService { endpoint, header } => http
                    .get(self.url_for(endpoint, resource, client_id))
                    .header("X-IDENTITY-HEADER", header.expose_secret()),
                ManagedEndpoint::Imds { host } => http
                    .get(self.url_for(host, resource, client_id))
                    .header("Metadata", "true"),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = Limits {
                timeout: remaining,
                max_body_bytes: limits.max_body_bytes,
                in_flight: limits.in_flight.clone(),
                requests: Arc::clone(&limits.requests),
            };
            let answer = exchange(Stage::Token, request, &attempt)
                .await
                .map_err(|e| match e {
                    // The attempt's timeout is what was left of the whole one.
                    RefreshError::Timeout { stage, .. } => RefreshError::Timeout {
                        stage,
                        timeout: limits.timeout,
                    },
                    other => other,
                })?;
            let status = answer.status.as_u16();
            let transient = status == 410 || status == 429 || answer.status.is_server_error();
            if !transient || matches!(self, ManagedEndpoint::AppService { .. }) {
                return Ok(answer);
            }
            let wait = answer.retry_after().unwrap_or(backoff).max(backoff);
            // Compared, not added to now: a hostile Retry-After would overflow the Instant.
            if wait >= deadline.saturating_duration_since(Instant::now()) {
                return Ok(answer);
            }
            tracing::debug!(
                status,
                wait_ms = wait.as_millis() as u64,
                "IMDS busy, retrying"
            );
            tokio::time::sleep(wait).await;
            backoff = backoff.saturating_mul(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    #[tokio::test]
    async fn a_retry_after_beyond_any_clock_ends_the_retries() {
        let imds = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(
                ResponseTemplate::new(503).insert_header("Retry-After", u64::MAX.to_string()),
            )
            .expect(1)
            .mount(&imds)
            .await;
        let endpoint = ManagedEndpoint::Imds {
            host: Url::parse(&imds.uri()).unwrap(),
        };
        let limits = Limits {
            timeout: Duration::from_secs(30),
            max_body_bytes: 1024,
            in_flight: None,
            requests: Default::default(),
        };
        let answer = endpoint
            .request(
                &crate::http::test_client(),
                "https://graph.example.test",
                None,
                &limits,
            )
            .await
            .unwrap();
        assert_eq!(answer.status.as_u16(), 503);
    }

    #[test]
    fn request_urls() {
        let imds = ManagedEndpoint::Imds {
            host: Url::parse(IMDS_HOST).unwrap(),
        };
        let ManagedEndpoint::Imds { host } = &imds else {
            unreachable!()
        };
        assert_eq!(
            imds.url_for(host, "https://graph.microsoft.com", Some("c1")).as_str(),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fgraph.microsoft.com&client_id=c1"
        );
        let endpoint = Url::parse("http://localhost:8081/msi/token").unwrap();
        let app = ManagedEndpoint::AppService {
            endpoint: endpoint.clone(),
            header: SecretString::from("hdr-secret"),
        };
        assert_eq!(
            app.url_for(&endpoint, "https://graph.microsoft.us", None).as_str(),
            "http://localhost:8081/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fgraph.microsoft.us"
        );
        assert!(!format!("{app:?}").contains("hdr-secret"));
        assert_eq!(
            imds.describe(),
            "IMDS http://169.254.169.254/metadata/identity/oauth2/token"
        );
    }
}
