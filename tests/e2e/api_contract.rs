//! docs/openapi.json is true to the code: real responses of a running daemon validate against
//! it (its schemas forbid undocumented fields), and every documented status is the one served.

use std::time::Duration;

use observer_e2e::daemon::Daemon;
use observer_e2e::document::num;
use observer_e2e::net::free_port;
use observer_e2e::openapi::{check_openapi, openapi};
use observer_e2e::paths::workspace_root;
use observer_e2e::processes::Proc;
use observer_e2e::scenarios::{client, http_server};
use serde_json::{Value, json};

fn check(doc: &Value, path: &str, status: u16, body: &Value) {
    check_openapi(doc, path, status, body);
}

#[test]
fn responses_match_the_openapi_document() {
    let doc = openapi();
    let d = Daemon::start(&[]);
    // Something in every part of the documents: an inbound listener with accepted connections,
    // an outbound peer with connections, TIME_WAIT, refused connects and socket errors.
    let (server, port) = http_server("127.0.0.1", "keepalive");
    let (c1, r1) = client(None, &["requests_no_session", &format!("http://127.0.0.1:{port}/"), "3"]);
    let closed = free_port();
    let (c2, r2) = client(None, &["retry_refused", &format!("http://127.0.0.1:{closed}/"), "1"]);
    let pid1 = r1["pid"].as_u64().unwrap() as u32;
    let pid2 = r2["pid"].as_u64().unwrap() as u32;
    d.wait_process(pid1, Duration::from_secs(10), "3 connections", |v| num(v, "connections_opened") == 3);
    d.wait_process(pid2, Duration::from_secs(10), "socket errors", |v| {
        v["outbound"][0]["socket_errors"]["ECONNREFUSED"] == 2
    });
    d.wait_process(server.pid(), Duration::from_secs(10), "3 accepted", |v| num(v, "connections_accepted") == 3);

    for pid in [pid1, pid2, server.pid()] {
        let (status, body) = d.get(&format!("/api/v1/processes/{pid}"));
        assert_eq!(status, 200);
        check(&doc, "/api/v1/processes/{pid}", status, &body);
    }
    let (status, body) = d.get("/api/v1/processes");
    check(&doc, "/api/v1/processes", status, &body);
    assert!(body.as_array().unwrap().len() >= 3);
    for (path, expected) in [("abc", 400), ("4294967294", 404)] {
        let (status, body) = d.get(&format!("/api/v1/processes/{path}"));
        assert_eq!(status, expected);
        check(&doc, "/api/v1/processes/{pid}", status, &body);
    }
    let (status, body) = d.get("/healthz");
    check(&doc, "/healthz", status, &body);
    let (status, body) = d.get("/api/v1/status");
    check(&doc, "/api/v1/status", status, &body);
    assert_eq!(body["features"]["requests"], true, "{body}");
    let (status, body) = d.get("/api/v1/alerts");
    check(&doc, "/api/v1/alerts", status, &body);

    // Every documented path is served; /metrics is text.
    for path in doc["paths"].as_object().unwrap().keys() {
        let url = path.replace("{pid}", &pid1.to_string());
        let (status, _) = d.get(&url);
        assert_eq!(status, 200, "{url}");
    }
    // Every metric family served is documented in docs/metrics.md with its type (by the name
    // PromQL uses: counters end in _total), and every documented one is served.
    let text = d.metrics();
    let served: std::collections::BTreeSet<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let mut p = l.split_whitespace();
            let (name, ty) = (p.next().unwrap(), p.next().unwrap());
            let name = if ty == "counter" { format!("{name}_total") } else { name.to_string() };
            (name, ty.to_string())
        })
        .collect();
    let metrics_md = std::fs::read_to_string(workspace_root().join("docs/metrics.md")).unwrap();
    let documented: std::collections::BTreeSet<(String, String)> = metrics_md
        .lines()
        .filter_map(|l| l.strip_prefix("| `observer_"))
        .map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            (format!("observer_{}", cols[0].trim_end_matches('`')), cols[1].to_string())
        })
        .collect();
    assert_eq!(served, documented, "docs/metrics.md's table and /metrics disagree");
    drop((c1, c2));
}

/// The schema is strict enough to catch drift: an extra field or a missing state fails.
#[test]
fn the_document_rejects_undocumented_fields() {
    let doc = openapi();
    let states = [
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE_WAIT",
        "LAST_ACK",
        "CLOSING",
        "LISTEN",
    ];
    let sockets: serde_json::Map<String, Value> = states.iter().map(|s| (s.to_string(), json!(0))).collect();
    let good = json!([{ "pid": 1, "comm": "x", "container_id": null, "pod_uid": null, "exited": false, "sockets": sockets,
        "connections_opened": 0, "connections_accepted": 0 }]);
    check(&doc, "/api/v1/processes", 200, &good);
    let mut extra = good.clone();
    extra[0]["surprise"] = json!(1);
    let mut missing = good.clone();
    missing[0]["sockets"].as_object_mut().unwrap().remove("CLOSE_WAIT");
    for bad in [extra, missing] {
        let r = std::panic::catch_unwind(|| check(&doc, "/api/v1/processes", 200, &bad));
        assert!(r.is_err(), "accepted {bad}");
    }
}

/// A process in a Kubernetes pod's container cgroup (containerd, systemd driver, cgroup v2, made
/// here by hand) carries its container id and pod UID in the API and in the metrics labels.
#[test]
fn a_process_in_a_pod_carries_its_container_and_pod() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let Some(root) = mounts.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|f| f[2] == "cgroup2")
    else {
        panic!("no cgroup v2 hierarchy mounted: {mounts}");
    };
    let root = std::path::PathBuf::from(root[1]);
    let uid = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
    let id = "c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789";
    let slice = root.join("kubepods.slice/kubepods-besteffort.slice");
    let pod = slice.join(format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")));
    let scope = pod.join(format!("cri-containerd-{id}.scope"));
    std::fs::create_dir_all(&scope).expect("creating a cgroup");

    let doc = openapi();
    let d = Daemon::start(&[]);
    let (_server, port) = http_server("127.0.0.1", "keepalive");
    // Moved into the cgroup before it touches the network (the daemon reads the cgroup of a
    // process when it first sees it).
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        &format!(
            "import socket, sys\nsys.stdin.readline()\ns = socket.create_connection(('127.0.0.1', {port}))\n\
             print('connected', flush=True)\nsys.stdin.readline()\n"
        ),
    ]);
    let mut p = Proc::spawn(cmd);
    std::fs::write(scope.join("cgroup.procs"), p.pid().to_string()).expect("moving the process");
    assert_eq!(p.command("go"), "connected");
    let v = d.wait_process(p.pid(), Duration::from_secs(10), "its container", |v| v["pod_uid"] == uid);
    assert_eq!(v["container_id"], id);
    assert_eq!(num(&v, "sockets/ESTABLISHED"), 1);
    check(&doc, "/api/v1/processes/{pid}", 200, &v);
    let (_, list) = d.get("/api/v1/processes");
    let entry = list.as_array().unwrap().iter().find(|e| e["pid"] == p.pid()).unwrap().clone();
    assert_eq!((entry["container_id"].clone(), entry["pod_uid"].clone()), (json!(id), json!(uid)));
    let text = d.metrics();
    let line = text
        .lines()
        .find(|l| l.starts_with("observer_sockets{") && l.contains(&format!("pid=\"{}\"", p.pid())))
        .expect("its sockets in the metrics");
    assert!(line.contains(&format!("pod_uid=\"{uid}\"")) && line.contains(&format!("container_id=\"{id}\"")), "{line}");
    // A host process has neither.
    let (_, server) = d.get(&format!("/api/v1/processes/{}", _server.pid()));
    assert_eq!((server["container_id"].clone(), server["pod_uid"].clone()), (Value::Null, Value::Null));

    let pid = p.pid();
    drop(p);
    // The cgroup can go once the process is gone.
    let procs = scope.join("cgroup.procs");
    for _ in 0..100 {
        if std::fs::read_to_string(&procs).map_or(true, |s| !s.contains(&pid.to_string())) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for dir in [&scope, &pod, &slice, &root.join("kubepods.slice")] {
        let _ = std::fs::remove_dir(dir);
    }
}
