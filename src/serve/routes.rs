//! HTTP routes. Handlers only read the published snapshot: a scrape copies pre-rendered bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;

use crate::exposition::metrics::CONTENT_TYPE;
use crate::exposition::process::ProcessMetrics;
use crate::exposition::publisher::{Published, TenantMode};
use crate::refresh::fleet::{ReloadError, Reloader};
use crate::report::Period;
use crate::serve::server::{App, InFlight};
use crate::serve::webconfig::{guard, Security};
use crate::state::{self, Attempt};

#[derive(Clone)]
struct AppState {
    published: Arc<ArcSwap<Published>>,
    scrape: Arc<Scrape>,
    landing: Bytes,
    lifecycle: Lifecycle,
}

/// What POST /-/reload does.
#[derive(Clone)]
pub enum Lifecycle {
    /// Without --web.enable-lifecycle: refused, as Prometheus refuses it.
    Disabled,
    /// Enabled, without --config.file: there is nothing to reload.
    NothingToReload,
    /// Re-reads --config.file.
    Reload(Reloader),
}

/// `security` is None without a web config: then there is nothing to guard, and the scrape
/// path stays free of the layer.
/// `max_requests` bounds scrapes in flight (0: no bound); `exporter_metrics` appends the
/// process_* series to every scrape.
pub fn app(
    published: Arc<ArcSwap<Published>>,
    telemetry_path: &str,
    security: Option<Arc<ArcSwap<Security>>>,
    lifecycle: Lifecycle,
    max_requests: usize,
    exporter_metrics: bool,
) -> App {
    let in_flight = InFlight::new(max_requests);
    let scrape = Arc::new(Scrape {
        path: telemetry_path.to_string(),
        published: Arc::clone(&published),
        process: exporter_metrics.then(|| Arc::new(ProcessMetrics::new())),
        in_flight: in_flight.clone(),
        security: security.clone(),
    });
    let state = AppState {
        published,
        scrape: Arc::clone(&scrape),
        landing: landing_page(telemetry_path).into(),
        lifecycle,
    };
    // Behind basic auth, as node_exporter limits only its metrics handler: requests that
    // fail authentication never take a slot from the scrapes.
    let metrics = in_flight.layer(Router::new().route(telemetry_path, get(metrics)));
    let router = Router::new()
        .route("/", get(landing))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/-/reload",
            axum::routing::post(reload).put(reload).get(reload_by_get),
        )
        .merge(metrics)
        .with_state(state);
    let router = match security {
        None => router,
        // route_layer would skip unmatched paths; a plain layer covers 404s too, as
        // exporter-toolkit covers every path.
        Some(security) => router.layer(axum::middleware::from_fn_with_state(security, guard)),
    };
    App::new(router, Some(scrape))
}

/// The scrape, answerable without the router: routing, the layers and the boxing of bodies
/// and futures cost several times what copying out the pre-rendered body does, so the server
/// asks [`Scrape::answer`] first. It answers only what the router would answer the same way
/// (a GET of the telemetry path with a free slot, under a web config without basic auth or
/// rate limit) and leaves everything else to the router, whose `metrics` handler builds the
/// same response. HEAD is the router's too: axum empties its body, which hyper would send
/// over HTTP/2.
pub struct Scrape {
    path: String,
    published: Arc<ArcSwap<Published>>,
    /// None with --web.disable-exporter-metrics.
    process: Option<Arc<ProcessMetrics>>,
    in_flight: InFlight,
    security: Option<Arc<ArcSwap<Security>>>,
}

impl Scrape {
    /// The answer to `request` when it is a scrape that the router's layers would let
    /// through unchanged but for the web config's headers; else `request`, for the router.
    #[allow(
        clippy::result_large_err,
        reason = "the request goes back by value: boxing it would allocate for every request the router answers"
    )]
    pub fn answer<B>(&self, mut request: Request<B>) -> Result<Response<Full<Bytes>>, Request<B>> {
        if request.method() != Method::GET || request.uri().path() != self.path {
            return Err(request);
        }
        let security = match &self.security {
            Some(security) => {
                let security = security.load();
                if !security.lets_everyone_in() {
                    return Err(request);
                }
                Some(security)
            }
            None => None,
        };
        // Without a free slot the router's layer answers 503.
        let Some(_slot) = self.in_flight.try_begin() else {
            return Err(request);
        };
        let gzip = accepts_gzip(request.headers());
        // The response takes over the request's header map, emptied: hyper hands a
        // response's map back for the next request's headers, so that, kept in the loop, it
        // is allocated once per connection instead of once per request.
        let mut headers = std::mem::take(request.headers_mut());
        drop(request);
        headers.clear();
        let mut response = self.respond(gzip, headers);
        if let Some(security) = security {
            security.add_headers(response.headers_mut());
        }
        Ok(response)
    }

    /// The scrape's response, with its headers added to `headers`.
    fn respond(&self, gzip: bool, mut headers: HeaderMap) -> Response<Full<Bytes>> {
        let published = self.published.load();
        let body = match (&self.process, gzip) {
            (Some(process), gzip) => process.body(&published, gzip),
            (None, true) => published.metrics_gzip.bytes().clone(),
            (None, false) => published.metrics.clone(),
        };
        headers.insert(header::CONTENT_TYPE, CONTENT_TYPE_VALUE);
        if gzip {
            headers.insert(header::CONTENT_ENCODING, GZIP);
        }
        headers.insert(header::VARY, ACCEPT_ENCODING);
        let mut response = Response::new(Full::new(body));
        *response.headers_mut() = headers;
        response
    }
}

const CONTENT_TYPE_VALUE: HeaderValue = HeaderValue::from_static(CONTENT_TYPE);
const GZIP: HeaderValue = HeaderValue::from_static("gzip");
const ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("Accept-Encoding");

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    s.scrape
        .respond(accepts_gzip(&headers), HeaderMap::new())
        .map(Body::new)
}

/// Whether Accept-Encoding admits gzip (RFC 9110, 12.5.3): the q-value of `gzip` (or
/// `x-gzip`) when listed, else that of `*`, must be above 0.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for coding in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = coding.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(0.0);
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q);
        } else if name == "*" {
            any = Some(q);
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}

/// POST or PUT /-/reload, as Prometheus has it (its very words, for scripts that match
/// them): 403 unless --web.enable-lifecycle, 500 with the reason when the file does not load;
/// 503 at once when enough callers already wait for the queued reload (they would hold
/// their connections busy).
async fn reload(State(s): State<AppState>) -> Response {
    match &s.lifecycle {
        Lifecycle::Disabled => {
            (StatusCode::FORBIDDEN, "Lifecycle API is not enabled.").into_response()
        }
        Lifecycle::NothingToReload => "nothing to reload: no --config.file\n".into_response(),
        Lifecycle::Reload(reloader) => match reloader.reload().await {
            Ok(_) => StatusCode::OK.into_response(),
            Err(busy @ ReloadError::Busy) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                format!("{busy}\n"),
            )
                .into_response(),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to reload config: {e}\n"),
            )
                .into_response(),
        },
    }
}

async fn reload_by_get() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        "Only POST or PUT requests allowed",
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    /// In period order: D7, D30, D90, D180. Without --config.file.
    #[serde(skip_serializing_if = "Option::is_none")]
    periods: Option<BTreeMap<Period, PeriodReadiness>>,
    /// By tenant ID. With --config.file.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenants: Option<BTreeMap<String, TenantReadiness>>,
}

#[derive(Serialize)]
struct TenantReadiness {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    periods: BTreeMap<Period, PeriodReadiness>,
}

#[derive(Serialize)]
struct PeriodReadiness {
    /// pending (no attempt finished yet), ok, or failing.
    state: &'static str,
    last_success: Option<String>,
    last_error: Option<String>,
}

async fn readyz(State(s): State<AppState>) -> Response {
    let published = s.published.load();
    let ready = published.ready();
    let readiness = if published.mode == TenantMode::File {
        let tenants = published
            .tenants
            .iter()
            .map(|(id, t)| {
                let readiness = TenantReadiness {
                    name: t.name.clone(),
                    periods: periods(&t.state),
                };
                (id.clone(), readiness)
            })
            .collect();
        Readiness {
            ready,
            periods: None,
            tenants: Some(tenants),
        }
    } else {
        let periods = published
            .tenants
            .values()
            .next()
            .map(|t| periods(&t.state))
            .unwrap_or_default();
        Readiness {
            ready,
            periods: Some(periods),
            tenants: None,
        }
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(readiness)).into_response()
}

fn periods(state: &state::State) -> BTreeMap<Period, PeriodReadiness> {
    state
        .periods
        .iter()
        .map(|(period, p)| {
            let (status, last_error) = match &p.last_attempt {
                None => ("pending", None),
                Some(Attempt::Succeeded) => ("ok", None),
                Some(Attempt::Failed { reason, message }) => {
                    ("failing", Some(format!("{reason}: {message}")))
                }
                Some(Attempt::Panicked { message }) => ("failing", Some(message.clone())),
            };
            let readiness = PeriodReadiness {
                state: status,
                last_success: p
                    .last_success
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                last_error,
            };
            (*period, readiness)
        })
        .collect()
}

async fn landing(State(s): State<AppState>) -> Html<Bytes> {
    Html(s.landing)
}

fn landing_page(telemetry_path: &str) -> String {
    let path = telemetry_path
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>sfb-exporter</title></head>\n\
         <body><h1>sfb-exporter</h1>\n\
         <p>Prometheus exporter for the Microsoft Graph report getSkypeForBusinessOrganizerActivityMinuteCounts, version {}.</p>\n\
         <ul><li><a href=\"{path}\">Metrics</a></li><li><a href=\"/readyz\">Readiness</a></li><li><a href=\"/healthz\">Health</a></li></ul>\n\
         </body></html>\n",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::SystemTime;
    use tower::ServiceExt;

    fn published(state: state::State) -> Arc<ArcSwap<Published>> {
        Arc::new(ArcSwap::from_pointee(Published::new(
            state,
            "# HELP x y
x 1
"
            .into(),
        )))
    }

    /// The response as the server gets it: the scrape's shortcut, else the router's.
    async fn call(app: &App, request: Request<Body>) -> Response {
        match app.shortcut(request) {
            Ok(response) => response.map(Body::new),
            Err(request) => app.router().clone().oneshot(request).await.unwrap(),
        }
    }

    async fn get(app: &App, uri: &str) -> (StatusCode, String, String) {
        let response = call(app, Request::get(uri).body(Body::empty()).unwrap()).await;
        let status = response.status();
        let ctype = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn gzip_negotiation() {
        let accepts = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
            accepts_gzip(&headers)
        };
        for yes in [
            "gzip",
            "GZIP",
            "x-gzip",
            "br, gzip;q=0.5",
            "*",
            "gzip;Q=1",
            "identity, *;q=0.1",
        ] {
            assert!(accepts(yes), "{yes}");
        }
        for no in [
            "identity",
            "br",
            "gzip;q=0",
            "gzip;Q=0, *",
            "*;q=0",
            "gzip;q=0.0",
            "gzip;q=x",
        ] {
            assert!(!accepts(no), "{no}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    fn request(method: Method, uri: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap()
    }

    fn security(yaml: &str) -> Arc<ArcSwap<Security>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        std::fs::write(&path, yaml).unwrap();
        let web = crate::serve::webconfig::WebConfig::load(&path).unwrap();
        Arc::new(ArcSwap::new(web.security))
    }

    /// The shortcut answers a GET of the telemetry path when nothing but headers stands in
    /// the way, and leaves the rest to the router. (That its answers are the router's is
    /// checked on the wire, in tests/api/serving.rs.)
    #[test]
    fn the_scrape_takes_only_what_the_router_would_answer_alike() {
        let snapshot = published(state::State::new("t", [Period::D7]));
        let open = app(
            Arc::clone(&snapshot),
            "/metrics",
            None,
            Lifecycle::Disabled,
            40,
            false,
        );
        assert!(open.shortcut(request(Method::GET, "/metrics?x=1")).is_ok());
        for (method, uri) in [
            (Method::HEAD, "/metrics"),
            (Method::POST, "/metrics"),
            (Method::OPTIONS, "/metrics"),
            (Method::GET, "/metrics/"),
            (Method::GET, "/healthz"),
            (Method::GET, "/"),
        ] {
            let left = open.shortcut(request(method.clone(), uri));
            assert!(left.is_err_and(|r| r.uri() == uri), "{method} {uri}");
        }
        let headers = "http_server_config:\n  headers:\n    X-Frame-Options: deny\n";
        let with_headers = app(
            Arc::clone(&snapshot),
            "/metrics",
            Some(security(headers)),
            Lifecycle::Disabled,
            40,
            false,
        );
        let response = with_headers.shortcut(request(Method::GET, "/metrics"));
        assert_eq!(response.unwrap().headers()["x-frame-options"], "deny");
        let hash = bcrypt::hash("pw", 4).unwrap();
        for guarded in [
            format!("basic_auth_users:\n  prometheus: {hash}\n"),
            "rate_limit:\n  interval: 1s\n  burst: 10\n".to_string(),
        ] {
            let app = app(
                Arc::clone(&snapshot),
                "/metrics",
                Some(security(&guarded)),
                Lifecycle::Disabled,
                40,
                false,
            );
            assert!(
                app.shortcut(request(Method::GET, "/metrics")).is_err(),
                "{guarded}"
            );
        }
    }

    /// Without a free slot under --web.max-requests the scrape is the router's, whose layer
    /// answers 503.
    #[test]
    fn a_scrape_without_a_free_slot_is_left_to_the_router() {
        let in_flight = InFlight::new(1);
        let scrape = Scrape {
            path: "/metrics".into(),
            published: published(state::State::new("t", [Period::D7])),
            process: None,
            in_flight: in_flight.clone(),
            security: None,
        };
        let held = in_flight.try_begin().unwrap();
        assert!(scrape.answer(request(Method::GET, "/metrics")).is_err());
        drop(held);
        let response = scrape.answer(request(Method::GET, "/metrics")).unwrap();
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert!(
            in_flight.try_begin().is_some(),
            "the scrape gave its slot back"
        );
    }

    #[tokio::test]
    async fn routes() {
        let snapshot = published(state::State::new("t", [Period::D7, Period::D30]));
        let app = app(
            Arc::clone(&snapshot),
            "/custom",
            None,
            Lifecycle::Disabled,
            40,
            false,
        );
        assert_eq!(
            get(&app, "/custom").await,
            (
                StatusCode::OK,
                CONTENT_TYPE.to_string(),
                "# HELP x y\nx 1\n".to_string()
            )
        );
        assert_eq!(get(&app, "/metrics").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        let (status, _, body) = get(&app, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("href=\"/custom\""), "{body}");
    }

    #[tokio::test]
    async fn readiness_follows_the_snapshot() {
        let mut state = state::State::new("t", [Period::D7, Period::D30]);
        let snapshot = published(state.clone());
        let app = app(
            Arc::clone(&snapshot),
            "/metrics",
            None,
            Lifecycle::Disabled,
            40,
            false,
        );

        let (status, ctype, body) = get(&app, "/readyz").await;
        assert_eq!(
            (status, ctype.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "application/json")
        );
        assert!(
            body.find("\"D7\"").unwrap() < body.find("\"D30\"").unwrap(),
            "{body}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["ready"], false);
        assert_eq!(json["periods"]["D7"]["state"], "pending");

        let d7 = state.periods.get_mut(&Period::D7).unwrap();
        d7.last_attempt = Some(Attempt::Succeeded);
        d7.last_success = Some(SystemTime::now());
        let d30 = state.periods.get_mut(&Period::D30).unwrap();
        d30.last_attempt = Some(Attempt::Failed {
            reason: crate::error::Reason::Forbidden,
            message: "nope".into(),
        });
        snapshot.store(Arc::new(Published::new(state.clone(), Default::default())));
        let (status, _, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["periods"]["D7"]["state"], "ok");
        assert_eq!(json["periods"]["D30"]["state"], "failing");
        assert_eq!(json["periods"]["D30"]["last_error"], "forbidden: nope");

        state.periods.get_mut(&Period::D30).unwrap().last_success = Some(SystemTime::now());
        snapshot.store(Arc::new(Published::new(state.clone(), Default::default())));
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);

        // A period whose refresh task panicked is failing, with the refresher's message.
        let message = "the refresh task panicked (boom); restarting it in 1s";
        state.periods.get_mut(&Period::D7).unwrap().last_attempt = Some(Attempt::Panicked {
            message: message.into(),
        });
        snapshot.store(Arc::new(Published::new(state, Default::default())));
        let (_, _, body) = get(&app, "/readyz").await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["periods"]["D7"]["state"], "failing");
        assert_eq!(json["periods"]["D7"]["last_error"], message);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever --web.telemetry-path accepts, the router takes without panicking.
        #[test]
        fn accepted_telemetry_paths_make_a_router(path in "/[a-z:*{}/._~!$&'()+,;=@-]{0,12}") {
            if let Ok(path) = crate::config::cli::parse_telemetry_path(&path) {
                let published = Arc::new(ArcSwap::from_pointee(Published::new(state::State::new("t", []), Default::default())));
                let built = std::panic::catch_unwind(|| app(published, &path, None, Lifecycle::Disabled, 40, true));
                prop_assert!(built.is_ok(), "router panicked on {:?}", path);
            }
        }
    }
}
