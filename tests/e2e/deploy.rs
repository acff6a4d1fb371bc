//! The deployment files: the Kubernetes manifests are valid against the Kubernetes OpenAPI schema
//! (and the Prometheus Operator's, for its resources), the DaemonSet's privileges are consistent
//! with docs/deploy.md and enough for the daemon, and the Grafana dashboard and the alert rules only
//! query metrics the daemon exports.
//!
//! Manifests are validated with the PyPI package kubernetes-validate (`cargo xtask test` installs
//! it), Prometheus Operator resources with the operator's typed models from PyPI
//! (tests/scenarios/check_crds.py).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use observer_e2e::daemon::{Daemon, shared_daemon};
use observer_e2e::document::{inbound, num, outbound};
use observer_e2e::http::http_get;
use observer_e2e::namespaces::Netns;
use observer_e2e::net::free_port;
use observer_e2e::paths::{scenario, workspace_root};
use observer_e2e::processes::{Proc, sh};
use observer_e2e::scenarios::{client, http_server, http_server_in};
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use serde_json::Value;

fn deploy_path(rel: &str) -> PathBuf {
    workspace_root().join("deploy").join(rel)
}

/// The `.yaml` files directly in `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// The documents of a YAML file, as JSON (through python3's PyYAML, which kubernetes-validate
/// brings along).
fn yaml_docs(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))";
    let out = sh(&["python3", "-c", script, &path.to_string_lossy()]);
    match serde_json::from_str(&out).expect("JSON from python3") {
        Value::Array(docs) => docs,
        v => panic!("{}: not a list of documents: {v}", path.display()),
    }
}

/// Run a command; (succeeded, stdout and stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `kubernetes-validate --strict` (unknown fields are errors) against the newest Kubernetes
/// version the package knows.
fn kubernetes_validate(files: &[PathBuf]) -> (bool, String) {
    run(Command::new("python3").args(["-m", "kubernetes_validate", "--strict"]).args(files))
}

/// The Prometheus Operator's resources, checked against its models.
fn check_crds(files: &[PathBuf]) -> (bool, String) {
    run(Command::new("python3").arg(scenario("check_crds.py")).args(files))
}

fn kind_name(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?").to_lowercase(),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn is_operator_resource(doc: &Value) -> bool {
    doc["apiVersion"].as_str().is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
}

/// Every document of every manifest in deploy/kubernetes (not its subdirectories, which
/// `kubectl apply -f deploy/kubernetes/` does not read either).
fn manifests() -> Vec<(PathBuf, Value)> {
    yaml_files(&deploy_path("kubernetes"))
        .into_iter()
        .flat_map(|f| yaml_docs(&f).into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

fn find<'a>(docs: &'a [(PathBuf, Value)], kind: &str) -> &'a Value {
    &docs.iter().find(|(_, d)| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes")).1
}

/// The subset of a strategic-merge patch the patches in deploy/kubernetes/patches use: objects
/// merge key by key, `null` deletes, lists of named objects (containers, volumes, env) merge by
/// name, other lists are replaced.
fn strategic_merge(base: &Value, patch: &Value) -> Value {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            let mut out = b.clone();
            for (k, pv) in p {
                if pv.is_null() {
                    out.remove(k);
                } else {
                    let merged = out.get(k).map_or_else(|| pv.clone(), |bv| strategic_merge(bv, pv));
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        (Value::Array(b), Value::Array(p)) if !p.is_empty() && p.iter().all(|v| v["name"].is_string()) => {
            let mut out = b.clone();
            for pv in p {
                match out.iter_mut().find(|bv| bv["name"] == pv["name"]) {
                    Some(bv) => *bv = strategic_merge(bv, pv),
                    None => out.push(pv.clone()),
                }
            }
            Value::Array(out)
        }
        _ => patch.clone(),
    }
}

fn temp_json(name: &str, v: &Value) -> PathBuf {
    let path = std::env::temp_dir().join(format!("observer-deploy-{}-{name}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string_pretty(v).unwrap()).unwrap();
    path
}

fn container(ds: &Value) -> &Value {
    let containers = ds["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    containers.iter().find(|c| c["name"] == "observer").expect("container observer")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Every manifest passes kubernetes-validate --strict; the PodMonitor passes the Prometheus
/// Operator's models; each patch, applied to the DaemonSet, gives a valid DaemonSet. And the
/// validators do reject a broken manifest (so that passing means something).
#[test]
fn the_kubernetes_manifests_are_valid() {
    let files = yaml_files(&deploy_path("kubernetes"));
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["daemonset.yaml", "service.yaml", "podmonitor.yaml", "networkpolicy.yaml"] {
        assert!(names.iter().any(|n| n == expected), "deploy/kubernetes/{expected} is missing: {names:?}");
    }
    let docs = manifests();
    let (ok, out) = kubernetes_validate(&files);
    assert!(ok, "kubernetes-validate --strict failed:\n{out}");
    let mut operator = 0;
    for (file, doc) in &docs {
        if is_operator_resource(doc) {
            operator += 1;
            continue;
        }
        // A kind without a schema is only a warning to kubernetes-validate: require a pass.
        let passed = format!("{} passed for resource {}", file.display(), kind_name(doc));
        assert!(out.contains(&passed), "no {passed:?} in:\n{out}");
    }
    assert!(operator >= 1, "no Prometheus Operator resource (PodMonitor/ServiceMonitor) in deploy/kubernetes");
    let (ok, out) = check_crds(&files);
    assert!(ok, "Prometheus Operator resources:\n{out}");
    for (_, doc) in docs.iter().filter(|(_, d)| is_operator_resource(d)) {
        assert!(out.contains(&format!("OK {}", kind_name(doc))), "{} not checked:\n{out}", kind_name(doc));
    }

    // The patches, applied as `kubectl patch --patch-file` would.
    let ds = find(&docs, "DaemonSet");
    let patches = yaml_files(&deploy_path("kubernetes/patches"));
    assert!(patches.iter().any(|p| p.ends_with("privileged-fallback.yaml")), "{patches:?}");
    for patch in &patches {
        let [p] = yaml_docs(patch).try_into().unwrap_or_else(|_| panic!("{}: one document", patch.display()));
        let patched = strategic_merge(ds, &p);
        let name = patch.file_stem().unwrap().to_string_lossy().into_owned();
        let file = temp_json(&name, &patched);
        let (ok, out) = kubernetes_validate(std::slice::from_ref(&file));
        assert!(ok && out.contains("passed for resource daemonset/observer"), "{} applied:\n{out}", patch.display());
        std::fs::remove_file(&file).unwrap();
        // What the API server checks beyond the schema.
        let sc = &container(&patched)["securityContext"];
        if sc["privileged"] == true {
            assert_ne!(
                sc["allowPrivilegeEscalation"],
                false,
                "{}: privileged needs escalation allowed",
                patch.display()
            );
        }
        // A patch replaces the whole `add` list: it must keep what the daemon cannot start without
        // (privileged has every capability).
        if sc["privileged"] != true {
            let add = strings(&sc["capabilities"]["add"]);
            for needed in ["BPF", "PERFMON"] {
                assert!(add.iter().any(|c| c == needed), "{} drops CAP_{needed}: {add:?}", patch.display());
            }
        }
    }
    // The minimal patch: exactly CAP_BPF and CAP_PERFMON, back under the runtime's AppArmor profile.
    assert!(patches.iter().any(|p| p.ends_with("minimal.yaml")), "{patches:?}");
    let [p] = yaml_docs(&deploy_path("kubernetes/patches/minimal.yaml")).try_into().expect("one document");
    let minimal = strategic_merge(ds, &p);
    let sc = &container(&minimal)["securityContext"];
    let mut add = strings(&sc["capabilities"]["add"]);
    add.sort();
    assert_eq!(add, ["BPF", "PERFMON"], "patches/minimal.yaml");
    assert!(sc["appArmorProfile"].is_null(), "patches/minimal.yaml keeps the AppArmor exception: {sc}");
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);

    // The validators reject mistakes: an unknown field in the DaemonSet, a malformed interval in
    // the PodMonitor.
    let mut bad = ds.clone();
    bad["spec"]["template"]["spec"]["hostPId"] = Value::Bool(true);
    let file = temp_json("bad-daemonset", &bad);
    let (ok, out) = kubernetes_validate(std::slice::from_ref(&file));
    assert!(!ok && out.contains("hostPId"), "an unknown field passed:\n{out}");
    std::fs::remove_file(&file).unwrap();
    let mut bad = find(&docs, "PodMonitor").clone();
    bad["spec"]["podMetricsEndpoints"][0]["interval"] = Value::String("fifteen seconds".into());
    bad["spec"]["podMetricsEndpoints"][0]["honorLabelz"] = Value::Bool(true);
    let file = temp_json("bad-podmonitor", &bad);
    let (ok, out) = check_crds(std::slice::from_ref(&file));
    assert!(!ok && out.contains("interval"), "a malformed PodMonitor passed:\n{out}");
    bad["spec"]["podMetricsEndpoints"][0]["interval"] = Value::String("15s".into());
    std::fs::write(&file, serde_json::to_string(&bad).unwrap()).unwrap();
    let (ok, out) = check_crds(std::slice::from_ref(&file));
    assert!(!ok && out.contains("honorLabelz"), "an unknown PodMonitor field passed:\n{out}");
    std::fs::remove_file(&file).unwrap();
}

/// The DaemonSet is what docs/deploy.md says: host PID namespace, its own network namespace, a
/// read-only root, no privilege escalation, every capability dropped but the documented ones,
/// read-only host mounts, probes and Service, PodMonitor and NetworkPolicy on the API's port.
#[test]
fn the_daemonset_matches_the_documented_privileges() {
    let docs = manifests();
    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_object().expect("selector") {
        assert_eq!(&labels[k], v, "the selector must match the pod template");
    }
    assert_eq!(pod["hostPID"], true, "the daemon must see the host's processes");
    assert_ne!(pod["hostNetwork"], true, "the API would listen on the node's interfaces");
    assert!(
        pod["tolerations"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["operator"] == "Exists" && t["key"].is_null()))
    );
    let c = container(ds);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_ne!(sc["privileged"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let added = strings(&sc["capabilities"]["add"]);
    let mut sorted = added.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"],
        "the capabilities of docs/deploy.md, with which every feature works"
    );
    // Reading other processes' /proc/<pid>/fd and ns/net: the runtime's default AppArmor profile
    // would refuse it for processes outside that profile.
    assert_eq!(sc["appArmorProfile"]["type"], "Unconfined", "{sc}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{sc}");

    // The API's port: declared once, probed, listened on, and the one the other objects use.
    let ports = c["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["name"], "http-metrics");
    assert_eq!(ports[0]["containerPort"], 9645);
    assert!(ports[0]["hostPort"].is_null(), "no hostPort: the API stays off the node's interfaces");
    let listen =
        c["env"].as_array().and_then(|e| e.iter().find(|e| e["name"] == "OBSERVER_LISTEN")).expect("OBSERVER_LISTEN");
    assert!(listen["value"].as_str().unwrap().ends_with(":9645"), "{listen}");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert!(get["port"] == "http-metrics" || get["port"] == 9645, "{probe}: {get}");
    }
    for r in ["requests", "limits"] {
        assert!(c["resources"][r]["cpu"].is_string() && c["resources"][r]["memory"].is_string(), "resources.{r}");
    }

    // Host mounts: read-only, and documented.
    let deploy_md = std::fs::read_to_string(workspace_root().join("docs/deploy.md")).expect("docs/deploy.md");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    for m in mounts {
        let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap_or_else(|| panic!("no volume for {m}"));
        let host = v["hostPath"]["path"].as_str().unwrap_or_else(|| panic!("{v}: only hostPath volumes expected"));
        assert_eq!(m["readOnly"], true, "{host} must be mounted read-only");
        assert!(deploy_md.contains(&format!("`{host}`")), "docs/deploy.md does not explain the {host} mount");
    }
    // A row of the privileges table for every capability and for the AppArmor exception.
    for cap in &added {
        assert!(deploy_md.contains(&format!("\n| `CAP_{cap}` |")), "docs/deploy.md does not explain CAP_{cap}");
    }
    assert!(deploy_md.contains("\n| AppArmor `Unconfined`"), "docs/deploy.md does not explain the AppArmor profile");
    for word in
        ["hostPID", "hostNetwork", "readOnlyRootFilesystem", "privileged-fallback.yaml", "minimal.yaml", "port-forward"]
    {
        assert!(deploy_md.contains(word), "docs/deploy.md does not mention {word}");
    }

    // Service, PodMonitor and NetworkPolicy: the same pods, the same port.
    let svc = find(&docs, "Service");
    for (k, v) in svc["spec"]["selector"].as_object().expect("service selector") {
        assert_eq!(&labels[k], v, "the Service must select the DaemonSet's pods");
    }
    let sp = &svc["spec"]["ports"][0];
    assert_eq!((sp["name"].as_str(), sp["port"].as_u64()), (Some("http-metrics"), Some(9645)));
    assert!(sp["targetPort"] == "http-metrics" || sp["targetPort"] == 9645);
    let pm = find(&docs, "PodMonitor");
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().expect("podmonitor selector") {
        assert_eq!(&labels[k], v, "the PodMonitor must select the DaemonSet's pods");
    }
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "http-metrics");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["path"], "/metrics");
    let np = find(&docs, "NetworkPolicy");
    for (k, v) in np["spec"]["podSelector"]["matchLabels"].as_object().expect("policy selector") {
        assert_eq!(&labels[k], v, "the NetworkPolicy must select the DaemonSet's pods");
    }
    let rule = &np["spec"]["ingress"][0];
    assert!(rule["ports"][0]["port"] == "http-metrics" || rule["ports"][0]["port"] == 9645, "{rule}");
    assert!(rule["from"].as_array().is_some_and(|f| !f.is_empty()), "ingress from anywhere: {rule}");
    // Every namespaced object in the DaemonSet's namespace.
    for (file, doc) in &docs {
        if doc["kind"] != "Namespace" {
            assert_eq!(doc["metadata"]["namespace"], "observer", "{}: {}", file.display(), kind_name(doc));
        }
    }
}

fn daemonset_capabilities() -> Vec<String> {
    let docs = manifests();
    strings(&container(find(&docs, "DaemonSet"))["securityContext"]["capabilities"]["add"])
}

/// The capabilities the DaemonSet has with a patch of deploy/kubernetes/patches applied.
fn patched_capabilities(patch: &str) -> Vec<String> {
    let docs = manifests();
    let [p] = yaml_docs(&deploy_path(&format!("kubernetes/patches/{patch}"))).try_into().expect("one document");
    strings(&container(&strategic_merge(find(&docs, "DaemonSet"), &p))["securityContext"]["capabilities"]["add"])
}

/// The daemon as root with exactly `caps`, like a container whose capabilities were all dropped
/// but these; checks that it has them. TIME_WAIT is reconciled every second.
fn daemon_with(caps: &[String]) -> Daemon {
    let list: Vec<String> = caps.iter().map(|c| format!("+{}", c.to_lowercase())).collect();
    let bounding = format!("--bounding-set=-all,{}", list.join(","));
    let d = Daemon::start_wrapped(&["setpriv", &bounding, "--inh-caps=-all"], &["--reconcile-interval", "1"]);
    let bit = |c: &str| match c {
        "DAC_READ_SEARCH" => 2,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("add CAP_{other}'s number here"),
    };
    let expected = caps.iter().fold(0u64, |m, c| m | 1 << bit(c));
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let eff =
        status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(|v| u64::from_str_radix(v.trim(), 16).unwrap());
    assert_eq!(eff, Some(expected), "the daemon should run with exactly {caps:?}");
    let (_, st) = d.get("/api/v1/status");
    for (feature, on) in st["features"].as_object().expect("features") {
        assert_eq!(on, &Value::Bool(true), "feature {feature} degraded with {caps:?}: {st}\n{}", d.log_text());
    }
    d
}

/// A Redis server of another user (nobody) in network namespace `ns` (as in a pod of its own),
/// listening on its loopback.
fn redis_in(ns: &Netns) -> (Proc, String) {
    let port = free_port().to_string();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["redis-server", "--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--dir", "/tmp"]);
    let p = Proc::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ns.exec(&["ss", "-Htln", "sport", &format!(":{port}")]).trim().is_empty() {
        assert!(Instant::now() < deadline, "redis-server did not listen on {port} in {}", ns.name);
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, format!("127.0.0.1:{port}"))
}

fn listening(doc: &Value, listener: &str) -> bool {
    inbound(doc, listener).is_some_and(|i| num(i, "sockets/LISTEN") == 1)
}

/// TIME_WAIT of a client in a network namespace of its own (as in a pod) whose kernel keeps only
/// 5 timewait entries: 10 connections closed by the client, 5 TIME_WAIT in the kernel's table.
/// Returns the client (alive, so that the namespace can be entered through it), its pid and the
/// server's address, once the daemon has charged the 10 connections.
fn time_wait_in_a_pod(d: &Daemon, ns: &Netns) -> (Proc, Proc, u32, String) {
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_max_tw_buckets=5"]);
    let (server, port) = http_server_in(Some(&ns.name), "127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = client(Some(&ns.name), &["requests_no_session", &format!("http://{remote}/"), "10"]);
    let pid = result["pid"].as_u64().unwrap() as u32;
    let in_ns = ns.exec(&["ss", "-Htan", "state", "time-wait", "dst", &remote]);
    assert_eq!(in_ns.lines().filter(|l| !l.trim().is_empty()).count(), 5, "the kernel's table: {in_ns}");
    d.wait_process(pid, Duration::from_secs(10), "10 connections closed by the client", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "connections_opened") == 10 && num(o, "closed_by_local") == 10)
    });
    (server, c, pid, remote)
}

fn time_wait(d: &Daemon, pid: u32, remote: &str) -> u64 {
    d.process(pid).and_then(|doc| outbound(&doc, remote).map(|o| num(o, "sockets/TIME_WAIT"))).unwrap_or(0)
}

/// The start-up warning about what the snapshot could not look into.
const DENIED: &str = "permission denied looking into other processes and network namespaces";

/// The DaemonSet's capabilities, and nothing else, are enough for every feature with the processes
/// of other users in other network namespaces (pods): a listener opened before the daemon started
/// is charged to its process (the start-up snapshot), one opened after too (the kernel events), and
/// TIME_WAIT is reconciled with the namespace's own table (5 of 10, as `ss` shows). Each of
/// CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH and CAP_SYS_ADMIN is needed for the older listener, and the
/// start-up warning names the one missing. With patches/minimal.yaml's capabilities, what
/// docs/deploy.md says degrades does: the older listener is not attributed, TIME_WAIT stays derived
/// (10), and the warning says so, once.
#[test]
fn the_daemonsets_capabilities_are_enough() {
    let ns = Netns::new("deploy");
    let (older, older_listener) = redis_in(&ns);
    let caps = daemonset_capabilities();
    let d = daemon_with(&caps);
    d.wait_process(older.pid(), Duration::from_secs(10), "the older listener, from the start-up snapshot", |doc| {
        listening(doc, &older_listener)
    });
    let (newer, newer_listener) = redis_in(&ns);
    let doc =
        d.wait_process(newer.pid(), Duration::from_secs(10), "the new listener", |doc| listening(doc, &newer_listener));
    assert_eq!(doc["comm"], "redis-server", "{doc}");
    let tw_ns = Netns::new("deploy-tw");
    let (_server, c, pid, remote) = time_wait_in_a_pod(&d, &tw_ns);
    let deadline = Instant::now() + Duration::from_secs(10);
    while time_wait(&d, pid, &remote) != 5 {
        assert!(
            Instant::now() < deadline,
            "TIME_WAIT not reconciled in the pod's namespace: {} instead of the kernel's 5",
            time_wait(&d, pid, &remote)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing missing (a security module of the test machine may still refuse some process).
    assert!(!d.log_text().contains("missing CAP_"), "{}", d.log_text());
    drop((c, d));

    for needed in ["SYS_PTRACE", "DAC_READ_SEARCH", "SYS_ADMIN"] {
        assert!(caps.iter().any(|c| c == needed), "CAP_{needed} is not in the DaemonSet: {caps:?}");
        let fewer: Vec<String> = caps.iter().filter(|c| *c != needed).cloned().collect();
        let d = daemon_with(&fewer);
        assert!(
            d.process(older.pid()).is_none_or(|doc| !listening(&doc, &older_listener)),
            "the snapshot worked without CAP_{needed}: it is not needed"
        );
        let log = d.log_text();
        assert!(log.contains(DENIED) && log.contains(&format!("missing CAP_{needed}.")), "{log}");
    }

    let minimal = patched_capabilities("minimal.yaml");
    let d = daemon_with(&minimal);
    let (newer, newer_listener) = redis_in(&ns);
    d.wait_process(newer.pid(), Duration::from_secs(10), "the new listener", |doc| listening(doc, &newer_listener));
    assert!(
        d.process(older.pid()).is_none_or(|doc| !listening(&doc, &older_listener)),
        "attributed from the snapshot with patches/minimal.yaml: docs/deploy.md is wrong"
    );
    let tw_ns = Netns::new("deploy-tw-min");
    let (_server, c, pid, remote) = time_wait_in_a_pod(&d, &tw_ns);
    // Derived from the closes and kept 60 s: several reconciliation rounds later, still 10.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(time_wait(&d, pid, &remote), 10, "TIME_WAIT reconciled with patches/minimal.yaml");
    let log = d.log_text();
    assert_eq!(log.matches(DENIED).count(), 1, "one warning: {log}");
    assert!(
        log.contains("missing CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN.")
            && log.contains("not attributed")
            && log.contains("TIME_WAIT"),
        "{log}"
    );
    drop(c);
}

/// Names a scrape exports: from each `# TYPE` line (a counter `x` is queried as `x_total`, a
/// histogram `x` as `x_bucket`, `x_sum`, `x_count`, or `x` as a native histogram), whether or not
/// it has series now, and every sample's name.
fn exported_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["", "_bucket", "_sum", "_count"],
                "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Grafana's variables replaced so that the query is PromQL: its range variables by a duration,
/// dashboard variables (which the dashboard only uses inside label matchers) by `value`.
fn grafana_expand(q: &str, value: &str) -> String {
    let mut s = q.to_string();
    for v in ["${__rate_interval}", "$__rate_interval", "${__interval}", "$__interval", "${__range}", "$__range"] {
        s = s.replace(v, "5m");
    }
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
            }
        } else {
            while chars.peek().is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_') {
                chars.next();
            }
        }
        out.push_str(value);
    }
    out
}

fn grafana_to_promql(q: &str) -> String {
    grafana_expand(q, "x")
}

/// The metric name of a selector: its name, or its `__name__="..."` matcher.
fn selector_name(name: &Option<String>, matchers: &promql_parser::label::Matchers) -> Result<String, String> {
    let by_matcher = matchers.matchers.iter().find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal));
    match (name, by_matcher) {
        (Some(n), _) => Ok(n.clone()),
        (None, Some(m)) => Ok(m.value.clone()),
        (None, None) => Err("a selector without a metric name".into()),
    }
}

/// The series selectors of an expression, those of range selectors included.
fn selectors<'a>(e: &'a Expr, out: &mut Vec<&'a VectorSelector>) {
    match e {
        Expr::VectorSelector(v) => out.push(v),
        Expr::MatrixSelector(m) => out.push(&m.vs),
        Expr::Call(c) => {
            for a in &c.args.args {
                selectors(a, out);
            }
        }
        Expr::Aggregate(a) => {
            selectors(&a.expr, out);
            if let Some(p) = &a.param {
                selectors(p, out);
            }
        }
        Expr::Binary(b) => {
            selectors(&b.lhs, out);
            selectors(&b.rhs, out);
        }
        Expr::Paren(p) => selectors(&p.expr, out),
        Expr::Subquery(s) => selectors(&s.expr, out),
        Expr::Unary(u) => selectors(&u.expr, out),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// The metric names an expression selects.
fn selected_names(e: &Expr, out: &mut Vec<String>) -> Result<(), String> {
    let mut found = Vec::new();
    selectors(e, &mut found);
    for v in found {
        out.push(selector_name(&v.name, &v.matchers)?);
    }
    Ok(())
}

/// The metric names a query (PromQL, or Grafana's `label_values(selector, label)`) selects.
fn query_names(query: &str) -> Result<Vec<String>, String> {
    let q = grafana_to_promql(query);
    let q = q.trim();
    let promql = match q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
        // label_values(label): no metric; label_values(selector, label): the selector.
        Some(inner) => match inner.rfind(',') {
            Some(i) => inner[..i].to_string(),
            None => return Ok(Vec::new()),
        },
        None => q.to_string(),
    };
    let expr = parser::parse(&promql).map_err(|e| format!("invalid PromQL {promql:?}: {e}"))?;
    let mut names = Vec::new();
    selected_names(&expr, &mut names)?;
    Ok(names)
}

/// The queries of a Grafana dashboard: every panel target's `expr` (rows' panels included) and
/// every query variable, with where they are.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(o) => {
                let title = o.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(expr) = o.get("expr").and_then(Value::as_str) {
                    let r = o.get("refId").and_then(Value::as_str).unwrap_or("?");
                    out.push((format!("panel {title:?} query {r}"), expr.to_string()));
                }
                for (k, child) in o {
                    if k != "templating" {
                        walk(child, title, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "", &mut out);
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "query" {
            let q = var["query"]["query"].as_str().or(var["query"].as_str()).or(var["definition"].as_str());
            out.push((format!("variable {}", var["name"]), q.expect("a query variable's query").to_string()));
        }
    }
    out
}

/// The `expr` of every alerting and recording rule of a Prometheus rule file.
fn rule_queries(path: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for doc in yaml_docs(path) {
        for group in doc["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or("?");
                out.push((format!("rule {name}"), rule["expr"].as_str().expect("expr").to_string()));
            }
        }
    }
    out
}

/// (metric, where) for every metric a query selects that is not exported, and (error, where) for
/// queries that are not valid PromQL.
fn missing_names(exported: &BTreeSet<String>, queries: &[(String, String)]) -> Vec<(String, String)> {
    let mut missing = Vec::new();
    for (place, q) in queries {
        match query_names(q) {
            Ok(names) => {
                missing.extend(names.into_iter().filter(|n| !exported.contains(n)).map(|n| (n, place.clone())))
            }
            Err(e) => missing.push((e, place.clone())),
        }
    }
    missing
}

/// The Grafana dashboard and the alert rules only query metrics the running daemon exports (a
/// histogram's `_bucket`, `_sum` and `_count` are its family's), in valid PromQL; and a made-up
/// name, or a broken query, would be reported.
#[test]
fn the_dashboard_and_the_rules_query_only_exported_metrics() {
    let exported = exported_names(&shared_daemon().metrics());
    assert!(exported.contains("observer_sockets") && exported.contains("observer_events_lost_total"), "{exported:?}");

    // The check itself: a made-up name, a broken query, and names the check must accept.
    let made_up = [
        ("made-up".to_string(), "sum(rate(observer_made_up_total[5m])) / sum(observer_sockets)".to_string()),
        ("broken".to_string(), "sum by (pid) (observer_sockets".to_string()),
    ];
    let found = missing_names(&exported, &made_up);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0], ("observer_made_up_total".to_string(), "made-up".to_string()));
    assert!(found[1].0.starts_with("invalid PromQL") && found[1].1 == "broken", "{found:?}");
    assert_eq!(
        query_names(
            "histogram_quantile(0.99, sum by (le) (rate(observer_connection_lifetime_seconds_bucket{comm=~\"$comm\"}[$__rate_interval]))) \
             > on (instance) group_left() max without (job) ({__name__=\"observer_build_info\"} offset 1m)"
        ),
        Ok(vec!["observer_connection_lifetime_seconds_bucket".to_string(), "observer_build_info".to_string()])
    );
    assert_eq!(
        query_names("label_values(observer_process_sockets{comm=~\"$comm\"}, pid)"),
        Ok(vec!["observer_process_sockets".to_string()])
    );
    assert!(
        missing_names(&exported, &[("ok".into(), "rate(observer_connection_lifetime_seconds_count[1m])".into())])
            .is_empty()
    );

    let text = std::fs::read_to_string(deploy_path("grafana/observer-dashboard.json")).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = dashboard_queries(&dashboard);
    let from_dashboard = queries.len();
    queries.extend(rule_queries(&deploy_path("prometheus/alerts.yaml")));
    assert!(from_dashboard >= 20 && queries.len() > from_dashboard, "{queries:?}");

    // What the dashboard must show.
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (place, q) in &queries[..from_dashboard] {
        for n in query_names(q).unwrap_or_default() {
            used.entry(n).or_default().push(place.clone());
        }
    }
    for required in [
        "observer_process_sockets",
        "observer_close_wait_leak",
        "observer_reuse_ratio",
        "observer_new_connections_per_second",
        "observer_connect_failures_total",
        "observer_resets_sent_total",
        "observer_resets_received_total",
        "observer_tls_handshakes_total",
        "observer_events_lost_total",
        "observer_findings",
        "observer_idle_close_seconds",
    ] {
        assert!(used.contains_key(required), "the dashboard has no panel on {required}");
    }
    let vars: Vec<&str> =
        dashboard["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    assert!(["datasource", "comm", "pid"].iter().all(|v| vars.contains(v)), "variables: {vars:?}");

    let missing = missing_names(&exported, &queries);
    assert!(
        missing.is_empty(),
        "queried but not exported by the daemon (or invalid):\n{}",
        missing.iter().map(|(n, p)| format!("  {n}  ({p})")).collect::<Vec<_>>().join("\n")
    );
}

/// A Prometheus from the Debian package scraping `target` every second, on loopback, with a
/// throw-away storage directory.
struct Prometheus {
    _proc: Proc,
    url: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("observer-deploy-prometheus-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: observer\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stderr(std::process::Stdio::null());
        let p = Proc::spawn(cmd);
        let prom = Prometheus { _proc: p, url: format!("http://127.0.0.1:{port}"), dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            || http_get(&format!("{}/-/ready", prom.url)).0 != 200
        {
            assert!(Instant::now() < deadline, "prometheus did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        prom
    }

    /// An instant query: its data, or Prometheus's error.
    fn query(&self, q: &str) -> Result<Value, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut resp =
            agent.get(format!("{}/api/v1/query", self.url)).query("query", q).call().map_err(|e| e.to_string())?;
        let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        match body["status"].as_str() {
            Some("success") => Ok(body["data"].clone()),
            _ => Err(format!("{}: {}", body["errorType"], body["error"])),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every query of the dashboard and the rules runs in a real Prometheus scraping the daemon,
/// with data (so that errors only evaluation finds, like many-to-many matches, show), and the
/// variables as Grafana fills them with "All" selected; a broken query is reported.
#[test]
fn the_dashboard_and_the_rules_run_in_prometheus() {
    let d = shared_daemon();
    let prom = Prometheus::start(d.api.trim_start_matches("http://"));
    // Some traffic, so that most queries have series to work on.
    let (_server, port) = http_server("127.0.0.1", "keepalive");
    let (_client, _) = client(None, &["requests_session", &format!("http://127.0.0.1:{port}/"), "5"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scrapes = prom.query("sum(count_over_time(up{job=\"observer\"}[1m]))").expect("query");
        if scrapes["result"][0]["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(|n| n >= 5.0) {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus does not scrape the daemon: {scrapes}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(prom.query("sum by (pid) (observer_sockets").is_err(), "a broken query was accepted");

    let text = std::fs::read_to_string(deploy_path("grafana/observer-dashboard.json")).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = dashboard_queries(&dashboard);
    queries.retain(|(place, _)| !place.starts_with("variable"));
    queries.extend(rule_queries(&deploy_path("prometheus/alerts.yaml")));
    let mut failed = Vec::new();
    let mut empty = Vec::new();
    for (place, q) in &queries {
        let promql = grafana_expand(&q.replace("$__rate_interval", "1m").replace("$__range", "1h"), ".*");
        match prom.query(&promql) {
            Ok(data) if data["result"].as_array().is_some_and(|r| !r.is_empty()) => {}
            Ok(_) => empty.push(format!("  {place}\n    {promql}")),
            Err(e) => failed.push(format!("  {place}: {e}\n    {promql}")),
        }
    }
    assert!(failed.is_empty(), "queries Prometheus rejects:\n{}", failed.join("\n"));
    // A query with a wrong metric or label name runs, and returns nothing: every query has data
    // but those with nothing to show here.
    empty.retain(|p| !nothing_to_show_here(p.trim_start()));
    assert!(empty.is_empty(), "queries with no data:\n{}", empty.join("\n"));
}

/// The queries of the dashboard and the rules that have no data in the test above, and why.
fn nothing_to_show_here(place: &str) -> bool {
    // No pods outside Kubernetes.
    place.starts_with("panel \"CLOSE_WAIT by pod\"")
        // No leak in this traffic.
        || place.starts_with("panel \"Active leaks\"")
        // No TLS in this traffic.
        || place.starts_with("panel \"TLS ")
        // A rule's query returns what fires: nothing, here.
        || place.starts_with("rule ")
        // No finding in this traffic (a keep-alive session), and no server closed an idle connection.
        || place.contains("observer_findings")
        || place.contains("observer_idle_close_seconds")
}

/// The kinds of finding of the diagnosis (docs/diagnosis.md), as `observer_findings` labels them.
const FINDING_KINDS: [&str; 7] = [
    "session_not_reused",
    "pool_too_small",
    "close_wait_leak",
    "stale_reuse",
    "connect_failures",
    "tls_handshake_per_request",
    "time_wait_exhaustion_risk",
];

/// The `kind` each selector of `observer_findings` in a query matches exactly (`kind="..."`), `None`
/// for one that matches no single kind.
fn finding_kinds(query: &str) -> Result<Vec<Option<String>>, String> {
    let promql = grafana_to_promql(query);
    let expr = parser::parse(&promql).map_err(|e| format!("invalid PromQL {promql:?}: {e}"))?;
    let mut found = Vec::new();
    selectors(&expr, &mut found);
    Ok(found
        .into_iter()
        .filter(|v| selector_name(&v.name, &v.matchers).is_ok_and(|n| n == "observer_findings"))
        .map(|v| {
            let kind = v.matchers.matchers.iter().find(|m| m.name == "kind" && matches!(m.op, MatchOp::Equal));
            kind.map(|m| m.value.clone())
        })
        .collect())
}

/// Every kind of finding has exactly one alert rule, so that a finding does not alert twice
/// (close_wait_leak's is CloseWaitLeak, on `observer_close_wait_leak`: the same verdict), and a
/// panel of its own on the dashboard; rules and panels name only kinds the daemon has.
#[test]
fn every_kind_of_finding_has_one_alert_rule_and_a_panel() {
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (place, q) in rule_queries(&deploy_path("prometheus/alerts.yaml")) {
        for kind in finding_kinds(&q).unwrap_or_else(|e| panic!("{place}: {e}")) {
            let kind = kind.unwrap_or_else(|| panic!("{place} selects observer_findings of no single kind: {q}"));
            rules.entry(kind).or_default().push(place.clone());
        }
        if query_names(&q).unwrap().iter().any(|n| n == "observer_close_wait_leak") {
            rules.entry("close_wait_leak".to_string()).or_default().push(place.clone());
        }
    }
    let text = std::fs::read_to_string(deploy_path("grafana/observer-dashboard.json")).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut panels: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (place, q) in dashboard_queries(&dashboard).into_iter().filter(|(place, _)| place.starts_with("panel ")) {
        for kind in finding_kinds(&q).unwrap_or_else(|e| panic!("{place}: {e}")).into_iter().flatten() {
            panels.entry(kind).or_default().push(place.clone());
        }
    }
    for kind in FINDING_KINDS {
        match rules.get(kind).map(Vec::as_slice) {
            Some([_]) => {}
            None => panic!("no alert rule for the finding {kind}"),
            Some(more) => panic!("the finding {kind} alerts more than once: {more:?}"),
        }
        assert!(panels.contains_key(kind), "no dashboard panel for the finding {kind}");
    }
    for (kind, places) in rules.iter().chain(&panels) {
        assert!(FINDING_KINDS.contains(&kind.as_str()), "{places:?}: no finding is of kind {kind:?}");
    }
}
