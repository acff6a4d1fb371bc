//! `observer explain PID`: the findings of one process, for a person: most severe first, each
//! with its numbers and its fix.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::Value;

use observer_core::views::{Diagnosis, Finding};

use super::{get, print_json, read};

/// A figure of the evidence as text: numbers as they are, objects as `key=value` pairs.
fn figure(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::Object(m) => {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={}", figure(v))).collect();
            parts.join(" ")
        }
        other => other.to_string(),
    }
}

fn render_finding(f: &Finding, out: &mut String) {
    let _ = writeln!(out, "{:<9} {}  {} {}", f.severity.to_uppercase(), f.kind, f.direction, f.peer);
    let _ = writeln!(out, "  {}", f.summary);
    let evidence: Vec<String> = f.evidence.iter().map(|(k, v)| format!("{k}: {}", figure(v))).collect();
    let _ = writeln!(out, "  evidence: {}", evidence.join(", "));
    let _ = writeln!(out, "  fix: {}", f.advice);
}

pub fn render(d: &Diagnosis) -> String {
    let mut out = String::new();
    if d.findings.is_empty() {
        let _ = writeln!(out, "{} (pid {}): no connection-pool problem found", d.comm, d.pid);
        return out;
    }
    let n = d.findings.len();
    let _ = writeln!(out, "{} (pid {}): {n} connection-pool problem{}", d.comm, d.pid, if n == 1 { "" } else { "s" });
    for f in &d.findings {
        out.push('\n');
        render_finding(f, &mut out);
    }
    out
}

pub fn explain(api: &str, pid: u32, json: bool) -> Result<()> {
    let body = get(api, &format!("/api/v1/processes/{pid}/diagnosis"))?;
    if json {
        print_json(&body)
    } else {
        print!("{}", render(&read(&body)?));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(kind: &str, severity: &str) -> Finding {
        let evidence =
            serde_json::json!({"failures": {"refused": 8, "timeout": 0}, "bursts": 2, "seconds_to_exhaustion": null});
        Finding {
            kind: kind.into(),
            severity: severity.into(),
            direction: "outbound".into(),
            peer: "127.0.0.1:9".into(),
            summary: "python3's connects to 127.0.0.1:9 failed 8 times.".into(),
            evidence: evidence.as_object().unwrap().clone(),
            advice: "Check the destination.".into(),
        }
    }

    #[test]
    fn findings_print_with_their_evidence_and_fix() {
        let d = Diagnosis {
            pid: 42,
            comm: "python3".into(),
            findings: vec![finding("connect_failures", "critical"), finding("stale_reuse", "warning")],
        };
        let text = render(&d);
        assert_eq!(
            text.lines().take(5).collect::<Vec<_>>(),
            [
                "python3 (pid 42): 2 connection-pool problems",
                "",
                "CRITICAL  connect_failures  outbound 127.0.0.1:9",
                "  python3's connects to 127.0.0.1:9 failed 8 times.",
                "  evidence: failures: refused=8 timeout=0, bursts: 2, seconds_to_exhaustion: none",
            ]
        );
        assert!(text.contains("  fix: Check the destination.\n\nWARNING   stale_reuse"), "{text}");
    }

    #[test]
    fn a_healthy_process_says_so() {
        let d = Diagnosis { pid: 7, comm: "nginx".into(), findings: vec![] };
        assert_eq!(render(&d), "nginx (pid 7): no connection-pool problem found\n");
    }
}
