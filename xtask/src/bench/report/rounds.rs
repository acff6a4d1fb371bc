//! The markdown of the rounds' cases (reuse, keepalive, close): the throughput per setup and
//! observer's cost from its `bpf_stats` round.

use std::fmt::Write as _;

use crate::bench::cost::{CALIBRATION, Cost, RARE_RUNS};
use crate::bench::stats::WorkloadResult;
use crate::bench::{CLIENT_CPU, CONNECTIONS, REUSE_SETUPS, ROUND_SECONDS, SERVER_CPU, Setup, THREADS, Workload};

fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Markdown for `bench reuse`.
pub(in crate::bench) fn reuse_markdown(r: &WorkloadResult) -> String {
    let ratio = r.ratio(Setup::Observer).unwrap_or(0.0);
    let met = if ratio >= Workload::KeepAlive.target() { "met" } else { "**not met**" };
    let mut md = format!(
        "Throughput with observer running divided by throughput without it: **{ratio:.3}** (target at least \
         {:.2}: {met}).\n\n",
        Workload::KeepAlive.target()
    );
    if let Some(no_tls) = &r.cost_no_tls {
        md.push_str(&tls_markdown(r, no_tls));
    }
    md.push_str(&workload_markdown(r, REUSE_SETUPS));
    md
}

/// What TLS recognition adds: the send and receive programs' time with it and without.
fn tls_markdown(r: &WorkloadResult, no_tls: &Cost) -> String {
    // The throughput ratios move by several points from round to round on a noisy VM; the
    // programs' own time is a steadier measure of what the feature adds.
    let added = r.cost.io_ns_per_request() - no_tls.io_ns_per_request();
    let cpu = cpus() * 1e9 / r.median_rps(Setup::None);
    let points = added / cpu * 100.0;
    let met = if points <= 1.0 { "met" } else { "**not met**" };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "TLS recognition: the send and receive programs take {:.0} ns per request with it and {:.0} ns \
         without (`bpf_stats`), {added:+.0} ns per request, **{points:.2} points** of the {cpu:.0} ns of CPU \
         a request takes (target at most 1 point: {met}).",
        r.cost.io_ns_per_request(),
        no_tls.io_ns_per_request(),
    );
    if let (Some(with), Some(without)) = (r.ratio(Setup::Observer), r.ratio(Setup::ObserverNoTls)) {
        let _ = writeln!(
            md,
            "Throughput ratios, observer {with:.3} and observer `--no-tls` {without:.3}, differ by {:.1} points \
             here: within this machine's round-to-round noise.\n",
            (without - with) * 100.0
        );
    }
    md
}

/// Markdown for one workload.
pub(in crate::bench) fn workload_markdown(r: &WorkloadResult, setups: &[Setup]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "`wrk -t{THREADS} -c{CONNECTIONS} -d{ROUND_SECONDS}s{}` (pinned to CPU {CLIENT_CPU}) against a local nginx \
         (1 worker, `return 200`, pinned to CPU {SERVER_CPU}); {} rounds, every setup in every round in a rotated order; a tracer starts \
         before its round and stops after it.\n",
        if r.workload == Workload::ConnectionClose { " -H 'Connection: close'" } else { "" },
        r.rounds
    );
    let _ = writeln!(
        md,
        "| setup | median req/s | ratio to no tracer (median of paired rounds) | lowest and highest paired round |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: |");
    for s in setups {
        let ratio = r.ratio(*s).map_or("-".to_string(), |x| format!("{x:.3}"));
        let range = match (*s, r.ratio_range(*s)) {
            (Setup::None, _) | (_, None) => "-".to_string(),
            (_, Some((lo, hi))) => format!("{lo:.3} - {hi:.3}"),
        };
        let _ = writeln!(md, "| {} | {:.0} | {ratio} | {range} |", s.name(), r.median_rps(*s));
    }
    let _ = writeln!(
        md,
        "\nRound-to-round spread of the no-tracer throughput alone: {:.0}% of its median (this VM is noisy; the \
         paired ratio cancels slow drift). Events the daemon lost: {}.\n",
        r.spread(),
        r.events_lost
    );
    md.push_str(&cost_markdown(&r.cost, r.median_rps(Setup::None)));
    md
}

/// Observer's cost from its `bpf_stats` round, set against the no-tracer throughput.
fn cost_markdown(c: &Cost, baseline_rps: f64) -> String {
    let mut md = programs_markdown(c);
    if c.floor_ns[0] > 0.0 {
        md.push_str(&calibration_markdown(c));
    }
    md.push_str(&per_request_markdown(c, baseline_rps));
    if !c.cpu_busy.is_empty() {
        md.push_str(&busy_markdown(c));
    }
    md
}

/// Each program's runs and ns, in the round and in the rare-path exercise.
fn programs_markdown(c: &Cost) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Cost of observer, from a separate round with `kernel.bpf_stats_enabled=1` ({:.0} req/s; stats add \
         to every run, so these are upper bounds):\n",
        c.rps
    );
    let _ = writeln!(
        md,
        "| program | runs | runs per request | ns per run | in the round | in the exercise | ns per request |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let ns_per_run = |runs: u64, ns: u64| if runs > 0 { format!("{:.0}", ns as f64 / runs as f64) } else { "-".into() };
    for (name, runs, ns) in &c.programs {
        let (_, per_run) = c.per_run(name);
        let (extra, rare_ns) = c.rare_of(name);
        let shown = if extra > 0 { format!("{runs} + {extra}") } else { runs.to_string() };
        let _ = writeln!(
            md,
            "| {name} | {shown} | {:.2} | {per_run:.0} | {} | {} | {:.0} |",
            *runs as f64 / c.requests(),
            ns_per_run(*runs, *ns),
            ns_per_run(extra, rare_ns),
            *ns as f64 / c.requests()
        );
    }
    let _ = writeln!(
        md,
        "\n\"+ N\": runs in an exercise of rare paths after the round ({RARE_RUNS} refused connects and \
         {RARE_RUNS} abortive closes, on an otherwise idle machine), so that every program's ns per run is \
         measured over hundreds of runs. \"ns per run\" is over both, and is what the target is judged on; the \
         next two columns split it."
    );
    md
}

/// The calibration programs' floor and the price of each operation.
fn calibration_markdown(c: &Cost) -> String {
    let mut md = String::from(
        "\nThe floor of these figures and the price of each operation on this machine, measured in the same \
         round by programs on `sock_send_length` that do only that (`bpf_stats` ns per run; the price is \
         the difference with the program that does nothing):\n\n| program does | ns per run | price |\n\
         | --- | ---: | ---: |\n",
    );
    for ((_, what), ns) in CALIBRATION.iter().zip(c.floor_ns) {
        let price = if ns == c.floor_ns[0] { "-".to_string() } else { format!("{:.0}", ns - c.floor_ns[0]) };
        let _ = writeln!(md, "| {what} | {ns:.0} | {price} |");
    }
    md
}

/// The programs' and the daemon's time per request, against a request's CPU time.
fn per_request_markdown(c: &Cost, baseline_rps: f64) -> String {
    let cpus = cpus();
    let cpu_per_req = cpus * 1e9 / baseline_rps;
    format!(
        "\nPer request: {:.0} ns in the kernel programs and {:.0} ns in the daemon ({:.2} CPU-seconds over {:.1} s). \
         Without a tracer a request takes {cpu_per_req:.0} ns of the {cpus:.0} CPUs' time: observer's work is \
         {:.1}% of that (upper bounds, see above), an average that understates its cost when one CPU bounds the \
         throughput (below). Daemon peak RSS: {:.1} MiB.\n\n",
        c.bpf_ns_per_request(),
        c.daemon_ns_per_request(),
        c.daemon_cpu,
        c.elapsed,
        (c.bpf_ns_per_request() + c.daemon_ns_per_request()) / cpu_per_req * 100.0,
        c.daemon_peak_rss_kib as f64 / 1024.0
    )
}

/// How busy each CPU was, and the programs' share of the busiest one.
fn busy_markdown(c: &Cost) -> String {
    let busy: Vec<String> = c
        .cpu_busy
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let who = match i.to_string().as_str() {
                SERVER_CPU => " (nginx)",
                CLIENT_CPU => " (wrk)",
                _ => "",
            };
            format!("CPU {i}{who} {:.0}%", b * 100.0)
        })
        .collect();
    format!(
        "CPUs busy during the round: {}. The throughput is bound by the busiest one: {:.0} ns of it per \
         request; observer's kernel programs, if they all ran there, would take {:.1}% of it. (On loopback the \
         kernel processes a packet on the CPU that sends it: wrk's CPU also runs the server's side of the \
         handshake and of the client's close, and observer's programs there; where its work runs decides what \
         it costs.)\n\n",
        busy.join(", "),
        1e9 / c.rps,
        c.bpf_ns_per_request() * c.rps / 1e9 * 100.0
    )
}

#[cfg(test)]
pub(in crate::bench) mod tests {
    use std::collections::HashMap;

    use super::*;

    pub(in crate::bench) fn no_cost() -> Cost {
        Cost {
            rps: 0.0,
            elapsed: 1.0,
            daemon_cpu: 0.0,
            daemon_peak_rss_kib: 0,
            programs: vec![],
            rare: vec![],
            floor_ns: [0.0; 6],
            cpu_busy: vec![],
        }
    }

    /// A result with these rounds' throughputs per setup.
    pub(in crate::bench) fn result(workload: Workload, rounds: &[(Setup, Vec<f64>)]) -> WorkloadResult {
        let rps: HashMap<Setup, Vec<f64>> = rounds.iter().cloned().collect();
        let n = rounds.first().map_or(0, |(_, v)| v.len());
        WorkloadResult { workload, rounds: n, rps, cost: no_cost(), cost_no_tls: None, events_lost: 0 }
    }

    #[test]
    fn ratios_pair_rounds() {
        let r = result(
            Workload::KeepAlive,
            &[(Setup::None, vec![100.0, 200.0, 100.0]), (Setup::Observer, vec![90.0, 190.0, 99.0])],
        );
        // Pairs: 0.9, 0.95, 0.99: the median is 0.95, unlike the ratio of medians (99/100).
        assert_eq!(r.ratio(Setup::Observer), Some(0.95));
        assert_eq!(r.ratio_range(Setup::Observer), Some((0.9, 0.99)));
        let md = workload_markdown(&r, &[Setup::None, Setup::Observer]);
        assert!(md.contains("| observer daemon | 99 | 0.950 | 0.900 - 0.990 |"), "{md}");
        assert!(md.contains("| no tracer | 100 | 1.000 | - |"), "{md}");
        assert_eq!(r.ratio(Setup::Bpftrace), None);
    }

    #[test]
    fn a_program_is_judged_on_its_runs_in_the_round_and_the_rare_path_exercise() {
        let p = |name: &str, runs, ns| (name.to_string(), runs, ns);
        let cost = Cost {
            rps: 1000.0,
            elapsed: 2.0,
            daemon_cpu: 0.0,
            daemon_peak_rss_kib: 0,
            programs: vec![p("sock_send_length", 4000, 800_000), p("tcp_send_reset", 2, 4000)],
            rare: vec![p("sock_send_length", 0, 0), p("tcp_send_reset", 198, 196_000)],
            floor_ns: [77.4, 140.0, 120.0, 150.0, 100.0, 300.0],
            cpu_busy: vec![0.55, 0.99],
        };
        assert_eq!(cost.per_run("tcp_send_reset"), (200, 1000.0));
        assert_eq!(cost.per_run("sock_send_length"), (4000, 200.0));
        assert_eq!(cost.max_ns_per_run(), ("tcp_send_reset".to_string(), 1000.0));
        let md = cost_markdown(&cost, 1000.0);
        assert!(md.contains("| tcp_send_reset | 2 + 198 | 0.00 | 1000 | 2000 | 990 | 2 |"), "{md}");
        assert!(md.contains("| nothing (the floor) | 77 | - |"), "{md}");
        assert!(md.contains("| read the clock (`bpf_ktime_get_ns`) | 140 | 63 |"), "{md}");
        assert!(md.contains("(TLS recognition) | 300 | 223 |"), "{md}");
        assert!(md.contains("(a load and a store of its head, three stores) | 100 | 23 |"), "{md}");
        assert!(md.contains("| sock_send_length | 4000 | 2.00 | 200 | 200 | - | 400 |"), "{md}");
        // 402 ns of programs per request; 2 CPUs at 1000 req/s without a tracer: 2,000,000 ns per request.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let avg = format!("takes {} ns of the {cpus} CPUs' time: observer's work is", cpus * 1_000_000);
        assert!(md.contains(&avg), "{md}");
        assert!(
            md.contains(
                "1000000 ns of it per request; observer's kernel programs, if they all ran there, would take 0.0%"
            ),
            "{md}"
        );
    }
}
