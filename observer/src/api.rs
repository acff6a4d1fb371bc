//! The HTTP API: JSON per process, Prometheus metrics, health.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use prometheus_client::registry::Registry;

use crate::clock::monotonic_ns;
use observer_core::aggregate::Aggregator;
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
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(views::ApiError { error: message.into() })).into_response()
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/processes", get(processes))
        .route("/api/v1/processes/{pid}", get(process))
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
    let list = views::process_list(&s.agg.lock().expect("aggregator lock"));
    Json(list).into_response()
}

async fn process(State(s): State<AppState>, Path(pid): Path<String>) -> Response {
    let Some(pid) = pid.parse::<u32>().ok().filter(|p| *p > 0) else {
        return error(StatusCode::BAD_REQUEST, format!("pid must be a positive integer, got {pid:?}"));
    };
    let agg = s.agg.lock().expect("aggregator lock");
    match agg.process(pid) {
        Some(p) => Json(views::process_detail(&agg, p, monotonic_ns())).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no TCP activity seen for pid {pid}")),
    }
}

/// OpenMetrics text, or the protobuf format (with native histograms) when asked for.
async fn metrics_text(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if metrics::wants_protobuf(accept) {
        ([(header::CONTENT_TYPE, metrics::PROTOBUF_CONTENT_TYPE)], metrics::render_protobuf(&s.registry))
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, metrics::TEXT_CONTENT_TYPE)], metrics::render_text(&s.registry)).into_response()
    }
}

/// Active findings: CLOSE_WAIT leaks.
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
