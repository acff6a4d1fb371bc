//! The HTTP API: JSON per process, Prometheus metrics, health.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};

use crate::clock::monotonic_ns;
use observer_core::aggregate::Aggregator;
use observer_core::diagnosis::Thresholds;
use observer_core::kernel_status::KernelStatus;
use observer_core::metrics;
use observer_core::views;

#[derive(Clone)]
pub struct AppState {
    pub agg: Arc<Mutex<Aggregator>>,
    pub kernel: Arc<Mutex<KernelStatus>>,
    pub registry: Arc<Registry>,
    /// False once the event loop has stopped.
    pub healthy: Arc<AtomicBool>,
    pub thresholds: Arc<Thresholds>,
    /// Asks the event reader to read the I/O counters of open connections now.
    pub flush: mpsc::Sender<oneshot::Sender<()>>,
}

/// How long a query waits for the counters of open connections before it answers without.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl AppState {
    /// Bring the requests and bytes of open connections up to date (the kernel keeps them in
    /// its socket table, the periodic flush reads them every few seconds): what a query
    /// returns is then as of the query.
    async fn refresh(&self) {
        let (tx, rx) = oneshot::channel();
        if self.flush.send(tx).await.is_ok() && tokio::time::timeout(FLUSH_WAIT, rx).await.is_err() {
            log::debug!("the I/O counters of open connections were not read within {FLUSH_WAIT:?}");
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(views::ApiError { error: message.into() })).into_response()
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/processes", get(processes))
        .route("/api/v1/processes/{pid}", get(process))
        .route("/api/v1/processes/{pid}/diagnosis", get(diagnosis))
        .route("/api/v1/findings", get(findings))
        .route("/api/v1/status", get(status))
        .route("/api/v1/alerts", get(alerts))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint (see docs/api.md)") })
        .with_state(state)
}

async fn healthz(State(s): State<AppState>) -> Response {
    if s.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, Json(views::Health::ok())).into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "the kernel event reader has stopped")
    }
}

async fn processes(State(s): State<AppState>) -> Response {
    s.refresh().await;
    let list = views::process_list(&s.agg.lock().expect("aggregator lock"));
    Json(list).into_response()
}

/// The pid of a path, or the message of a 400.
fn parse_pid(pid: &str) -> Result<u32, String> {
    pid.parse::<u32>().ok().filter(|p| *p > 0).ok_or_else(|| format!("pid must be a positive integer, got {pid:?}"))
}

fn no_such_process(pid: u32) -> Response {
    error(StatusCode::NOT_FOUND, format!("no TCP activity seen for pid {pid}"))
}

async fn process(State(s): State<AppState>, Path(pid): Path<String>) -> Response {
    let pid = match parse_pid(&pid) {
        Ok(pid) => pid,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    s.refresh().await;
    let agg = s.agg.lock().expect("aggregator lock");
    match agg.process(pid) {
        Some(p) => Json(views::process_detail(&agg, p, monotonic_ns())).into_response(),
        None => no_such_process(pid),
    }
}

/// The connection-pool failure patterns of one process, with their evidence and fix.
async fn diagnosis(State(s): State<AppState>, Path(pid): Path<String>) -> Response {
    let pid = match parse_pid(&pid) {
        Ok(pid) => pid,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    s.refresh().await;
    let agg = s.agg.lock().expect("aggregator lock");
    match agg.process(pid) {
        Some(p) => Json(views::diagnosis(&agg, p, &s.thresholds, monotonic_ns())).into_response(),
        None => no_such_process(pid),
    }
}

/// Every process's findings.
async fn findings(State(s): State<AppState>) -> Response {
    s.refresh().await;
    let agg = s.agg.lock().expect("aggregator lock");
    Json(views::findings(&agg, &s.thresholds, monotonic_ns())).into_response()
}

/// OpenMetrics text, or the protobuf format (with native histograms) when asked for.
async fn metrics_text(State(s): State<AppState>, headers: HeaderMap) -> Response {
    s.refresh().await;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if metrics::wants_protobuf(accept) {
        ([(header::CONTENT_TYPE, metrics::PROTOBUF_CONTENT_TYPE)], metrics::render_protobuf(&s.registry))
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, metrics::TEXT_CONTENT_TYPE)], metrics::render_text(&s.registry)).into_response()
    }
}

/// Active CLOSE_WAIT leak alerts.
async fn alerts(State(s): State<AppState>) -> Response {
    let now_ns = monotonic_ns();
    let findings = s.agg.lock().expect("aggregator lock").alerts(now_ns);
    Json(views::alerts(&findings, now_ns, std::time::SystemTime::now())).into_response()
}

/// The daemon itself: version, which optional features work, kernel-side counters.
async fn status(State(s): State<AppState>) -> Response {
    let kernel = s.kernel.lock().expect("kernel status lock").clone();
    let doc = views::status(env!("CARGO_PKG_VERSION"), &kernel, &s.agg.lock().expect("aggregator lock"));
    Json(doc).into_response()
}
