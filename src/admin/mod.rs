//! The admin HTTP port: liveness, readiness, `/status`, `/metrics`, drains, reload and a small
//! status page.
//!
//! Owns the HTTP surface only: state lives in the [`Handles`] it is given (the snapshot cell,
//! the health subsystem, the metrics and the reloader). Key items: [`start`] (binds `server.admin_listen`, logs
//! `listening admin/http ADDR` or `listening admin/https ADDR`, spawns the server and the metrics feed), the router,
//! [`AdminError`] (every error is JSON `{"error": "..."}` with a fitting status) and
//! [`status::StatusReport`] (the `/status` document).
//!
//! Endpoints (DESIGN.md, "Admin HTTP API"):
//!
//! | method and path                 | token | answer                                              |
//! |---------------------------------|-------|-----------------------------------------------------|
//! | `GET /`                         |       | the status page (HTML, self-contained)              |
//! | `GET /live`                     |       | 200 `{"live": true}`                                |
//! | `GET /ready`                    |       | 200 `{"ready": true}` or 503 `{"ready": false, "reason": ...}` |
//! | `GET /status`                   |       | [`status::StatusReport`]                            |
//! | `GET /metrics`                  |       | OpenMetrics text when asked for (`Accept`), else the Prometheus text format 0.0.4 |
//! | `POST /regions/{region}/drain`  | yes   | `{"region", "drained": true, "changed"}`; 404 unknown region |
//! | `POST /regions/{region}/undrain`| yes   | `{"region", "drained": false, "changed"}`           |
//! | `POST /targets/{address}/drain` | yes   | `{"target", "drained": true, "changed"}`; 404 no endpoint has it, 400 not an IP |
//! | `POST /targets/{address}/undrain`| yes  | `{"target", "drained": false, "changed"}`           |
//! | `POST /reload`                  | yes   | `{"reloaded": true, ...}`; 400 `{"error", "errors": ["file: key: message"]}` |
//!
//! Mutating calls need `Authorization: Bearer <token>`, the token being the trimmed content of
//! `server.admin_token_file`, re-read on every call (so rotating the file needs no restart) and
//! compared in constant time. Without a token file they are allowed only when the admin
//! listener is bound to a loopback address, and refused with 403 otherwise. Drain and undrain
//! take an optional JSON body `{"reason": "...", "expires": "30m", "who": "..."}`: the drain
//! record (who, when, why, until when) is kept with the drain, shown in `/status` under
//! `drains`, and a drain with `expires` ends by itself. With `[cluster]` a drain is written to
//! the etcd store first and reaches every instance; while the store is unreachable drains are
//! refused with 503 and nothing changes (`changed` then says whether the fleet's drains
//! changed). Answers in a fleet carry `"instance"`.
//!
//! | `GET /explain?name=&type=&client=` |   | the policy's decision trace (`meridian explain`) as JSON; 400 bad parameters, 404 not a service |

mod gauges;
mod history;
mod page;
mod server;
pub(crate) mod status;

pub(crate) use server::MAX_OPEN_CONNECTIONS;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::cluster::{Cluster, ClusterError};
use crate::config::ConfigErrors;
use crate::health::overrides::{Drain, Subject as DrainSubject};
use crate::health::{Health, HealthError, PROBE_RESULTS, TransitionEvent};
use crate::metrics::text::{Format, negotiate, to_prometheus_text};
use crate::metrics::{Metrics, PROBE_DURATION_SECONDS, PROBE_ERRORS_TOTAL, PROBES_TOTAL};
use crate::snapshot::{ExplainError, Reloader, SnapshotCell};
use status::StatusReport;

/// A failed admin call. Rendered as JSON `{"error": "..."}` with the status of
/// [`AdminError::status`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    /// The bearer token is missing or wrong (401).
    #[error(
        "missing or wrong bearer token: send \"Authorization: Bearer <token>\" with the token from server.admin_token_file"
    )]
    Unauthorized,
    /// No token file is configured and the listener is reachable from other hosts (403).
    #[error(
        "mutating admin calls are refused: set server.admin_token_file (the admin listener {0} is not loopback-only)"
    )]
    NoToken(SocketAddr),
    /// The token file cannot be used (500): every mutating call is refused until it is fixed.
    #[error("admin token file {path}: {message}")]
    TokenFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A drain or undrain named a region the config does not define (404).
    #[error("unknown region {0:?}")]
    UnknownRegion(String),
    /// A target drain named an address no endpoint has (404).
    #[error("unknown target {0}: no endpoint has this address")]
    UnknownTarget(String),
    /// The health subsystem failed (500), e.g. the state file cannot be written.
    #[error("{0}")]
    Health(HealthError),
    /// The request body is not what the endpoint takes (400).
    #[error("request body: {0}")]
    BadBody(String),
    /// A reload found problems in the config (400); the old config keeps serving.
    #[error("config rejected, the old configuration keeps serving")]
    Reload(ConfigErrors),
    /// No endpoint at this path (404).
    #[error("no such endpoint: {0} (see GET / for the status page)")]
    NotFound(String),
    /// The path exists but not for this method (405).
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: Method,
        /// The path asked for.
        path: String,
    },
    /// A query parameter is missing or invalid (400).
    #[error("{0}")]
    BadParameter(String),
    /// `/explain` named something that is not a service (404).
    #[error("{0}")]
    NotAService(String),
    /// Something inside failed (500).
    #[error("internal error: {0}")]
    Internal(String),
    /// The cluster store is unreachable, so a fleet-wide change was refused (503).
    #[error("{0}")]
    Unavailable(String),
}

impl AdminError {
    /// Returns the HTTP status of this error.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::NoToken(_) => StatusCode::FORBIDDEN,
            AdminError::UnknownRegion(_)
            | AdminError::UnknownTarget(_)
            | AdminError::NotFound(_)
            | AdminError::NotAService(_) => StatusCode::NOT_FOUND,
            AdminError::BadBody(_) | AdminError::Reload(_) | AdminError::BadParameter(_) => {
                StatusCode::BAD_REQUEST
            }
            AdminError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::TokenFile { .. } | AdminError::Health(_) | AdminError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            AdminError::Reload(errors) => json!({
                "error": self.to_string(),
                "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }),
            _ => json!({ "error": self.to_string() }),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// What the admin port needs of the running server.
#[derive(Debug, Clone)]
pub(crate) struct Handles {
    /// The live snapshot (config, services).
    pub(crate) snapshot: SnapshotCell,
    /// Probes, their state and the operator's drains.
    pub(crate) health: Health,
    /// Counters, for `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// Runs `POST /reload`.
    pub reloader: Reloader,
    /// The fleet, with `[cluster]`: drains go through the store.
    pub cluster: Option<Cluster>,
}

/// What every handler shares.
#[derive(Clone)]
struct AdminState {
    app: Handles,
    registry: Arc<Registry>,
    /// Transitions and answer counts of the recent past, for the status page.
    history: Arc<history::History>,
    /// The bound address: mutating calls without a token file need it to be loopback.
    local: SocketAddr,
}

/// Binds `server.admin_listen` (when set), logs `listening admin/http ADDR` with the real
/// port (`admin/https` when `server.admin_tls_certificate` is set), and spawns on `tasks` the HTTP server and the task feeding health events into the
/// metrics; both stop when `token` is cancelled. Returns the bound address.
pub(crate) async fn start(
    app: Handles,
    tasks: &TaskTracker,
    token: CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    use anyhow::Context;
    let Some(addr) = app.snapshot.load().config.server.admin_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind admin/http on {addr}"))?;
    let local = listener.local_addr()?;
    let tls = server::AdminTls::of(&app.snapshot);
    if tls.is_some() {
        info!("listening admin/https {local}");
    } else {
        info!("listening admin/http {local}");
    }
    // Subscribe before returning, so that no transition after start is missed.
    let history = Arc::new(history::History::default());
    tasks.spawn(feed_metrics(
        app.metrics.clone(),
        history.clone(),
        app.health.subscribe(),
        token.clone(),
    ));
    // Connection cap, timeouts and JSON errors: server.rs.
    tasks.spawn(server::serve(
        listener,
        router(app, local, history),
        tls,
        token,
    ));
    Ok(Some(local))
}

/// Returns the admin router over `app`, bound at `local`.
fn router(app: Handles, local: SocketAddr, history: Arc<history::History>) -> Router {
    let gauges = gauges::HealthCollector {
        snapshot: app.snapshot.clone(),
        view: app.health.view_cell(),
    };
    let probe_errors = ProbeErrorsCollector {
        health: app.health.clone(),
    };
    let probe_stats = ProbeStatsCollector {
        health: app.health.clone(),
    };
    let mut collectors: Vec<Box<dyn Collector>> = vec![
        Box::new(gauges),
        Box::new(probe_errors),
        Box::new(probe_stats),
    ];
    if let Some(c) = &app.cluster {
        collectors.push(c.collector());
    }
    let registry = app.metrics.registry(collectors);
    let state = AdminState {
        app,
        registry: Arc::new(registry),
        history,
        local,
    };
    Router::new()
        .route("/", get(index))
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/regions/{region}/{action}", post(region_override))
        .route("/targets/{address}/{action}", post(target_override))
        .route("/reload", post(reload))
        .route("/explain", get(explain))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// `GET /explain?name=api.example.net&type=A&client=203.0.113.7`: the decision for a client at
/// `client` (as a resolver's or an ECS subnet's address) with the live health view.
async fn explain(
    State(s): State<AdminState>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Response, AdminError> {
    let param = |k: &str| {
        q.get(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| AdminError::BadParameter(format!("query parameter {k:?} is required")))
    };
    let name = param("name")?;
    let client = param("client")?;
    let client: std::net::IpAddr = client
        .parse()
        .map_err(|_| AdminError::BadParameter(format!("client {client:?} is not an IP address")))?;
    let qtype = q.get("type").map_or("A", String::as_str);
    let snapshot = s.app.snapshot.load();
    let view = s.app.health.view();
    match crate::snapshot::explain_in(&snapshot, &view, client, name, qtype) {
        Ok(e) => {
            let mut doc = serde_json::to_value(&e).unwrap_or_default();
            if let Some(service) = snapshot.config.services.iter().find(|sv| {
                sv.name
                    .trim_end_matches('.')
                    .eq_ignore_ascii_case(name.trim_end_matches('.'))
            }) {
                doc["targets"] = explain_targets(service, &s.app.health);
            }
            if let Some(c) = &s.app.cluster {
                doc["instance"] = json!(c.instance());
            }
            Ok(axum::Json(doc).into_response())
        }
        Err(ExplainError::NotAService(n)) => Err(AdminError::NotAService(format!(
            "{n} is not a service name (static names are answered from the zone file)"
        ))),
        Err(e) => Err(AdminError::BadParameter(e.to_string())),
    }
}

/// Per target of `service`: the local probe result, each instance's view and the agreed state.
fn explain_targets(
    service: &crate::config::Service,
    health: &crate::health::Health,
) -> serde_json::Value {
    let status = health.status();
    let drains = health.drains();
    let mut out = Vec::new();
    for e in &service.endpoints {
        for a in &e.addresses {
            let t = e
                .check
                .as_deref()
                .and_then(|c| status.iter().find(|t| t.address == *a && t.check == c.name));
            out.push(json!({
                "region": e.region.name,
                "address": a,
                "check": e.check_name(),
                "local": t.map_or("up", |t| t.state.as_str()),
                "agreed": t.map_or("up", |t| t.fleet.as_ref().map_or(t.state, |f| f.agreed).as_str()),
                "fleet": t.and_then(|t| t.fleet.clone()),
                "drained": drains.drained_regions.contains(&e.region.name) || drains.drained_targets.contains(a),
            }));
        }
    }
    serde_json::Value::Array(out)
}

/// `GET /`: the status page, rendered here (see [`page`]).
async fn index(State(s): State<AdminState>) -> impl IntoResponse {
    let snapshot = s.app.snapshot.load();
    let view = s.app.health.view();
    let report = StatusReport::build(
        &snapshot.config,
        s.app.reloader.config_path(),
        s.app.health.first_round_done(),
        &view,
        &s.app.health.status(),
    );
    let outages = crate::outage::assess(&snapshot.config, &view);
    // Who drained what, why and until when (the drain records).
    let records = s.app.health.drains().details;
    let drains: Vec<page::DrainLine> = report
        .drained_regions
        .iter()
        .map(|r| format!("regions/{r}"))
        .chain(
            report
                .drained_targets
                .iter()
                .map(|a| format!("targets/{a}")),
        )
        .map(|subject| {
            let record = records.get(&subject);
            page::DrainLine {
                who: record.map(|r| r.who.clone()).filter(|w| !w.is_empty()),
                reason: record.and_then(|r| r.reason.clone()),
                expires: record.and_then(|r| r.expires),
                subject,
            }
        })
        .collect();
    let now = std::time::SystemTime::now();
    let (answers, answers_window) = s.history.answers_since(&s.app.metrics.answer_counts(), now);
    let html = page::render(&page::PageData {
        report: &report,
        config: &snapshot.config,
        outages: &outages,
        drains: &drains,
        history: &s.history,
        answers: &answers,
        answers_window,
        now,
    });
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Html(html),
    )
}

async fn live() -> impl IntoResponse {
    axum::Json(json!({ "live": true }))
}

async fn ready(State(s): State<AdminState>) -> Response {
    if s.app.health.first_round_done() {
        axum::Json(json!({ "ready": true })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "ready": false,
                "reason": "the first round of health probes is not done",
            })),
        )
            .into_response()
    }
}

async fn status(State(s): State<AdminState>) -> Response {
    let snapshot = s.app.snapshot.load();
    let report = StatusReport::build(
        &snapshot.config,
        s.app.reloader.config_path(),
        s.app.health.first_round_done(),
        &s.app.health.view(),
        &s.app.health.status(),
    );
    let mut doc = serde_json::to_value(&report).unwrap_or_default();
    doc["drains"] = serde_json::to_value(&s.app.health.drains().details).unwrap_or_default();
    if let Some(c) = &s.app.cluster {
        doc["fleet"] = serde_json::to_value(c.status()).unwrap_or_default();
    }
    axum::Json(doc).into_response()
}

/// `GET /metrics`: OpenMetrics when the `Accept` header asks for it, else the Prometheus text
/// format 0.0.4 (see [`crate::metrics::text`]).
async fn metrics(State(s): State<AdminState>, headers: HeaderMap) -> Result<Response, AdminError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = negotiate(accept);
    let mut body = String::new();
    s.app.metrics.flush_answers();
    prometheus_client::encoding::text::encode(&mut body, &s.registry)
        .map_err(|e| AdminError::Internal(format!("encoding metrics: {e}")))?;
    if format == Format::Prometheus {
        body = to_prometheus_text(&body);
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            ),
            (header::VARY, HeaderValue::from_static("accept")),
        ],
        body,
    )
        .into_response())
}

/// The optional body of drain and undrain.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    /// Why (logged, kept with the drain).
    reason: Option<String>,
    /// How long the drain lasts (`"30m"`, `"2h"`); without it, until undrained.
    expires: Option<String>,
    /// Who asks (`meridian ctl` sends `user@host`); default: the client's address.
    who: Option<String>,
}

fn parse_drain_body(body: &Bytes) -> Result<DrainBody, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DrainBody::default());
    }
    let body: DrainBody = serde_json::from_slice(body).map_err(|e| {
        AdminError::BadBody(format!(
            "expected JSON {{\"reason\": \"...\", \"expires\": \"30m\", \"who\": \"...\"}}: {e}"
        ))
    })?;
    if let Some(e) = &body.expires {
        match crate::config::parse_duration(e) {
            Ok(d) if !d.is_zero() => {}
            Ok(_) => {
                return Err(AdminError::BadBody(
                    "expires: must be greater than zero".into(),
                ));
            }
            Err(msg) => return Err(AdminError::BadBody(format!("expires: {msg}"))),
        }
    }
    Ok(body)
}

/// What an operator override names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    /// `/regions/{name}/...`: a region of the config.
    Region,
    /// `/targets/{address}/...`: one endpoint address, in every service.
    Target,
}

/// `POST /regions/{region}/drain|undrain`.
async fn region_override(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((region, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    set_override(s, peer, Subject::Region, region, &action, headers, body).await
}

/// `POST /targets/{address}/drain|undrain`.
async fn target_override(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((address, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    set_override(s, peer, Subject::Target, address, &action, headers, body).await
}

/// Drains or undrains `name` (a region or a target address): authorizes first, then checks
/// the action, the body and the name; answers `{"region"|"target", "drained", "changed"}`.
async fn set_override(
    s: AdminState,
    peer: SocketAddr,
    subject: Subject,
    name: String,
    action: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let kind = match subject {
        Subject::Region => "regions",
        Subject::Target => "targets",
    };
    let drain = match action {
        "drain" => true,
        "undrain" => false,
        _ => {
            return Err(AdminError::NotFound(format!(
                "POST /{kind}/{name}/{action}"
            )));
        }
    };
    authorize(&s, peer, &headers).await?;
    let body = parse_drain_body(&body)?;
    let health = &s.app.health;
    let (key, target) = match subject {
        Subject::Region => {
            // Undraining a region the config no longer has is allowed while it is still
            // drained (a leftover in the state file); otherwise an unknown name is a 404.
            let known = s.app.snapshot.load().config.region(&name).is_some();
            if !known && (drain || !health.drained_regions().contains(&name)) {
                return Err(AdminError::UnknownRegion(name));
            }
            ("region", DrainSubject::Region(name.clone()))
        }
        Subject::Target => {
            let ip: std::net::IpAddr = name.parse().map_err(|_| {
                AdminError::BadParameter(format!("target {name:?} is not an IP address"))
            })?;
            ("target", DrainSubject::Target(ip))
        }
    };
    let record = drain.then(|| {
        let now = std::time::SystemTime::now();
        Drain {
            who: body
                .who
                .clone()
                .unwrap_or_else(|| format!("admin client {peer}")),
            at: now,
            reason: body.reason.clone(),
            // Checked by parse_drain_body.
            expires: body
                .expires
                .as_deref()
                .and_then(|e| crate::config::parse_duration(e).ok())
                .map(|d| now + d),
            instance: s.app.cluster.as_ref().map(|c| c.instance().to_string()),
        }
    });
    let result = match &s.app.cluster {
        Some(cluster) => cluster
            .set_drain(&target, record.clone())
            .await
            .map_err(|e| match e {
                ClusterError::Unavailable(_) => {
                    warn!(%peer, error = %e, "admin: drain refused, the cluster store is unreachable");
                    AdminError::Unavailable(e.to_string())
                }
                ClusterError::Health(h) => health_error(h),
            }),
        None => health
            .set_drain(&target, record.clone())
            .await
            .map_err(health_error),
    };
    let changed = result?;
    info!(
        subject = key,
        name = %name,
        drained = drain,
        changed,
        %peer,
        who = record.as_ref().map_or("", |r| r.who.as_str()),
        reason = body.reason.as_deref().unwrap_or(""),
        expires = body.expires.as_deref().unwrap_or(""),
        "admin: {key} override set"
    );
    let mut answer = json!({ key: name, "drained": drain, "changed": changed });
    if let Some(c) = &s.app.cluster {
        answer["instance"] = json!(c.instance());
    }
    Ok(axum::Json(answer).into_response())
}

fn health_error(e: HealthError) -> AdminError {
    match e {
        HealthError::UnknownRegion(r) => AdminError::UnknownRegion(r),
        HealthError::UnknownTarget(a) => AdminError::UnknownTarget(a.to_string()),
        e => AdminError::Health(e),
    }
}

async fn reload(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    authorize(&s, peer, &headers).await?;
    let reloader = s.app.reloader.clone();
    // Reload reads and parses files: keep it off the async workers.
    let result = tokio::task::spawn_blocking(move || reloader.reload())
        .await
        .map_err(|e| AdminError::Internal(format!("reload task: {e}")))?;
    match result {
        Ok(()) => {
            let snapshot = s.app.snapshot.load();
            info!(%peer, "admin: configuration reloaded");
            let mut answer = json!({
                "reloaded": true,
                "config_file": s.app.reloader.config_path().display().to_string(),
                "services": snapshot.config.services.len(),
                "regions": snapshot.config.regions.len(),
            });
            if let Some(c) = &s.app.cluster {
                answer["instance"] = json!(c.instance());
            }
            Ok(axum::Json(answer).into_response())
        }
        Err(errors) => {
            for e in &errors.0 {
                warn!(error = %e, %peer, "reload failed, keeping the old configuration");
            }
            Err(AdminError::Reload(errors))
        }
    }
}

async fn not_found(method: Method, uri: Uri) -> AdminError {
    AdminError::NotFound(format!("{method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> AdminError {
    AdminError::MethodNotAllowed {
        method,
        path: uri.path().to_string(),
    }
}

/// Checks the bearer token of a mutating call (see the module docs for the rules).
async fn authorize(
    s: &AdminState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(), AdminError> {
    let token_file = s.app.snapshot.load().config.server.admin_token_file.clone();
    let Some(path) = token_file else {
        if may_mutate_without_token(s.local) {
            return Ok(());
        }
        warn!(%peer, "admin: mutating call refused, no token file configured");
        return Err(AdminError::NoToken(s.local));
    };
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| AdminError::TokenFile {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
    let expected = text.trim();
    if expected.is_empty() {
        return Err(AdminError::TokenFile {
            path: path.display().to_string(),
            message: "empty".to_string(),
        });
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .unwrap_or("");
    if is_same_token(given, expected) {
        Ok(())
    } else {
        warn!(%peer, "admin: mutating call refused, missing or wrong token");
        Err(AdminError::Unauthorized)
    }
}

/// Returns true when mutating calls need no token: the listener is reachable from this host
/// only (127.0.0.0/8 or ::1), so whoever can call it can already signal the process.
fn may_mutate_without_token(local: SocketAddr) -> bool {
    local.ip().is_loopback()
}

/// Compares tokens in constant time (for a given length: the length itself is not secret).
fn is_same_token(given: &str, expected: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// Feeds health transitions into the metrics, and transitions and
/// samples of the answer counters into the status page's `history`, until `token` is
/// cancelled.
async fn feed_metrics(
    metrics: Arc<Metrics>,
    history: Arc<history::History>,
    mut events: mpsc::UnboundedReceiver<TransitionEvent>,
    token: CancellationToken,
) {
    let mut sample = tokio::time::interval(history::SHARE_SAMPLE_INTERVAL);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = sample.tick() => {
                history.sample_answers(std::time::SystemTime::now(), metrics.answer_counts());
            }
            e = events.recv() => match e {
                Some(e) => {
                    metrics.count_transition(&e.address.to_string(), e.to.as_str());
                    history.record(&e);
                }
                None => return,
            },
        }
    }
}

/// Reads `meridian_probe_duration_seconds{check,region}` and `meridian_probes_total{check,result}`
/// at scrape time from the counts the probe tasks keep ([`crate::health::supervisor::ProbeStats`]).
#[derive(Debug)]
struct ProbeStatsCollector {
    health: crate::health::Health,
}

impl Collector for ProbeStatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = self.health.probe_stats();
        let mut metric = encoder.encode_descriptor(
            PROBE_DURATION_SECONDS,
            "Health probe duration in seconds, by check and region",
            None,
            MetricType::Histogram,
        )?;
        for (check, region, s) in &stats {
            let (sum, count, buckets) = s.histogram();
            let labels = [("check", &**check), ("region", region.as_str())];
            metric
                .encode_family(&labels)?
                .encode_histogram::<Vec<(String, String)>>(sum, count, &buckets, None)?;
        }
        // Summed over regions, in check order (`stats` is sorted by check).
        let mut by_check: Vec<(&str, [u64; 3])> = Vec::new();
        for (check, _, s) in &stats {
            let results = s.results();
            match by_check.last_mut() {
                Some((c, sums)) if *c == &**check => {
                    for (sum, n) in sums.iter_mut().zip(results) {
                        *sum += n;
                    }
                }
                _ => by_check.push((check, results)),
            }
        }
        let mut metric = encoder.encode_descriptor(
            PROBES_TOTAL.strip_suffix("_total").unwrap_or(PROBES_TOTAL),
            "Health probes run, by check and result (pass, fail, error)",
            None,
            MetricType::Counter,
        )?;
        for (check, sums) in by_check {
            for (result, n) in PROBE_RESULTS.iter().zip(sums) {
                let counter = prometheus_client::metrics::counter::ConstCounter::new(n);
                counter.encode(metric.encode_family(&[("check", check), ("result", result)])?)?;
            }
        }
        Ok(())
    }
}

/// Reads `meridian_probe_errors_total{reason}` at scrape time from the health subsystem's
/// counters (exact: nothing goes through a channel).
#[derive(Debug)]
struct ProbeErrorsCollector {
    health: crate::health::Health,
}

impl Collector for ProbeErrorsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            PROBE_ERRORS_TOTAL.strip_suffix("_total").unwrap_or(PROBE_ERRORS_TOTAL),
            "Probes that failed because of our own trouble, not the target's (no state changes on them), by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in self.health.probe_errors() {
            let counter = prometheus_client::metrics::counter::ConstCounter::new(count);
            counter.encode(metric.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(is_same_token("s3cret", "s3cret"));
        assert!(!is_same_token("s3cre", "s3cret"));
        assert!(!is_same_token("s3creT", "s3cret"));
        assert!(!is_same_token("", "s3cret"));
    }

    #[test]
    fn without_a_token_file_only_a_loopback_listener_may_mutate() {
        for ok in ["127.0.0.1:8053", "127.1.2.3:0", "[::1]:8053"] {
            assert!(may_mutate_without_token(ok.parse().unwrap()), "{ok}");
        }
        for refused in [
            "0.0.0.0:8053",
            "[::]:8053",
            "10.0.0.5:8053",
            "[2001:db8::1]:80",
        ] {
            assert!(
                !may_mutate_without_token(refused.parse().unwrap()),
                "{refused}"
            );
        }
    }

    #[test]
    fn errors_map_to_statuses_and_name_the_culprit() {
        assert_eq!(AdminError::Unauthorized.status(), StatusCode::UNAUTHORIZED);
        let e = AdminError::UnknownRegion("mars".into());
        assert_eq!(
            (e.status(), e.to_string().as_str()),
            (StatusCode::NOT_FOUND, "unknown region \"mars\"")
        );
        let e = AdminError::NoToken("0.0.0.0:8053".parse().unwrap());
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert!(e.to_string().contains("server.admin_token_file"));
        assert_eq!(
            parse_drain_body(&Bytes::from_static(b"{\"reason\": 1}"))
                .unwrap_err()
                .status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            parse_drain_body(&Bytes::from_static(b"{\"reason\": \"maintenance\"}"))
                .unwrap()
                .reason
                .as_deref(),
            Some("maintenance")
        );
        assert!(parse_drain_body(&Bytes::from_static(b" \n")).is_ok());
    }
}
