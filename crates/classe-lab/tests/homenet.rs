//! The home-network topology on real namespaces, iptables and miniupnpd:
//! NAT works and lets nothing in, port-preserving NAT keeps ports and can
//! be hole-punched, symmetric NAT cannot, UPnP-IGD and NAT-PMP mappings
//! open a port from outside, and dropping the network leaves nothing.
//!
//! Needs root, iptables-legacy and miniupnpd-iptables
//! (`homenet::probe_nat`); prints a `SKIPPED:` line otherwise. The UPnP
//! test also needs `upnpc` (miniupnpc) and, for its NAT-PMP part,
//! `natpmpc`. Sockets are opened inside the namespaces with
//! `homenet::in_ns`; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashSet,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use classe_lab::{
    homenet::{self, HomeHost, HomeNet, HomeSpec, Nat},
    net::{self, Shape},
    scenario::have_program,
};

const UNSHAPED: Shape = Shape {
    up_bps: None,
    down_bps: None,
};

fn public() -> HomeSpec {
    HomeSpec {
        nat: None,
        shape: UNSHAPED,
    }
}

fn home(nat: Nat) -> HomeSpec {
    HomeSpec {
        nat: Some(nat),
        shape: UNSHAPED,
    }
}

/// Prints the SKIPPED line and returns true when NAT cannot be emulated.
fn skipped(test: &str) -> bool {
    match homenet::probe_nat() {
        Ok(()) => false,
        Err(e) => {
            println!("SKIPPED: homenet {test}: {e}");
            true
        }
    }
}

fn tag() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}{}hn{}",
        net::NS_PREFIX,
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn build(specs: &[HomeSpec]) -> HomeNet {
    HomeNet::build(&tag(), specs).expect("build the home network")
}

/// A UDP socket bound to `port` (all addresses) inside the host's namespace.
fn udp(host: &HomeHost, port: u16) -> UdpSocket {
    homenet::in_ns(&host.ns, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s
    })
    .unwrap()
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("unexpected IPv6 peer {a}"),
    }
}

/// Sends `msg` from `from` to `to` until `at` receives it (at most 10
/// tries, 100 ms apart); returns the source address `at` saw.
fn deliver(from: &UdpSocket, to: SocketAddrV4, at: &UdpSocket, msg: &[u8]) -> Option<SocketAddrV4> {
    let mut buf = [0u8; 1500];
    for _ in 0..10 {
        from.send_to(msg, to).ok();
        let deadline = Instant::now() + Duration::from_millis(100);
        while Instant::now() < deadline {
            match at.recv_from(&mut buf) {
                Ok((n, src)) if &buf[..n] == msg => return Some(v4(src)),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    None
}

/// Whether anything arrives on `at` within `wait`.
fn anything_arrives(at: &UdpSocket, wait: Duration) -> bool {
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if at.recv_from(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

/// Runs `args` inside `ns`, killed after `timeout`; (success, output).
fn run_in(ns: &str, args: &[&str], timeout: Duration) -> (bool, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            return (
                false,
                format!("timed out: {}", String::from_utf8_lossy(&out.stdout)),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn home_host_reaches_a_public_host_through_nat_udp_and_tcp() {
    if skipped("reach public") {
        return;
    }
    let net = build(&[public(), home(Nat::PortPreserving), home(Nat::Symmetric)]);
    let hosts = net.hosts();
    let (server, pp, sym) = (&hosts[0], &hosts[1], &hosts[2]);
    assert_eq!(server.ip, Ipv4Addr::new(198, 18, 0, 1));
    assert_eq!(pp.ip, homenet::LAN_HOST);
    assert_eq!(pp.public_ip, Ipv4Addr::new(198, 18, 1, 1));
    assert_eq!(sym.public_ip, Ipv4Addr::new(198, 18, 2, 1));
    let listen = udp(server, 7000);
    let listener =
        homenet::in_ns(&server.ns, || TcpListener::bind("0.0.0.0:7001").unwrap()).unwrap();
    for h in [pp, sym] {
        let before = net.counters(h).unwrap();
        let s = udp(h, 40000);
        let seen = deliver(&s, SocketAddrV4::new(server.ip, 7000), &listen, b"hello")
            .expect("UDP from home reaches the public host");
        assert_eq!(
            *seen.ip(),
            h.public_ip,
            "the public host sees the router's WAN address"
        );
        // The answer gets back in (it belongs to the flow).
        listen.send_to(b"answer", seen).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = s
            .recv_from(&mut buf)
            .expect("the answer comes back through the NAT");
        assert_eq!(&buf[..n], b"answer");
        assert_eq!(v4(from), SocketAddrV4::new(server.ip, 7000));

        let mut c = homenet::in_ns(&h.ns, || {
            TcpStream::connect_timeout(&SocketAddr::from((server.ip, 7001)), Duration::from_secs(2))
        })
        .unwrap()
        .expect("TCP from home reaches the public host");
        let (mut a, peer) = listener.accept().unwrap();
        assert_eq!(v4(peer).ip(), &h.public_ip);
        a.write_all(b"pong").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
        let after = net.counters(h).unwrap();
        assert!(after.tx > before.tx && after.rx > before.rx);
    }
}

#[test]
fn nothing_unsolicited_gets_in() {
    if skipped("unsolicited") {
        return;
    }
    let net = build(&[public(), home(Nat::PortPreserving), home(Nat::Symmetric)]);
    let server = &net.hosts()[0];
    let out = udp(server, 7000);
    for h in &net.hosts()[1..] {
        let inside = udp(h, 40000);
        let tcp = homenet::in_ns(&h.ns, || {
            let l = TcpListener::bind("0.0.0.0:40001").unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .unwrap();
        for _ in 0..3 {
            out.send_to(b"knock", (h.public_ip, 40000)).unwrap();
        }
        // The LAN address is not routed on the internet at all.
        assert!(out.send_to(b"knock", (h.ip, 40000)).is_err());
        let r = homenet::in_ns(&server.ns, || {
            TcpStream::connect_timeout(
                &SocketAddr::from((h.public_ip, 40001)),
                Duration::from_millis(700),
            )
        })
        .unwrap();
        assert!(r.is_err(), "a TCP connection from outside must not get in");
        assert!(!anything_arrives(&inside, Duration::from_millis(300)));
        assert_eq!(tcp.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
    }
}

#[test]
fn port_preserving_keeps_the_port_and_symmetric_changes_it_per_destination() {
    if skipped("mapping") {
        return;
    }
    let net = build(&[public(), home(Nat::PortPreserving), home(Nat::Symmetric)]);
    let server = &net.hosts()[0];
    let (r1, r2) = (udp(server, 7000), udp(server, 7001));
    let mut ports = Vec::new();
    for h in &net.hosts()[1..] {
        let s = udp(h, 41000);
        let a = deliver(&s, SocketAddrV4::new(server.ip, 7000), &r1, b"one").unwrap();
        let b = deliver(&s, SocketAddrV4::new(server.ip, 7001), &r2, b"two").unwrap();
        assert_eq!(*a.ip(), h.public_ip);
        assert_eq!(*b.ip(), h.public_ip);
        ports.push((a.port(), b.port()));
        if have_program("conntrack") {
            let flows = net.nat_flows(h).unwrap();
            let mine: HashSet<u16> = flows
                .iter()
                .filter(|f| f.internal.port() == 41000 && *f.remote.ip() == server.ip)
                .map(|f| f.external.port())
                .collect();
            assert_eq!(mine, HashSet::from([a.port(), b.port()]), "{flows:?}");
        }
    }
    assert_eq!(
        ports[0],
        (41000, 41000),
        "port-preserving NAT keeps the source port"
    );
    let (a, b) = ports[1];
    assert_ne!(a, b, "symmetric NAT: a new external port per destination");
    assert!(a != 41000 || b != 41000);
}

/// Two home hosts learn each other's public address from a public host,
/// then both send to it at once for a second; whether each received.
fn punch(nat: Nat) -> (bool, bool, SocketAddrV4, SocketAddrV4) {
    let net = build(&[public(), home(nat), home(nat)]);
    let h = net.hosts();
    let rendezvous = udp(&h[0], 3479);
    let to = SocketAddrV4::new(h[0].ip, 3479);
    let (a, b) = (udp(&h[1], 45000), udp(&h[2], 45000));
    let a_pub = deliver(&a, to, &rendezvous, b"A").unwrap();
    let b_pub = deliver(&b, to, &rendezvous, b"B").unwrap();
    a.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    b.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let (mut got_a, mut got_b) = (false, false);
    let mut buf = [0u8; 64];
    for _ in 0..20 {
        a.send_to(b"from A", b_pub).ok();
        b.send_to(b"from B", a_pub).ok();
        std::thread::sleep(Duration::from_millis(20));
        while let Ok((n, _)) = a.recv_from(&mut buf) {
            got_a |= &buf[..n] == b"from B";
        }
        while let Ok((n, _)) = b.recv_from(&mut buf) {
            got_b |= &buf[..n] == b"from A";
        }
        if got_a && got_b {
            break;
        }
    }
    (got_a, got_b, a_pub, b_pub)
}

#[test]
fn hole_punching_works_behind_port_preserving_nat_and_fails_behind_symmetric() {
    if skipped("hole punching") {
        return;
    }
    let (a, b, a_pub, b_pub) = punch(Nat::PortPreserving);
    assert_eq!((a_pub.port(), b_pub.port()), (45000, 45000));
    assert!(a && b, "both ends receive after punching (got {a}, {b})");
    let (a, b, a_pub, b_pub) = punch(Nat::Symmetric);
    assert!(
        !(a && b),
        "symmetric NAT must not be punchable this way (mapped {a_pub}, {b_pub})"
    );
}

#[test]
fn upnp_and_nat_pmp_open_ports_from_outside() {
    if skipped("upnp") {
        return;
    }
    if !have_program("upnpc") {
        println!("SKIPPED: homenet upnp: upnpc is not installed (apt-get install miniupnpc)");
        return;
    }
    let net = build(&[public(), home(Nat::Upnp)]);
    let (server, h) = (&net.hosts()[0], &net.hosts()[1]);
    let out = udp(server, 7000);
    let timeout = Duration::from_secs(10);

    // UPnP-IGD with SSDP discovery. `-i`: miniupnpc takes 198.18.0.0/15 for
    // a reserved (not connected) external address and gives up otherwise.
    let (ok, text) = run_in(
        &h.ns,
        &["upnpc", "-i", "-a", "192.168.1.2", "42000", "42000", "UDP"],
        timeout,
    );
    assert!(ok, "upnpc -a failed: {text}");
    assert!(text.contains("ExternalIPAddress = 198.18.1.1"), "{text}");
    assert!(
        text.contains("is redirected to internal 192.168.1.2:42000"),
        "{text}"
    );
    let maps = net.upnp_mappings(h).unwrap();
    assert!(
        maps.iter().any(|m| m.protocol == "UDP"
            && m.external_port == 42000
            && m.internal == SocketAddrV4::new(homenet::LAN_HOST, 42000)),
        "{maps:?}"
    );
    let inside = udp(h, 42000);
    let seen = deliver(
        &out,
        SocketAddrV4::new(h.public_ip, 42000),
        &inside,
        b"mapped",
    )
    .expect("a public host reaches the mapped port unsolicited");
    assert_eq!(seen, SocketAddrV4::new(server.ip, 7000));
    // An unmapped port stays closed.
    let closed = udp(h, 42002);
    out.send_to(b"knock", (h.public_ip, 42002)).unwrap();
    assert!(!anything_arrives(&closed, Duration::from_millis(300)));

    // TCP, straight at the description URL (no discovery).
    let url = format!(
        "http://192.168.1.1:{}/rootDesc.xml",
        homenet::UPNP_HTTP_PORT
    );
    let (ok, text) = run_in(
        &h.ns,
        &[
            "upnpc",
            "-i",
            "-u",
            &url,
            "-a",
            "192.168.1.2",
            "42003",
            "42003",
            "TCP",
        ],
        timeout,
    );
    assert!(
        ok && text.contains("is redirected"),
        "upnpc TCP failed: {text}"
    );
    let listener = homenet::in_ns(&h.ns, || TcpListener::bind("0.0.0.0:42003").unwrap()).unwrap();
    let c = homenet::in_ns(&server.ns, || {
        TcpStream::connect_timeout(
            &SocketAddr::from((h.public_ip, 42003)),
            Duration::from_secs(2),
        )
    })
    .unwrap();
    assert!(c.is_ok(), "TCP through the UPnP mapping: {c:?}");
    let (_, peer) = listener.accept().unwrap();
    assert_eq!(v4(peer).ip(), &server.ip);

    // NAT-PMP (PCP shares its port; Debian has no PCP client to try it).
    if !have_program("natpmpc") {
        println!("SKIPPED: homenet upnp, NAT-PMP part: natpmpc is not installed (apt-get install natpmpc)");
        return;
    }
    let (ok, text) = run_in(&h.ns, &["natpmpc", "-g", "192.168.1.1"], timeout);
    assert!(
        ok && text.contains("Public IP address : 198.18.1.1"),
        "natpmpc: {text}"
    );
    let (ok, text) = run_in(
        &h.ns,
        &[
            "natpmpc",
            "-g",
            "192.168.1.1",
            "-a",
            "42001",
            "42001",
            "udp",
            "60",
        ],
        timeout,
    );
    assert!(
        ok && text.contains("Mapped public port 42001 protocol UDP to local port 42001"),
        "natpmpc -a: {text}"
    );
    assert!(net
        .upnp_mappings(h)
        .unwrap()
        .iter()
        .any(|m| m.external_port == 42001 && m.description.contains("NAT-PMP")));
    let inside = udp(h, 42001);
    deliver(&out, SocketAddrV4::new(h.public_ip, 42001), &inside, b"pmp")
        .expect("a public host reaches the NAT-PMP mapping unsolicited");
}

#[test]
fn drop_removes_namespaces_daemons_and_files() {
    if skipped("drop") {
        return;
    }
    let root_links = net::run_tool("ip", &["-o", "link", "show"]).unwrap();
    let net = build(&[
        HomeSpec {
            nat: None,
            shape: Shape {
                up_bps: Some(20_000_000),
                down_bps: Some(30_000_000),
            },
        },
        HomeSpec {
            nat: Some(Nat::Upnp),
            shape: Shape {
                up_bps: Some(2_000_000),
                down_bps: Some(10_000_000),
            },
        },
        home(Nat::PortPreserving),
    ]);
    assert_eq!(
        net::run_tool("ip", &["-o", "link", "show"]).unwrap(),
        root_links,
        "nothing appears in the root namespace"
    );
    let h = &net.hosts()[1];
    let router = h.router_ns.clone().unwrap();
    // Shaping: upload on the host, download on the router's LAN side, and
    // on the public host's own egress and bridge port.
    let qdisc = |ns: &str, dev: &str| {
        net::run_tool("tc", &["-n", ns, "qdisc", "show", "dev", dev]).unwrap()
    };
    assert!(qdisc(&h.ns, "eth0").contains("htb"));
    assert!(qdisc(&router, "eth1").contains("htb"));
    assert!(qdisc(&net.hosts()[0].ns, "eth0").contains("htb"));
    assert!(qdisc(net.inet_ns(), "pub1").contains("htb"));
    assert!(!qdisc(&net.hosts()[2].ns, "eth0").contains("htb"));
    // Routes: nothing beyond the plan.
    let routes = |ns: &str| net::run_tool("ip", &["-n", ns, "-4", "route", "show"]).unwrap();
    for ns in [
        &router,
        &net.hosts()[0].ns,
        net.hosts()[2].router_ns.as_ref().unwrap(),
    ] {
        for line in routes(ns).lines() {
            let dest = line.split_whitespace().next().unwrap();
            assert!(
                dest == "198.18.0.0/15" || dest == "192.168.1.0/24",
                "{ns}: {line}"
            );
        }
    }
    for home in [h, &net.hosts()[2]] {
        let table = routes(&home.ns);
        assert_eq!(table.lines().count(), 2, "{table}");
        for line in table.lines() {
            assert!(
                line.starts_with("default via 192.168.1.1 dev eth0")
                    || line.starts_with("192.168.1.0/24 dev eth0"),
                "{}: {line}",
                home.ns
            );
        }
    }

    let pid = net.upnp_pid(h).expect("miniupnpd runs");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "miniupnpd"
    );
    let dir = net.state_dir().unwrap().to_path_buf();
    assert!(dir.join("r1.conf").is_file());
    assert_eq!(
        std::fs::read_to_string(dir.join("r1.pid")).unwrap().trim(),
        pid.to_string()
    );
    assert!(net
        .upnp_log(h)
        .unwrap()
        .contains("Port forwarding is now enabled"));
    let mut names: Vec<String> = net.hosts().iter().map(|h| h.ns.clone()).collect();
    names.extend(net.hosts().iter().filter_map(|h| h.router_ns.clone()));
    names.push(net.inet_ns().to_string());
    assert!(names.iter().all(|n| net::list_namespaces().contains(n)));
    drop(net);
    let left = net::list_namespaces();
    assert!(names.iter().all(|n| !left.contains(n)), "left: {left:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "miniupnpd {pid} still runs"
    );
    assert!(!dir.exists(), "{} is left", dir.display());
}

#[test]
fn many_homes_of_every_kind_each_reach_the_public_host_from_their_own_address() {
    if skipped("many homes") {
        return;
    }
    let kinds = [Nat::PortPreserving, Nat::Symmetric, Nat::Upnp];
    let mut specs = vec![public()];
    specs.extend((0..9).map(|i| home(kinds[i % 3])));
    specs.push(public());
    let started = Instant::now();
    let net = build(&specs);
    let built = started.elapsed();
    let hosts = net.hosts();
    assert_eq!(hosts[10].ip, Ipv4Addr::new(198, 18, 0, 2));
    let listen = udp(&hosts[0], 7000);
    let mut seen = HashSet::new();
    for h in &hosts[1..] {
        let s = udp(h, 40000);
        let src = deliver(
            &s,
            SocketAddrV4::new(hosts[0].ip, 7000),
            &listen,
            h.ns.as_bytes(),
        )
        .unwrap_or_else(|| panic!("{} cannot reach the public host", h.ns));
        assert_eq!(*src.ip(), h.public_ip);
        seen.insert(*src.ip());
    }
    assert_eq!(seen.len(), 10);
    println!("built 11 hosts (3 UPnP routers) in {built:?}");
}

#[test]
fn a_tag_without_this_pid_is_refused() {
    let e = HomeNet::build("clab1x", &[public()]).unwrap_err();
    assert!(e.to_string().contains("pid"), "{e}");
    let e = HomeNet::build("other", &[public()]).unwrap_err();
    assert!(e.to_string().contains("tag"), "{e}");
}
