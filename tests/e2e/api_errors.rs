//! The API's errors: bad pids, unknown processes and unknown paths are answered in JSON with the
//! right status.

use observer_e2e::daemon::shared_daemon;

#[test]
fn api_errors_are_json() {
    let d = shared_daemon();
    for bad in ["abc", "-5", "0", "12x", "99999999999"] {
        let (status, body) = d.get(&format!("/api/v1/processes/{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("pid must be a positive integer"), "{body}");
    }
    let (status, body) = d.get(&format!("/api/v1/processes/{}", u32::MAX - 1));
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    let (status, body) = d.get("/api/v1/nothing");
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    let (status, body) = d.get("/healthz");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}
