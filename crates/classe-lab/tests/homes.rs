//! Pupils and the teacher at home, each behind its own home router (NAT,
//! nothing unsolicited let in), the school's seed node and relay on a
//! public address: real `classe` processes in network namespaces
//! (`classe_lab::homenet`). What must hold for the swarm to form at home:
//!
//! - behind port-preserving NATs the late pupil gets most of its bytes
//!   from the early one, over a direct path punched through both routers;
//! - behind symmetric NATs the fetch still completes, through the relay,
//!   and the counters say so;
//! - behind a router with miniupnpd the pupil's peer-exchange entry
//!   carries the mapped public address, and a classmate behind a
//!   symmetric NAT (who cannot hole-punch) connects to it directly;
//! - every address in use is inside the lab, and the only relay is the
//!   seed's.
//!
//! Needs root, `ip netns`, iptables (legacy) and miniupnpd (`.ci/run`
//! installs them); otherwise each test prints `SKIPPED:` and why. The
//! classe binary is `target/debug/classe`, or `$CLASSE_BIN`. Delay is not
//! emulated (the kernel has no `sch_netem`): paths differ in rate only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use classe_lab::{
    homenet::{self, HomeHost, HomeNet, HomeSpec, Nat},
    lesson::Lesson,
    net::{self, Shape},
};

mod common;
use common::{classe_bin, Running};
/// The relay's port on the seed host.
const RELAY_PORT: u16 = 3340;
const SEED_PORT: u16 = 4100;

static LABS: AtomicUsize = AtomicUsize::new(0);

/// One test's network: host 0 is the school (public), then the homes.
struct Homes {
    net: HomeNet,
    dir: tempfile::TempDir,
    relay_url: String,
    /// The seed's first bootstrap address (`/ip4/…/tcp/4100/p2p/…`).
    bootstrap: String,
    seed: Option<Running>,
}

impl Homes {
    /// The school's seed node with its relay, and one home per `nat`
    /// (upload shaped to `up_bps[i]`). None: cannot run here.
    fn new(homes: &[(Nat, Option<u64>)]) -> Option<Self> {
        if let Err(why) = homenet::probe_nat() {
            println!("SKIPPED: home routers cannot be emulated here: {why}");
            return None;
        }
        let k = LABS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{}h{k}", net::NS_PREFIX, std::process::id());
        let mut specs = vec![HomeSpec {
            nat: None,
            shape: Shape {
                up_bps: None,
                down_bps: None,
            },
        }];
        specs.extend(homes.iter().map(|(nat, up)| HomeSpec {
            nat: Some(*nat),
            shape: Shape {
                up_bps: *up,
                down_bps: None,
            },
        }));
        let net = HomeNet::build(&tag, &specs).unwrap();
        // A counter of every packet a host sends outside the lab (the
        // emulated internet and its own LAN), dropped: see
        // `assert_nothing_left_the_lab`.
        for host in net.hosts() {
            let ok = Command::new("ip")
                .args(["netns", "exec", &host.ns, "iptables-legacy", "-A", "OUTPUT"])
                .args(["!", "-o", "lo", "!", "-d", "198.18.0.0/15"])
                .args([
                    "-m",
                    "comment",
                    "--comment",
                    "outside-the-lab",
                    "-j",
                    "DROP",
                ])
                .status()
                .unwrap()
                .success();
            assert!(
                ok,
                "cannot install the outside-the-lab counter in {}",
                host.ns
            );
            // The home LAN, and link-local multicast on it (the port
            // mapper's UPnP discovery, SSDP to 239.255.255.250, which no
            // router forwards), stay in the home.
            for dest in ["192.168.1.0/24", "224.0.0.0/4"] {
                let ok = Command::new("ip")
                    .args(["netns", "exec", &host.ns, "iptables-legacy", "-I", "OUTPUT"])
                    .args(["-d", dest, "-j", "ACCEPT"])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
            }
        }
        let mut h = Homes {
            net,
            dir: tempfile::tempdir().unwrap(),
            relay_url: String::new(),
            bootstrap: String::new(),
            seed: None,
        };
        let school = h.host(0).ip;
        let listen = format!("{school}:{SEED_PORT}");
        let relay = format!("{school}:{RELAY_PORT}");
        let seed = h.spawn(
            0,
            "school",
            &[
                "seed",
                "--listen",
                &listen,
                "--no-mdns",
                "--relay-server",
                &relay,
            ],
        );
        // Bootstrap address lines first, then JSON events: the relay's.
        let mut bootstrap = String::new();
        let url = loop {
            let line = seed.line();
            if line.starts_with("/ip4/") && bootstrap.is_empty() {
                bootstrap = line.clone();
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["event"] == "relay" {
                    break v["url"].as_str().unwrap().to_string();
                }
            }
        };
        h.relay_url = url;
        h.bootstrap = bootstrap;
        h.seed = Some(seed);
        Some(h)
    }

    fn host(&self, i: usize) -> &HomeHost {
        &self.net.hosts()[i]
    }

    fn command(&self, host: usize, home: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host(host).ns])
            .arg(classe_bin())
            .arg("--home")
            .arg(self.dir.path().join(home));
        if let Ok(filter) = std::env::var("HOMES_LOG") {
            c.env("CLASSE_LOG", filter);
        }
        c
    }

    fn spawn(&self, host: usize, home: &str, args: &[&str]) -> Running {
        let mut cmd = self.command(host, home);
        cmd.args(args);
        Running::spawn(
            cmd,
            format!("{home} {}", args.first().copied().unwrap_or("")),
        )
    }

    fn author_key(&self, host: usize, home: &str) -> String {
        let out = self.command(host, home).arg("id").output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The teacher at home (host `host`) shares `lesson`; its process
    /// and ticket.
    fn share(&self, host: usize, lesson: &Path, dht: bool) -> (Running, String) {
        let mut args = vec![
            "share",
            lesson.to_str().unwrap(),
            "--relay",
            &self.relay_url,
        ];
        args.extend(self.discovery(dht));
        let sharer = self.spawn(host, "teacher", &args);
        let ticket = sharer.line();
        (sharer, ticket)
    }

    /// `--bootstrap <seed> --no-mdns` with the DHT, else `--no-discovery`.
    fn discovery(&self, dht: bool) -> Vec<&str> {
        if dht {
            vec!["--bootstrap", &self.bootstrap, "--no-mdns"]
        } else {
            vec!["--no-discovery"]
        }
    }

    /// A pupil at home fetches by ticket alone; its process and the JSON
    /// summary.
    fn fetch(
        &self,
        host: usize,
        ticket: &str,
        key: &str,
        keep_sharing: bool,
    ) -> (Running, Summary) {
        self.fetch_with(host, ticket, key, keep_sharing, false)
    }

    /// As `fetch`, with the DHT through the seed when `dht`.
    fn fetch_with(
        &self,
        host: usize,
        ticket: &str,
        key: &str,
        keep_sharing: bool,
        dht: bool,
    ) -> (Running, Summary) {
        let home = format!("pupil{host}");
        let out = self.dir.path().join(format!("out{host}"));
        let out = out.to_str().unwrap().to_string();
        let mut args = vec![
            "fetch",
            ticket,
            "--trust",
            key,
            "--relay",
            &self.relay_url,
            "--json",
            "--out",
            &out,
        ];
        args.extend(self.discovery(dht));
        if !keep_sharing {
            args.push("--no-seed");
        }
        let p = self.spawn(host, &home, &args);
        let line = p.line();
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        (
            p,
            Summary {
                json,
                out: PathBuf::from(out),
            },
        )
    }
}

impl Drop for Homes {
    fn drop(&mut self) {
        // Processes before the namespaces they run in.
        self.seed.take();
    }
}

/// What `fetch --json` printed.
struct Summary {
    json: serde_json::Value,
    out: PathBuf,
}

impl Summary {
    fn node_id(&self) -> String {
        self.json["node_id"].as_str().unwrap().to_string()
    }

    fn from(&self, peer: &str) -> u64 {
        self.json["per_provider"][peer].as_u64().unwrap_or(0)
    }

    fn path(&self, peer: &str, field: &str) -> u64 {
        self.json["paths"][peer][field].as_u64().unwrap_or(0)
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.json["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().parse().unwrap())
            .collect()
    }
}

/// The node id (hex) of a ticket's first provider.
fn node_id_of_ticket(ticket: &str) -> String {
    let t = ticket.parse::<classe_bundle::Ticket>().unwrap();
    data_encoding::HEXLOWER.encode(&t.providers[0].node_id)
}

/// Every address a node listed is inside the lab: the emulated internet
/// or a home LAN.
fn assert_in_lab(addrs: &[SocketAddr]) {
    for a in addrs {
        let SocketAddr::V4(v4) = a else {
            panic!("an IPv6 address {a} in a lab that has none");
        };
        let ip = *v4.ip();
        assert!(
            homenet::is_internet(ip) || ip.octets()[..3] == [192, 168, 1] || ip.is_loopback(),
            "address {a} is outside the lab"
        );
    }
}

/// No host sent a packet outside the lab: no public relay, no DNS, no
/// gateway probe ever left (the counter the lab installed stayed at zero).
fn assert_nothing_left_the_lab(h: &Homes) {
    for host in h.net.hosts() {
        let out = Command::new("ip")
            .args(["netns", "exec", &host.ns, "iptables-legacy", "-L", "OUTPUT"])
            .args(["-n", "-v", "-x"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("outside-the-lab"))
            .unwrap_or_else(|| panic!("no counter in {}: {text}", host.ns));
        let packets: u64 = line.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(
            packets, 0,
            "{} sent {packets} packet(s) outside the lab: {line}",
            host.ns
        );
    }
}

fn assert_relay_in_lab(h: &Homes) {
    let url = url_host(&h.relay_url);
    assert!(
        homenet::is_internet(url),
        "relay {} is not the lab's seed",
        h.relay_url
    );
    assert_eq!(url, h.host(0).ip, "the relay in use is not the seed's");
}

fn url_host(url: &str) -> Ipv4Addr {
    let rest = url.split_once("://").unwrap().1;
    rest.split([':', '/']).next().unwrap().parse().unwrap()
}

fn lesson(dir: &Path, mb: u64) -> Lesson {
    Lesson::create(dir, mb * 1_000_000, 4, 7).unwrap()
}

#[test]
fn behind_port_preserving_nats_the_late_pupil_gets_most_from_the_early_one_directly() {
    // Teacher 16 Mbit/s up at home; pupils 80 Mbit/s up.
    let Some(h) = Homes::new(&[
        (Nat::PortPreserving, Some(16_000_000)),
        (Nat::PortPreserving, Some(80_000_000)),
        (Nat::PortPreserving, Some(80_000_000)),
    ]) else {
        return;
    };
    assert_relay_in_lab(&h);
    let lesson = lesson(h.dir.path(), 8);
    let key = h.author_key(1, "teacher");
    let (_teacher, ticket) = h.share(1, lesson.dir(), false);
    let teacher = node_id_of_ticket(&ticket);
    // The ticket carries the teacher's relay and its public address (the
    // router's), learnt from the relay's address discovery.
    let t = ticket.parse::<classe_bundle::Ticket>().unwrap();
    assert_eq!(
        t.providers[0].relay_url.as_deref().map(url_host),
        Some(h.host(0).ip)
    );
    assert!(
        t.providers[0]
            .addrs
            .iter()
            .any(|a| a.ip() == h.host(1).public_ip),
        "the ticket lists no public address: {:?}",
        t.providers[0].addrs
    );
    assert_in_lab(&t.providers[0].addrs);

    let (_early, s1) = h.fetch(2, &ticket, &key, true);
    lesson.verify(&s1.out).unwrap();
    assert_in_lab(&s1.addrs());
    assert!(
        s1.addrs().iter().any(|a| a.ip() == h.host(2).public_ip),
        "the early pupil does not advertise its public address: {:?}",
        s1.addrs()
    );
    let early = s1.node_id();
    let (_late, s2) = h.fetch(3, &ticket, &key, false);
    lesson.verify(&s2.out).unwrap();
    let total = lesson.total();
    let from_early = s2.from(&early);
    println!(
        "late pupil: {from_early} B from the early pupil, {} B from the teacher; paths to the early pupil: {}",
        s2.from(&teacher),
        s2.json["paths"][&early]
    );
    assert!(
        from_early * 2 > total,
        "the late pupil got only {from_early} of {total} bytes from its classmate"
    );
    let direct = s2.path(&early, "direct_received");
    let relayed = s2.path(&early, "relay_received");
    assert!(
        direct > 4 * relayed,
        "the classmate's bytes went through the relay ({relayed} relayed, {direct} direct): no hole punched"
    );
    assert_nothing_left_the_lab(&h);
}

#[test]
fn behind_symmetric_nats_the_fetch_completes_through_the_relay() {
    let Some(h) = Homes::new(&[
        (Nat::Symmetric, Some(40_000_000)),
        (Nat::Symmetric, Some(40_000_000)),
    ]) else {
        return;
    };
    assert_relay_in_lab(&h);
    let lesson = lesson(h.dir.path(), 3);
    let key = h.author_key(1, "teacher");
    let (_teacher, ticket) = h.share(1, lesson.dir(), false);
    let teacher = node_id_of_ticket(&ticket);
    let (_p, s) = h.fetch(2, &ticket, &key, false);
    lesson.verify(&s.out).unwrap();
    let relayed = s.path(&teacher, "relay_received");
    let direct = s.path(&teacher, "direct_received");
    println!("symmetric: {relayed} B relayed, {direct} B direct from the teacher");
    assert!(
        relayed as f64 > 0.9 * lesson.total() as f64,
        "only {relayed} bytes came through the relay ({direct} direct) between two symmetric NATs"
    );
    assert!(s.from(&teacher) >= lesson.total());
    assert_nothing_left_the_lab(&h);
}

#[test]
fn behind_a_upnp_router_the_pupil_advertises_its_mapped_port_and_a_classmate_uses_it() {
    // The early pupil's router maps a port (miniupnpd); the late pupil is
    // behind a symmetric NAT, so a direct path to its classmate exists only
    // through that mapping.
    // The teacher's 4 Mbit/s makes the early pupil's fetch last ~12 s: the
    // port mapping (a few seconds after start, more on a loaded machine)
    // is in place when it prints its addresses.
    let Some(h) = Homes::new(&[
        (Nat::PortPreserving, Some(4_000_000)),
        (Nat::Upnp, Some(80_000_000)),
        (Nat::Symmetric, Some(80_000_000)),
    ]) else {
        return;
    };
    let lesson = lesson(h.dir.path(), 6);
    let key = h.author_key(1, "teacher");
    let (_teacher, ticket) = h.share(1, lesson.dir(), false);
    let (_early, s1) = h.fetch(2, &ticket, &key, true);
    lesson.verify(&s1.out).unwrap();
    let mappings = h.net.upnp_mappings(h.host(2)).unwrap();
    println!(
        "router mappings: {mappings:?}; pupil addrs: {:?}",
        s1.addrs()
    );
    let mapped: Vec<SocketAddr> = s1
        .addrs()
        .into_iter()
        .filter(|a| {
            a.ip() == h.host(2).public_ip
                && mappings
                    .iter()
                    .any(|m| m.protocol.eq_ignore_ascii_case("udp") && m.external_port == a.port())
        })
        .collect();
    assert!(
        !mapped.is_empty(),
        "no advertised address is a port mapped on the router ({mappings:?})"
    );
    let early = s1.node_id();
    let (_late, s2) = h.fetch(3, &ticket, &key, false);
    lesson.verify(&s2.out).unwrap();
    let direct = s2.path(&early, "direct_received");
    println!(
        "late pupil: {} B from the UPnP pupil, paths {}",
        s2.from(&early),
        s2.json["paths"][&early]
    );
    assert!(
        direct > 0 && direct > s2.path(&early, "relay_received"),
        "the classmate behind the symmetric NAT did not reach the mapped port directly"
    );
    // And it was the mapped port: the UPnP router translated a flow from
    // the late pupil's public address to one of the advertised mappings.
    // (`conntrack` lists a flow by its first packet: from the classmate to
    // the mapped port, or from the pupil out through it.)
    let late = h.host(3).public_ip;
    let is_mapped = |port: u16| mapped.iter().any(|m| m.port() == port);
    let flows = h.net.nat_flows(h.host(2)).unwrap();
    assert!(
        flows.iter().any(|f| f.protocol == "udp"
            && ((*f.internal.ip() == late && is_mapped(f.remote.port()))
                || (*f.remote.ip() == late && is_mapped(f.external.port())))),
        "no flow between the classmate and a mapped port: {flows:?}"
    );
}

#[test]
fn a_classmate_at_home_found_in_the_dht_is_reached_through_the_relay_by_node_id() {
    // The teacher shares and goes offline; the early pupil keeps sharing
    // and provides the lesson in the DHT. The late pupil finds it there,
    // but cannot dial its discovery port (its router lets nothing in):
    // the data plane reaches it by node id through the school relay and
    // punches a direct path.
    let Some(h) = Homes::new(&[
        (Nat::PortPreserving, Some(40_000_000)),
        (Nat::PortPreserving, Some(80_000_000)),
        (Nat::PortPreserving, Some(80_000_000)),
    ]) else {
        return;
    };
    let lesson = lesson(h.dir.path(), 4);
    let key = h.author_key(1, "teacher");
    let (teacher, ticket) = h.share(1, lesson.dir(), true);
    let (_early, s1) = h.fetch_with(2, &ticket, &key, true, true);
    lesson.verify(&s1.out).unwrap();
    drop(teacher);
    // The early pupil's provider record reaches the seed only once its
    // provide query is over, and that query waits for its TCP dial to the
    // teacher's discovery port, which the teacher's router drops (about
    // 10 s). A classmate arriving later than that finds it.
    std::thread::sleep(Duration::from_secs(15));
    let (_late, s2) = h.fetch_with(3, &ticket, &key, false, true);
    lesson.verify(&s2.out).unwrap();
    let early = s1.node_id();
    println!(
        "late pupil: {} B from the early pupil (paths {}), DHT lookup {}",
        s2.from(&early),
        s2.json["paths"][&early],
        s2.json["dht_lookup"]
    );
    assert!(s2.from(&early) >= lesson.total());
    assert!(
        s2.path(&early, "direct_received") > s2.path(&early, "relay_received"),
        "the bytes stayed on the relay"
    );
}
