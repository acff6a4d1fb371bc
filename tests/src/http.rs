//! A plain HTTP client with a bounded time per request, for the daemon's API and other servers.

use std::time::Duration;

use serde_json::Value;

/// GET `url`: its status and its body, as JSON if it parses, else as a string.
pub fn http_get(url: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// GET `url`: its body as text.
pub fn http_get_text(url: &str) -> String {
    match http_get(url).1 {
        Value::String(s) => s,
        v => v.to_string(),
    }
}
