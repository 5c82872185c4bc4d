//! The home-network topology: public hosts on an emulated internet, and
//! pupils at home behind emulated home routers that do NAT, as in real
//! life: every home is 192.168.1.0/24, and only the routers have public
//! addresses.
//!
//! ```text
//!   ns <tag>-pub1 (public)    ns <tag>-r1 (home router 1)      ns <tag>-h1 (home host 1)
//!   eth0 198.18.0.1/15        eth0 198.18.1.1/15 (wan)         eth0 192.168.1.2/24
//!   egress: HTB up            eth1 192.168.1.1/24 (lan) ------ default via 192.168.1.1
//!     |                       eth1 egress: HTB down of h1      egress: HTB up of h1
//!     |                       iptables: FORWARD DROP, NAT,
//!     |                       [miniupnpd -d on eth1 (Upnp)]
//!     |                         |
//!   ==|=========================|=================================== ns <tag>-inet
//!   pub1 (egress: HTB down)   r1 (unshaped)          ...  rI           br0
//! ```
//!
//! The "internet" is 198.18.0.0/15 (RFC 2544's benchmarking range, not
//! private space, so that NAT'ed hosts see real-looking public addresses):
//! public host K is 198.18.0.K, home router I is 198.18.I.1 (198.19.x.1
//! past 255). No namespace has a route outside 198.18.0.0/15 and
//! 192.168.1.0/24 except a home host's default route via its router, and a
//! router forwards from its LAN to 198.18.0.0/15 only. From the WAN side a
//! router lets in only what belongs to a flow started inside (conntrack
//! ESTABLISHED,RELATED), plus, with [`Nat::Upnp`], what miniupnpd mapped.
//!
//! Both ends of every veth pair are created directly inside their
//! namespaces, so nothing ever appears in the root namespace. Rules are
//! loaded with `iptables-legacy-restore`: the Debian `miniupnpd-iptables`
//! build edits its chains with libiptc, which is the legacy backend.
//!
//! miniupnpd refuses to map ports when its external address is "reserved",
//! and 198.18.0.0/15 is, unless a STUN server confirms that the address is
//! public (`ext_perform_stun`). While the network is built, a tiny STUN
//! responder (a thread of this process, in the internet namespace, at
//! [`STUN_ADDR`]) answers the routers' checks; it and its address are gone
//! once [`HomeNet::build`] returns. miniupnpd checks again only if its
//! WAN address changes, which never happens here.
//!
//! Everything created is recorded as it is created and removed by
//! [`HomeNet::destroy`] (also on drop): miniupnpd processes (by pid),
//! namespaces, and the folder of their configuration, pid and lease files.

use std::{
    fs::File,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use nix::{
    sched::CloneFlags,
    sys::signal::{killpg, Signal},
    unistd::Pid,
};

use crate::net::{self, ip, link_counters, run_tool, shape_egress, LinkCounters, Shape};

/// The emulated internet: every public address is in here.
pub const INTERNET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);

/// Every home router's LAN address (the same in every home).
pub const LAN_ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

/// Every home host's address (the same in every home).
pub const LAN_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

/// Where the build-time STUN responder listens (on the internet bridge).
pub const STUN_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 255, 254), 3478);

/// The HTTP port of miniupnpd on a [`Nat::Upnp`] router's LAN address
/// (`http://192.168.1.1:5000/rootDesc.xml`); NAT-PMP and PCP are on 5351.
pub const UPNP_HTTP_PORT: u16 = 5000;

/// Most public hosts one network may have.
pub const MAX_PUBLIC: usize = 250;

/// Most homes one network may have (the address plan allows 511).
pub const MAX_HOMES: usize = net::MAX_PUPILS;

/// How long one miniupnpd may take to come up.
const DAEMON_START: Duration = Duration::from_secs(10);

/// How a home router translates addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nat {
    /// `MASQUERADE`: Linux keeps the source port when it can, so one
    /// socket has one external port whatever the destination
    /// (endpoint-independent mapping, like most home boxes). Hole punching
    /// works.
    PortPreserving,
    /// `MASQUERADE --random-fully`: a new random external port for every
    /// flow (address- and port-dependent mapping). Hole punching fails.
    Symmetric,
    /// [`Nat::PortPreserving`] plus miniupnpd on the LAN: UPnP-IGD,
    /// NAT-PMP and PCP port mappings from 192.168.1.0/24, ports 1024-65535.
    Upnp,
}

/// One host to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HomeSpec {
    /// The router in front of it; `None` is a public host on the internet
    /// bridge (a school's seed node, a relay).
    pub nat: Option<Nat>,
    /// Its rates.
    pub shape: Shape,
}

/// One built host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeHost {
    /// Its namespace.
    pub ns: String,
    /// Its own address: 192.168.1.2 at home, its public one otherwise.
    pub ip: Ipv4Addr,
    /// The address others see: its router's WAN address, or its own.
    pub public_ip: Ipv4Addr,
    /// Its router's NAT, `None` for a public host.
    pub nat: Option<Nat>,
    /// Its router's namespace, `None` for a public host.
    pub router_ns: Option<String>,
    /// Its rates.
    pub shape: Shape,
}

/// One port mapping that miniupnpd holds (from its lease file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// "UDP" or "TCP".
    pub protocol: String,
    /// The port on the router's WAN address.
    pub external_port: u16,
    /// Where it leads, on the LAN.
    pub internal: SocketAddrV4,
    /// What the client called it ("NAT-PMP 4000 udp", "libminiupnpc").
    pub description: String,
}

/// One connection-tracking entry of a router (`conntrack -L`): a flow
/// and the address it was translated to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatFlow {
    /// "udp" or "tcp".
    pub protocol: String,
    /// The source as sent (inside: 192.168.1.2:port).
    pub internal: SocketAddrV4,
    /// The destination.
    pub remote: SocketAddrV4,
    /// The source the remote end sees (the router's WAN address and the
    /// external port).
    pub external: SocketAddrV4,
}

/// A miniupnpd we started.
#[derive(Debug)]
struct Daemon {
    /// Index into `hosts` of the home host behind it.
    host: usize,
    child: Child,
    lease_file: PathBuf,
    log_file: PathBuf,
}

/// A built home network. Dropping it removes it.
#[derive(Debug)]
pub struct HomeNet {
    inet_ns: String,
    hosts: Vec<HomeHost>,
    /// Every namespace created so far, in order.
    created: Vec<String>,
    daemons: Vec<Daemon>,
    /// Configuration, pid, lease and log files of the daemons.
    dir: Option<tempfile::TempDir>,
}

/// The WAN address of home router `i` (1-based).
pub fn router_wan_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18 + (i / 256) as u8, (i % 256) as u8, 1)
}

/// The address of public host `k` (1-based).
pub fn public_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, k as u8)
}

/// Whether `a` is in the emulated internet.
pub fn is_internet(a: Ipv4Addr) -> bool {
    a.octets()[0] == 198 && (a.octets()[1] & 0xfe) == 18
}

fn iptables_legacy_ok() -> bool {
    crate::scenario::have_program("iptables-legacy")
        && crate::scenario::have_program("iptables-legacy-restore")
}

/// Whether NAT routers and UPnP routers can be emulated here: root,
/// network namespaces, `iptables-legacy` with the nat table, conntrack
/// matching and `--random-fully` (tried in a throw-away namespace), and a
/// miniupnpd built for iptables. The error says what is missing. The
/// answer is computed once per process.
pub fn probe_nat() -> std::result::Result<(), String> {
    static PROBE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe_nat_uncached).clone()
}

fn probe_nat_uncached() -> std::result::Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root".into());
    }
    if !iptables_legacy_ok() {
        return Err("iptables-legacy is not installed (apt-get install iptables)".into());
    }
    if !crate::scenario::have_program("miniupnpd") {
        return Err("miniupnpd is not installed (apt-get install miniupnpd-iptables)".into());
    }
    let version = Command::new("miniupnpd")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run miniupnpd: {e}"))?;
    let text = String::from_utf8_lossy(&version.stdout).into_owned()
        + &String::from_utf8_lossy(&version.stderr);
    if !text.contains("iptables") {
        return Err(format!(
            "this miniupnpd is not the iptables build (install miniupnpd-iptables): {}",
            text.trim()
        ));
    }
    let ns = format!("{}{}natprobe", net::NS_PREFIX, std::process::id());
    ip(&["netns", "add", &ns]).map_err(|e| format!("network namespaces unavailable: {e:#}"))?;
    let r = restore_rules(&ns, &router_rules(Nat::Symmetric))
        .and_then(|()| restore_rules(&ns, &router_rules(Nat::Upnp)))
        .map_err(|e| format!("iptables-legacy NAT does not work in a namespace: {e:#}"));
    if let Err(e) = ip(&["netns", "del", &ns]) {
        return Err(format!("could not remove probe namespace {ns}: {e:#}"));
    }
    r
}

/// The iptables-restore input of a home router.
fn router_rules(nat: Nat) -> String {
    let upnp = nat == Nat::Upnp;
    let (net_ip, net_len) = INTERNET;
    let mut r = String::new();
    r += "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n";
    if upnp {
        r += ":MINIUPNPD - [0:0]\n";
    }
    // Nothing unsolicited reaches the router itself from the WAN.
    r += "-A INPUT -i eth0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n";
    r += "-A INPUT -i eth0 -j DROP\n";
    r += "-A FORWARD -i eth0 -o eth1 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n";
    if upnp {
        r += "-A FORWARD -i eth0 -o eth1 -j MINIUPNPD\n";
    }
    r += &format!("-A FORWARD -i eth1 -o eth0 -s 192.168.1.0/24 -d {net_ip}/{net_len} -j ACCEPT\n");
    r += "COMMIT\n";
    r += "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n";
    if upnp {
        r += ":MINIUPNPD - [0:0]\n:MINIUPNPD-POSTROUTING - [0:0]\n";
        r += "-A PREROUTING -i eth0 -j MINIUPNPD\n";
        r += "-A POSTROUTING -o eth0 -j MINIUPNPD-POSTROUTING\n";
    }
    let random = if nat == Nat::Symmetric {
        " --random-fully"
    } else {
        ""
    };
    r += &format!("-A POSTROUTING -o eth0 -s 192.168.1.0/24 -j MASQUERADE{random}\n");
    r += "COMMIT\n";
    if upnp {
        r += "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n";
        r += ":MINIUPNPD - [0:0]\n-A PREROUTING -i eth0 -j MINIUPNPD\nCOMMIT\n";
    }
    r
}

/// Loads `rules` into `ns` with `iptables-legacy-restore`.
fn restore_rules(ns: &str, rules: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-legacy-restore"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run iptables-legacy-restore")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-legacy-restore in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a new thread that has entered network namespace `ns`, and
/// returns what it returns: sockets it opens live in `ns` (and stay there
/// wherever they are used afterwards). A panic in `f` is passed on.
pub fn in_ns<T: Send, F: FnOnce() -> T + Send>(ns: &str, f: F) -> Result<T> {
    let file = File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("no network namespace {ns}"))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<T> {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("cannot enter network namespace {ns}"))?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Kills every process still running inside a stale lab namespace (one
/// whose lab process is gone, or, with `all_of_pid`, one of that pid:
/// miniupnpd of a lab killed with SIGKILL), then removes those namespaces
/// ([`net::remove_stale`]). Returns the namespaces removed.
pub fn remove_stale(all_of_pid: Option<u32>) -> Vec<String> {
    for ns in net::list_namespaces() {
        let Some(pid) = net::owner_pid(&ns) else {
            continue;
        };
        let dead = !Path::new(&format!("/proc/{pid}")).exists();
        if !(dead || Some(pid) == all_of_pid) {
            continue;
        }
        if let Ok(out) = run_tool("ip", &["netns", "pids", &ns]) {
            for p in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL).ok();
            }
        }
    }
    net::remove_stale(all_of_pid)
}

impl HomeNet {
    /// Builds the network: one host per spec, in order. `tag` must start
    /// with [`net::NS_PREFIX`] and this process's pid (so that
    /// `classe-lab clean` finds leftovers) and be unique on the machine.
    pub fn build(tag: &str, specs: &[HomeSpec]) -> Result<Self> {
        if net::owner_pid(tag) != Some(std::process::id()) {
            bail!(
                "a home network's tag must be {}<pid><suffix> with this process's pid {}, not {tag}",
                net::NS_PREFIX,
                std::process::id()
            );
        }
        let publics = specs.iter().filter(|s| s.nat.is_none()).count();
        let homes = specs.len() - publics;
        if specs.is_empty() || publics > MAX_PUBLIC || homes > MAX_HOMES {
            bail!("a home network needs 1..={MAX_PUBLIC} public hosts and 0..={MAX_HOMES} homes");
        }
        if !iptables_legacy_ok() && homes > 0 {
            bail!("home routers need iptables-legacy (apt-get install iptables)");
        }
        if specs.iter().any(|s| s.nat == Some(Nat::Upnp))
            && !crate::scenario::have_program("miniupnpd")
        {
            bail!("Nat::Upnp needs miniupnpd (apt-get install miniupnpd-iptables)");
        }
        let mut net = HomeNet {
            inet_ns: format!("{tag}-inet"),
            hosts: Vec::new(),
            created: Vec::new(),
            daemons: Vec::new(),
            dir: None,
        };
        // On error, `net` is dropped here and removes what exists.
        net.build_inner(tag, specs)?;
        Ok(net)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    fn build_inner(&mut self, tag: &str, specs: &[HomeSpec]) -> Result<()> {
        let inet = self.inet_ns.clone();
        self.add_ns(&inet)?;
        ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &inet, "link", "set", "br0", "up"])?;
        let (mut k, mut i) = (0, 0);
        for spec in specs {
            match spec.nat {
                None => {
                    k += 1;
                    self.add_public(tag, k, spec.shape)?;
                }
                Some(nat) => {
                    i += 1;
                    self.add_home(tag, i, nat, spec.shape)?;
                }
            }
        }
        if self.hosts.iter().any(|h| h.nat == Some(Nat::Upnp)) {
            self.start_daemons()?;
        }
        Ok(())
    }

    /// Plugs veth `dev` of `ns` into the internet bridge as `port`, with
    /// `addr`/15.
    fn plug(&self, ns: &str, dev: &str, port: &str, addr: Ipv4Addr) -> Result<()> {
        let inet = &self.inet_ns;
        ip(&[
            "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port, "netns", inet,
        ])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/{}", INTERNET.1),
            "dev",
            dev,
        ])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", inet, "link", "set", port, "master", "br0"])?;
        ip(&["-n", inet, "link", "set", port, "up"])
    }

    fn add_public(&mut self, tag: &str, k: usize, shape: Shape) -> Result<()> {
        let ns = format!("{tag}-pub{k}");
        let port = format!("pub{k}");
        let addr = public_ip(k);
        self.add_ns(&ns)?;
        self.plug(&ns, "eth0", &port, addr)?;
        shape_egress(&ns, "eth0", shape.up_bps, None)?;
        shape_egress(&self.inet_ns, &port, shape.down_bps, None)?;
        self.hosts.push(HomeHost {
            ns,
            ip: addr,
            public_ip: addr,
            nat: None,
            router_ns: None,
            shape,
        });
        Ok(())
    }

    fn add_home(&mut self, tag: &str, i: usize, nat: Nat, shape: Shape) -> Result<()> {
        let router = format!("{tag}-r{i}");
        let host = format!("{tag}-h{i}");
        let wan = router_wan_ip(i);
        self.add_ns(&router)?;
        self.add_ns(&host)?;
        self.plug(&router, "eth0", &format!("r{i}"), wan)?;
        ip(&[
            "link", "add", "eth1", "netns", &router, "type", "veth", "peer", "name", "eth0",
            "netns", &host,
        ])?;
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("{LAN_ROUTER}/24"),
            "dev",
            "eth1",
        ])?;
        ip(&["-n", &router, "link", "set", "eth1", "up"])?;
        ip(&[
            "-n",
            &host,
            "addr",
            "add",
            &format!("{LAN_HOST}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &host, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &host,
            "route",
            "add",
            "default",
            "via",
            &LAN_ROUTER.to_string(),
        ])?;
        restore_rules(&router, &router_rules(nat))?;
        run_tool(
            "ip",
            &[
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        shape_egress(&host, "eth0", shape.up_bps, None)?;
        shape_egress(&router, "eth1", shape.down_bps, None)?;
        self.hosts.push(HomeHost {
            ns: host,
            ip: LAN_HOST,
            public_ip: wan,
            nat: Some(nat),
            router_ns: Some(router),
            shape,
        });
        Ok(())
    }

    /// Starts miniupnpd in every UPnP router, with the STUN responder up
    /// until all have checked their address.
    fn start_daemons(&mut self) -> Result<()> {
        let dir = tempfile::Builder::new()
            .prefix("classe-homenet-")
            .tempdir()
            .context("cannot create a folder for miniupnpd")?;
        crate::register_path(dir.path());
        let dir_path = dir.path().to_path_buf();
        self.dir = Some(dir);
        let stun = Stun::start(&self.inet_ns)?;
        let r = self.start_daemons_inner(&dir_path);
        stun.stop();
        r
    }

    fn start_daemons_inner(&mut self, dir: &Path) -> Result<()> {
        let upnp: Vec<usize> = (0..self.hosts.len())
            .filter(|&h| self.hosts[h].nat == Some(Nat::Upnp))
            .collect();
        for h in upnp {
            let router = self.hosts[h]
                .router_ns
                .clone()
                .context("upnp host without router")?;
            let name = router.rsplit('-').next().unwrap_or("r").to_string();
            let conf = dir.join(format!("{name}.conf"));
            let pid_file = dir.join(format!("{name}.pid"));
            let lease_file = dir.join(format!("{name}.leases"));
            let log_file = dir.join(format!("{name}.log"));
            std::fs::write(&conf, miniupnpd_conf(h + 1, &lease_file))
                .with_context(|| format!("cannot write {}", conf.display()))?;
            let log = File::create(&log_file)
                .with_context(|| format!("cannot create {}", log_file.display()))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &router, "miniupnpd", "-d", "-f"])
                .arg(&conf)
                .arg("-P")
                .arg(&pid_file)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .context("cannot start miniupnpd (ip netns exec)")?;
            self.daemons.push(Daemon {
                host: h,
                child,
                lease_file,
                log_file,
            });
        }
        let deadline = Instant::now() + DAEMON_START;
        for d in &mut self.daemons {
            wait_ready(d, deadline)?;
        }
        Ok(())
    }

    /// The hosts, in the order of the specs.
    pub fn hosts(&self) -> &[HomeHost] {
        &self.hosts
    }

    /// The namespace of the internet bridge.
    pub fn inet_ns(&self) -> &str {
        &self.inet_ns
    }

    /// The folder of miniupnpd's configuration, pid, lease and log files,
    /// if any router runs it (removed with the network).
    pub fn state_dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }

    /// Bytes the host's `eth0` has received and sent (all layers).
    pub fn counters(&self, host: &HomeHost) -> Result<LinkCounters> {
        link_counters(&host.ns, "eth0")
    }

    fn daemon(&self, host: &HomeHost) -> Result<&Daemon> {
        self.daemons
            .iter()
            .find(|d| self.hosts[d.host].ns == host.ns)
            .with_context(|| format!("{} is not behind a UPnP router", host.ns))
    }

    /// The pid of the miniupnpd in front of `host`, if it has one.
    pub fn upnp_pid(&self, host: &HomeHost) -> Option<u32> {
        self.daemon(host).ok().map(|d| d.child.id())
    }

    /// What miniupnpd has logged so far for `host`'s router.
    pub fn upnp_log(&self, host: &HomeHost) -> Result<String> {
        let d = self.daemon(host)?;
        std::fs::read_to_string(&d.log_file)
            .with_context(|| format!("cannot read {}", d.log_file.display()))
    }

    /// The port mappings miniupnpd holds for `host`'s router now (UPnP,
    /// NAT-PMP and PCP alike), from its lease file.
    pub fn upnp_mappings(&self, host: &HomeHost) -> Result<Vec<PortMapping>> {
        let d = self.daemon(host)?;
        match std::fs::read_to_string(&d.lease_file) {
            Ok(text) => Ok(parse_leases(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", d.lease_file.display())),
        }
    }

    /// The connection-tracking entries of `host`'s router (needs the
    /// `conntrack` tool): which external port each flow got.
    pub fn nat_flows(&self, host: &HomeHost) -> Result<Vec<NatFlow>> {
        let router = host
            .router_ns
            .as_deref()
            .with_context(|| format!("{} is a public host", host.ns))?;
        let out = Command::new("ip")
            .args(["netns", "exec", router, "conntrack", "-L"])
            .stdin(Stdio::null())
            .output()
            .context("cannot run conntrack (apt-get install conntrack)")?;
        if !out.status.success() {
            bail!(
                "conntrack -L in {router} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(parse_conntrack(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Stops every miniupnpd (SIGTERM, SIGKILL after 2 s), removes every
    /// namespace this network created and the daemons' folder. Idempotent.
    pub fn destroy(&mut self) {
        for mut d in self.daemons.drain(..) {
            stop_child(&mut d.child);
        }
        for ns in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("classe-lab: warning: could not remove namespace {ns}: {e:#}");
            }
        }
        if let Some(dir) = self.dir.take() {
            crate::unregister_path(dir.path());
            if let Err(e) = dir.close() {
                eprintln!("classe-lab: warning: could not remove miniupnpd's folder: {e:#}");
            }
        }
    }
}

impl Drop for HomeNet {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// miniupnpd's configuration for router `i`.
fn miniupnpd_conf(i: usize, lease_file: &Path) -> String {
    format!(
        "ext_ifname=eth0\n\
         listening_ip=eth1\n\
         http_port={UPNP_HTTP_PORT}\n\
         enable_upnp=yes\n\
         enable_natpmp=yes\n\
         secure_mode=yes\n\
         system_uptime=no\n\
         notify_interval=60\n\
         clean_ruleset_interval=600\n\
         lease_file={}\n\
         uuid=3d3cec3a-8cf0-11e0-98ee-{i:012x}\n\
         friendly_name=classe lab home router {i}\n\
         ext_perform_stun=yes\n\
         ext_stun_host={}\n\
         ext_stun_port={}\n\
         upnp_forward_chain=MINIUPNPD\n\
         upnp_nat_chain=MINIUPNPD\n\
         upnp_nat_postrouting_chain=MINIUPNPD-POSTROUTING\n\
         allow 1024-65535 192.168.1.0/24 1024-65535\n\
         deny 0-65535 0.0.0.0/0 0-65535\n",
        lease_file.display(),
        STUN_ADDR.ip(),
        STUN_ADDR.port(),
    )
}

/// Waits until `d` listens for NAT-PMP/PCP with port forwarding enabled.
fn wait_ready(d: &mut Daemon, deadline: Instant) -> Result<()> {
    loop {
        let log = std::fs::read_to_string(&d.log_file).unwrap_or_default();
        if let Some(status) = d.child.try_wait()? {
            bail!("miniupnpd exited ({status}) at start:\n{}", log.trim());
        }
        if log.contains("Listening for NAT-PMP/PCP traffic") {
            if !log.contains("Port forwarding is now enabled") {
                bail!(
                    "miniupnpd did not enable port forwarding (STUN check failed?):\n{}",
                    log.trim()
                );
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("miniupnpd did not come up in time:\n{}", log.trim());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// SIGTERM to the child's group, SIGKILL after 2 s, and reaps it.
fn stop_child(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    // The group id stays reserved while any member lives, so this only
    // reaches processes we started.
    killpg(Pid::from_raw(pid), Signal::SIGTERM).ok();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    killpg(Pid::from_raw(pid), Signal::SIGKILL).ok();
    child.wait().ok();
}

/// The build-time STUN responder (RFC 5389 Binding, XOR-MAPPED-ADDRESS
/// only): a thread in the internet namespace, with [`STUN_ADDR`] on br0.
struct Stun {
    inet_ns: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Stun {
    /// Longest a responder runs, whatever happens.
    const MAX_LIFETIME: Duration = Duration::from_secs(120);

    fn start(inet_ns: &str) -> Result<Self> {
        let addr = format!("{}/{}", STUN_ADDR.ip(), INTERNET.1);
        ip(&["-n", inet_ns, "addr", "add", &addr, "dev", "br0"])?;
        let mut stun = Stun {
            inet_ns: inet_ns.to_string(),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        let file = File::open(format!("/run/netns/{inet_ns}"))
            .with_context(|| format!("no network namespace {inet_ns}"))?;
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let stop = stun.stop.clone();
        stun.thread = Some(std::thread::spawn(move || {
            let sock = nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(anyhow::Error::from)
                .and_then(|()| Ok(UdpSocket::bind(STUN_ADDR)?))
                .and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(50)))?;
                    Ok(s)
                });
            let sock = match sock {
                Ok(s) => {
                    tx.send(Ok(())).ok();
                    s
                }
                Err(e) => {
                    tx.send(Err(e)).ok();
                    return;
                }
            };
            stun_serve(&sock, &stop, Instant::now() + Self::MAX_LIFETIME);
        }));
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(stun),
            Ok(Err(e)) => Err(e.context("cannot start the STUN responder")),
            Err(_) => Err(anyhow!("the STUN responder did not start")),
        }
    }

    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
        let addr = format!("{}/{}", STUN_ADDR.ip(), INTERNET.1);
        ip(&["-n", &self.inet_ns, "addr", "del", &addr, "dev", "br0"]).ok();
    }
}

impl Drop for Stun {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

fn stun_serve(sock: &UdpSocket, stop: &AtomicBool, until: Instant) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        let Ok((n, SocketAddr::V4(from))) = sock.recv_from(&mut buf) else {
            continue;
        };
        if let Some(reply) = stun_reply(&buf[..n], from) {
            sock.send_to(&reply, from).ok();
        }
    }
}

/// The Binding success response to `req` from `from`, if it is a Binding
/// request.
fn stun_reply(req: &[u8], from: SocketAddrV4) -> Option<Vec<u8>> {
    if req.len() < 20 || req[0..2] != [0x00, 0x01] {
        return None;
    }
    let cookie = [0x21, 0x12, 0xa4, 0x42];
    let port = from.port() ^ 0x2112;
    let addr = u32::from(*from.ip()) ^ u32::from_be_bytes(cookie);
    let mut r = Vec::with_capacity(32);
    r.extend_from_slice(&[0x01, 0x01, 0x00, 12]);
    // The request's magic cookie and transaction id.
    r.extend_from_slice(&req[4..20]);
    r.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
    r.extend_from_slice(&port.to_be_bytes());
    r.extend_from_slice(&addr.to_be_bytes());
    Some(r)
}

/// miniupnpd lease lines: `PROTO:EXT:IADDR:IPORT:TIMESTAMP:DESC`.
fn parse_leases(text: &str) -> Vec<PortMapping> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.splitn(6, ':');
            let protocol = f.next()?.to_string();
            let external_port = f.next()?.parse().ok()?;
            let ip: Ipv4Addr = f.next()?.parse().ok()?;
            let port = f.next()?.parse().ok()?;
            let _timestamp = f.next()?;
            let description = f.next().unwrap_or("").to_string();
            Some(PortMapping {
                protocol,
                external_port,
                internal: SocketAddrV4::new(ip, port),
                description,
            })
        })
        .collect()
}

/// `conntrack -L` lines: the original tuple, then the reply tuple.
fn parse_conntrack(text: &str) -> Vec<NatFlow> {
    text.lines()
        .filter_map(|line| {
            let protocol = line.split_whitespace().next()?.to_string();
            let fields = |key: &str| -> Vec<&str> {
                line.split_whitespace()
                    .filter_map(|t| t.strip_prefix(key))
                    .collect()
            };
            let (src, dst) = (fields("src="), fields("dst="));
            let (sport, dport) = (fields("sport="), fields("dport="));
            if src.len() < 2 || dst.len() < 2 || sport.len() < 2 || dport.len() < 2 {
                return None;
            }
            let addr = |a: &str, p: &str| -> Option<SocketAddrV4> {
                Some(SocketAddrV4::new(a.parse().ok()?, p.parse().ok()?))
            };
            Some(NatFlow {
                protocol,
                internal: addr(src[0], sport[0])?,
                remote: addr(dst[0], dport[0])?,
                external: addr(dst[1], dport[1])?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_the_internet_and_are_distinct() {
        assert_eq!(router_wan_ip(1), Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(router_wan_ip(255), Ipv4Addr::new(198, 18, 255, 1));
        assert_eq!(router_wan_ip(256), Ipv4Addr::new(198, 19, 0, 1));
        assert_eq!(public_ip(1), Ipv4Addr::new(198, 18, 0, 1));
        let mut all: std::collections::HashSet<_> = (1..=MAX_HOMES).map(router_wan_ip).collect();
        all.extend((1..=MAX_PUBLIC).map(public_ip));
        assert_eq!(all.len(), MAX_HOMES + MAX_PUBLIC);
        assert!(all.iter().all(|a| is_internet(*a)));
        assert!(!all.contains(STUN_ADDR.ip()));
        assert!(is_internet(*STUN_ADDR.ip()));
        assert!(!is_internet(Ipv4Addr::new(198, 20, 0, 1)));
        assert!(!is_internet(LAN_HOST));
    }

    #[test]
    fn router_rules_forward_only_to_the_internet() {
        let pp = router_rules(Nat::PortPreserving);
        assert!(pp.contains(":FORWARD DROP"));
        assert!(pp.contains("-s 192.168.1.0/24 -d 198.18.0.0/15 -j ACCEPT"));
        assert!(pp.contains("-j MASQUERADE\n"));
        assert!(!pp.contains("MINIUPNPD"));
        assert!(router_rules(Nat::Symmetric).contains("MASQUERADE --random-fully"));
        let upnp = router_rules(Nat::Upnp);
        assert!(upnp.contains("-A FORWARD -i eth0 -o eth1 -j MINIUPNPD"));
        assert!(upnp.contains("-A PREROUTING -i eth0 -j MINIUPNPD"));
        assert!(upnp.contains("*mangle"));
    }

    #[test]
    fn leases_parse() {
        let text = "UDP:40101:192.168.1.2:40101:1796185090:NAT-PMP 40101 udp\n\
                    TCP:40100:192.168.1.2:40102:0:libminiupnpc\n\
                    garbage\n";
        let m = parse_leases(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].protocol, "UDP");
        assert_eq!(m[0].external_port, 40101);
        assert_eq!(m[0].internal, "192.168.1.2:40101".parse().unwrap());
        assert_eq!(m[0].description, "NAT-PMP 40101 udp");
        assert_eq!(m[1].internal.port(), 40102);
    }

    #[test]
    fn conntrack_parse() {
        let text = "udp      17 27 src=192.168.1.2 dst=198.18.0.10 sport=40001 dport=7001 \
                    src=198.18.0.10 dst=198.18.1.1 sport=7001 dport=51234 mark=0 use=1\n\
                    conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n";
        let f = parse_conntrack(text);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].protocol, "udp");
        assert_eq!(f[0].internal, "192.168.1.2:40001".parse().unwrap());
        assert_eq!(f[0].remote, "198.18.0.10:7001".parse().unwrap());
        assert_eq!(f[0].external, "198.18.1.1:51234".parse().unwrap());
    }

    #[test]
    fn stun_reply_xors_the_source() {
        let mut req = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
        req.extend_from_slice(&[7; 12]);
        req.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 6]);
        let from = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 40000);
        let r = stun_reply(&req, from).unwrap();
        assert_eq!(r.len(), 32);
        assert_eq!(&r[0..4], &[0x01, 0x01, 0x00, 12]);
        assert_eq!(&r[4..20], &req[4..20]);
        let port = u16::from_be_bytes([r[26], r[27]]) ^ 0x2112;
        let a = u32::from_be_bytes([r[28], r[29], r[30], r[31]]) ^ 0x2112_a442;
        assert_eq!(SocketAddrV4::new(Ipv4Addr::from(a), port), from);
        assert!(stun_reply(&[0x01, 0x01], from).is_none());
    }
}
