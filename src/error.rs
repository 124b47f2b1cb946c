//! Why a refresh failed, and the `reason` label each failure is counted under.

use std::fmt;
use std::time::Duration;

use crate::report::ReportError;
use crate::text::one_line;

/// Which HTTP exchange of a refresh an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Token,
    Report,
    Download,
}

impl Stage {
    /// The `stage` label of `sfb_graph_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Token => "token",
            Stage::Report => "report",
            Stage::Download => "download",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Token => "token request",
            Stage::Report => "report request",
            Stage::Download => "report download",
        })
    }
}

/// Graph's `request-id`, which Microsoft support asks for; empty when the answer had none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestId(pub Option<String>);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(id) => write!(f, " (request-id {id})"),
            None => Ok(()),
        }
    }
}

/// Every message is a single line and free of secrets: no token, no client secret and no
/// download URL is ever put into an error. Cloneable so that one failed token request can
/// answer every period that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    #[error("token request rejected with HTTP {status}{}: {detail}", code.map(|c| format!(", AADSTS{c}")).unwrap_or_default())]
    Auth {
        status: u16,
        code: Option<u64>,
        detail: String,
    },
    /// The credential could not be presented: an unreadable federated token file, say.
    #[error("token request: {0}")]
    Credential(String),
    #[error("{stage}: HTTP 401 Unauthorized{request_id}: {detail}")]
    Unauthorized {
        stage: Stage,
        request_id: RequestId,
        detail: String,
    },
    #[error("{stage}: HTTP 403 Forbidden{request_id}: the app registration needs the Reports.Read.All application permission with admin consent")]
    Forbidden { stage: Stage, request_id: RequestId },
    #[error("{stage}: HTTP 429 Too Many Requests{request_id}: Graph allows 14 report requests per 10 minutes per app and tenant")]
    Throttled {
        stage: Stage,
        request_id: RequestId,
        retry_after: Option<Duration>,
    },
    #[error("{stage}: {detail}{request_id}")]
    Http {
        stage: Stage,
        status: Option<u16>,
        request_id: RequestId,
        detail: String,
    },
    #[error("{stage}: no complete answer within {}", humantime::format_duration(*.timeout))]
    Timeout { stage: Stage, timeout: Duration },
    #[error("report rejected: {0}")]
    Parse(#[from] ReportError),
    #[error("{stage}: body larger than the limit of {limit} bytes (--graph.max-body-bytes)")]
    TooLarge { stage: Stage, limit: u64 },
    #[error("{stage}: {detail}")]
    Network { stage: Stage, detail: String },
    /// A failure after Graph answered the report request, tagged with that answer's request-id
    /// (the download host and the CSV parser have none of their own to offer).
    #[error("{error} (report request-id {request_id})")]
    AfterReport {
        request_id: String,
        error: Box<RefreshError>,
    },
}

impl RefreshError {
    /// The `reason` label of `sfb_refresh_failures_total`.
    pub fn reason(&self) -> Reason {
        match self {
            RefreshError::Auth { .. }
            | RefreshError::Unauthorized { .. }
            | RefreshError::Credential(_) => Reason::Auth,
            RefreshError::Forbidden { .. } => Reason::Forbidden,
            RefreshError::Throttled { .. } => Reason::Throttled,
            RefreshError::Http { .. } => Reason::Http,
            RefreshError::Timeout { .. } => Reason::Timeout,
            RefreshError::Parse(_) => Reason::Parse,
            RefreshError::TooLarge { .. } => Reason::TooLarge,
            RefreshError::Network { .. } => Reason::Network,
            RefreshError::AfterReport { error, .. } => error.reason(),
        }
    }

    /// The failure itself, without request-id tagging.
    pub fn inner(&self) -> &RefreshError {
        match self {
            RefreshError::AfterReport { error, .. } => error.inner(),
            other => other,
        }
    }

    /// Tags the error with the report answer's request-id, when it has one and the error does
    /// not already carry it.
    pub fn after_report(self, request_id: &RequestId) -> RefreshError {
        match (&request_id.0, &self) {
            (Some(id), e) if !e.to_string().contains(id.as_str()) => RefreshError::AfterReport {
                request_id: id.clone(),
                error: Box::new(self),
            },
            _ => self,
        }
    }

    /// Builds a network error from reqwest's, keeping its cause chain but never its URL, whose
    /// query is a credential for downloads. A failed name lookup is a network error even when
    /// the resolver gave up by timing out; a refused certificate is said in plain words.
    pub fn network(stage: Stage, err: reqwest::Error, timeout: Duration) -> RefreshError {
        let err = err.without_url();
        let mut detail = err.to_string();
        let mut dns = false;
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            let text = cause.to_string();
            dns |= text.starts_with("dns error");
            if let Some(words) = certificate_words(cause) {
                return RefreshError::Network {
                    stage,
                    detail: format!("TLS: {words}"),
                };
            }
            if !detail.contains(&text) {
                detail.push_str(": ");
                detail.push_str(&text);
            }
            source = cause.source();
        }
        if err.is_timeout() && !dns {
            return RefreshError::Timeout { stage, timeout };
        }
        if dns {
            detail = format!("cannot resolve the host name ({detail})");
        }
        RefreshError::Network {
            stage,
            detail: one_line(&detail, 300),
        }
    }
}

/// A refused server certificate in plain words, when `cause` is one. io::Error hides the
/// error it wraps from `source()`, and hyper-rustls wraps tokio-rustls's io::Error in another,
/// so every io::Error layer is looked into.
fn certificate_words(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::CertificateError as C;
    let mut layer = cause;
    let tls = loop {
        if let Some(tls) = layer.downcast_ref::<rustls::Error>() {
            break tls;
        }
        layer = layer.downcast_ref::<std::io::Error>()?.get_ref()?;
    };
    let rustls::Error::InvalidCertificate(problem) = tls else {
        return None;
    };
    let what = match problem {
        C::UnknownIssuer => "is not signed by a trusted certificate authority (a TLS-inspecting proxy? its CA must be trusted)",
        C::Expired | C::ExpiredContext { .. } => "has expired (or this host's clock is wrong)",
        C::NotValidYet | C::NotValidYetContext { .. } => "is not valid yet (or this host's clock is wrong)",
        C::NotValidForName | C::NotValidForNameContext { .. } => "was issued for another host name",
        C::Revoked => "has been revoked",
        C::BadSignature => "has a signature that does not verify",
        C::BadEncoding => "is malformed",
        _ => return Some(format!("the server's certificate was refused: {problem:?}")),
    };
    Some(format!("the server's certificate {what}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Auth,
    Forbidden,
    Throttled,
    Http,
    Timeout,
    Parse,
    TooLarge,
    Network,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Auth,
        Reason::Forbidden,
        Reason::Throttled,
        Reason::Http,
        Reason::Timeout,
        Reason::Parse,
        Reason::TooLarge,
        Reason::Network,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Auth => "auth",
            Reason::Forbidden => "forbidden",
            Reason::Throttled => "throttled",
            Reason::Http => "http",
            Reason::Timeout => "timeout",
            Reason::Parse => "parse",
            Reason::TooLarge => "too_large",
            Reason::Network => "network",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_problems_in_plain_words() {
        // As hyper-rustls hands them over: tokio-rustls's io::Error inside another.
        let wrapped = |problem| {
            std::io::Error::other(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(problem),
            ))
        };
        let words = |problem| certificate_words(&wrapped(problem)).unwrap();
        assert!(words(rustls::CertificateError::UnknownIssuer).contains("not signed by a trusted"));
        assert!(words(rustls::CertificateError::Expired).contains("has expired"));
        assert!(words(rustls::CertificateError::NotValidForName).contains("another host name"));
        let other = std::io::Error::other("reset");
        assert_eq!(certificate_words(&other), None);
    }

    #[test]
    fn reasons_are_the_documented_label_values() {
        let labels: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "auth",
                "forbidden",
                "throttled",
                "http",
                "timeout",
                "parse",
                "too_large",
                "network"
            ]
        );
    }
}
