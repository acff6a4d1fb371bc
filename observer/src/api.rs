//! The HTTP API: JSON per process, Prometheus metrics, health.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::aggregate::Aggregator;
use crate::metrics::{self, KernelStatus};
use crate::views;

#[derive(Clone)]
pub struct AppState {
    pub agg: Arc<Mutex<Aggregator>>,
    pub kernel: Arc<Mutex<KernelStatus>>,
    /// False once the event loop has stopped.
    pub healthy: Arc<AtomicBool>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/processes", get(processes))
        .route("/api/v1/processes/{pid}", get(process))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint (see docs/api.md)") })
        .with_state(state)
}

async fn healthz(State(s): State<AppState>) -> Response {
    if s.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
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
        Some(p) => Json(views::process_detail(&agg, p)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no TCP activity seen for pid {pid}")),
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    let kernel = s.kernel.lock().expect("kernel status lock").clone();
    let body = metrics::render(&s.agg.lock().expect("aggregator lock"), &kernel);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}
