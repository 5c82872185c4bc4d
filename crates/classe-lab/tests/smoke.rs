//! The lab's smoke configuration (N = 3, F = 5 MB, default rates) with
//! both scenarios, as CI runs it: everyone completes, every output matches
//! the source byte for byte, nothing is left behind. Speed is not judged
//! here (the classe binary is a debug build).
//!
//! Needs root and `ip netns`; prints a SKIPPED line otherwise. The central
//! scenario needs nginx and curl (`apt-get install nginx-light curl`). The
//! classe binary is `target/debug/classe`, built by `cargo test
//! --workspace` before any test runs, or `$CLASSE_BIN`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use classe_lab::{net, plan::Plan, scenario};

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

#[test]
fn smoke_everyone_completes_with_verified_bytes_and_nothing_is_left() {
    let probe = net::probe();
    if !probe.usable() {
        println!(
            "SKIPPED classe-lab smoke: needs root and ip netns ({})",
            probe.notes.join("; ")
        );
        return;
    }
    let mut scenarios = Vec::new();
    if scenario::have_program("nginx") && scenario::have_program("curl") {
        scenarios.push(scenario::central());
    } else {
        println!(
            "SKIPPED classe-lab smoke, central scenario: nginx or curl is not installed (apt-get install nginx-light curl)"
        );
    }
    let bt = ["aria2c", "opentracker", "mktorrent", "curl"];
    if bt.iter().all(|p| scenario::have_program(p)) {
        scenarios.push(scenario::bittorrent());
    } else if in_ci() {
        panic!("the bittorrent scenario needs aria2c, opentracker, mktorrent and curl: .ci/run installs them");
    } else {
        println!(
            "SKIPPED classe-lab smoke, bittorrent scenario: apt-get install aria2 opentracker mktorrent curl"
        );
    }
    let bin = classe_testkit::bin::classe_bin(None);
    match &bin {
        Some(_) => scenarios.push(scenario::classe(true)),
        None if in_ci() => panic!("no classe binary next to the tests: run `cargo test --workspace`"),
        None => println!(
            "SKIPPED classe-lab smoke, classe scenario: no target/debug/classe (run `cargo build -p classe` or set CLASSE_BIN)"
        ),
    }
    if scenarios.is_empty() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut plan = Plan::smoke(scenarios);
    plan.classe_bin = bin;
    plan.work_root = work.path().to_path_buf();
    let expected = plan.scenarios.len();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let (results, errors) = rt.block_on(plan.run(&probe, |_| {})).unwrap();
    let took = started.elapsed();
    rt.shutdown_timeout(Duration::from_secs(2));

    assert!(errors.is_empty(), "runs that could not start: {errors:?}");
    assert_eq!(results.len(), expected);
    for r in &results {
        assert!(r.ok, "{} failed: {:?}", r.scenario, r.failures);
        assert_eq!(r.completed, 3, "{}: not everyone completed", r.scenario);
        assert!(
            r.pupils.iter().all(|p| p.verified == Some(true)),
            "{}: an output was not verified",
            r.scenario
        );
        // The seed sent at least one whole copy (nothing else had it).
        assert!(
            r.seed_copies > 0.99,
            "{}: seed sent {}",
            r.scenario,
            r.seed_copies
        );
        assert!(r.makespan_secs > 0.0 && r.makespan_secs >= r.bounds.seed_term * 0.9);
        // Every process was measured before it was stopped.
        assert!(r.cpu.cpu_secs_per_gb > 0.0, "{}: no CPU per GB", r.scenario);
        let seed = r.cpu.seed_proc.expect("seed process stats");
        assert!(
            seed.threads >= 1 && seed.peak_rss_kib > 0,
            "{}: {seed:?}",
            r.scenario
        );
        for p in &r.pupils {
            // A pupil that is done by exiting (curl) has nothing left to read.
            if r.scenario == "central" {
                assert!(p.proc.is_none(), "{:?}", p.proc);
                continue;
            }
            let stats = p.proc.expect("pupil process stats");
            assert!(
                stats.peak_rss_kib > 0,
                "{} pupil {}: {stats:?}",
                r.scenario,
                p.index
            );
        }
        if r.scenario == "classe" {
            let q = r.quic.expect("classe wrote its QUIC counters");
            assert_eq!(q.processes, 4, "{q:?}");
            assert!(
                q.datagrams_sent > 0 && q.acks_sent > 0 && q.max_mtu >= 1200,
                "{q:?}"
            );
        }
        println!(
            "{}: makespan {:.1} s, T_min {:.1} s, seed copies {:.2}",
            r.scenario, r.makespan_secs, r.bounds.t_min, r.seed_copies
        );
    }

    // Nothing left behind: namespaces of this process, temporary folders.
    let own = format!("{}{}x", net::NS_PREFIX, std::process::id());
    let left: Vec<String> = net::list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&own))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let files: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
    assert!(files.is_empty(), "files left in the work folder: {files:?}");
    assert!(
        took < Duration::from_secs(60),
        "the smoke run took {took:?}"
    );
}

/// The strict network (issue 11's independent lab) is what it says: a
/// pfifo leaf of 100 ms under each HTB class, HTB r2q and quantum set,
/// offloads and IPv6 off, on real namespaces.
#[test]
fn the_strict_network_options_are_applied() {
    let probe = net::probe();
    if !probe.usable() || !scenario::have_program("ethtool") {
        println!("SKIPPED strict network: needs root, ip netns and ethtool");
        return;
    }
    let tag = format!("{}{}xstrict", net::NS_PREFIX, std::process::id());
    let shapes = [
        net::Shape {
            up_bps: Some(20_000_000),
            down_bps: Some(100_000_000),
        },
        net::Shape {
            up_bps: Some(10_000_000),
            down_bps: None,
        },
    ];
    let topo = net::Topology::build_with(&tag, &shapes, None, &net::NetOptions::strict()).unwrap();
    let pupil = &topo.hosts()[1];
    let tc = net::run_tool(
        "tc",
        &["-n", &pupil.ns, "-d", "qdisc", "show", "dev", "eth0"],
    )
    .unwrap();
    // 10 Mbit/s for 100 ms = 83 packets of 1514 bytes.
    assert!(tc.contains("pfifo") && tc.contains("limit 83p"), "{tc}");
    assert!(tc.contains("r2q 1000"), "{tc}");
    let class = net::run_tool(
        "tc",
        &["-n", &pupil.ns, "-d", "class", "show", "dev", "eth0"],
    )
    .unwrap();
    assert!(class.contains("quantum 1514"), "{class}");
    let k = net::run_tool("ip", &["netns", "exec", &pupil.ns, "ethtool", "-k", "eth0"]).unwrap();
    for feature in [
        "tcp-segmentation-offload: off",
        "generic-segmentation-offload: off",
        "generic-receive-offload: off",
    ] {
        assert!(k.contains(feature), "{feature} not in {k}");
    }
    let v6 = net::run_tool(
        "ip",
        &[
            "netns",
            "exec",
            &pupil.ns,
            "sysctl",
            "-n",
            "net.ipv6.conf.all.disable_ipv6",
        ],
    )
    .unwrap();
    assert_eq!(v6.trim(), "1");
    drop(topo);
    assert!(!net::list_namespaces().iter().any(|n| n.starts_with(&tag)));
}
