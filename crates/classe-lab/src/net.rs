//! The emulated network: one network namespace per host, a bridge in a
//! namespace of its own, veth pairs between them, `tc` for rates.
//!
//! ```text
//!   ns <tag>-s (seed)       ns <tag>-p1 (pupil 1)   ...  ns <tag>-pN
//!   eth0 10.77.0.1/16       eth0 10.77.1.1/16            eth0 10.77.x.y/16
//!   egress: HTB u_s         egress: HTB u_1              egress: HTB u_N
//!     |                       |                            |
//!   ==|=======================|============================|=== ns <tag>-br
//!   s0 (egress: HTB d_s)    p1 (egress: HTB d_1)         pN        br0
//! ```
//!
//! Both ends of every veth pair are created directly inside their
//! namespaces (`ip link add eth0 netns A type veth peer name p1 netns B`),
//! so nothing ever appears in the root namespace, and no namespace has a
//! route beyond 10.77.0.0/16: traffic cannot leave the emulated network.
//! Upload shaping is an HTB class on the host's own egress; download
//! shaping is an HTB class on the bridge port's egress (towards the host).
//! Delay needs `sch_netem`; [`probe`] says whether the kernel has it.
//!
//! Everything created is recorded as it is created and removed by
//! [`Topology::destroy`] (also on drop), so a failure halfway through
//! building leaves nothing behind.

use std::{net::Ipv4Addr, process::Command};

use anyhow::{bail, Context, Result};

/// Every namespace the lab creates starts with this, then the pid of the
/// lab process that made it, so leftovers of a killed run can be found.
pub const NS_PREFIX: &str = "clab";

/// Most pupils one topology may have (the address plan's limit is higher;
/// this keeps a typo from creating thousands of namespaces).
pub const MAX_PUPILS: usize = 500;

/// Rates of one host, in bits per second; `None` is not shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The host's upload (its egress).
    pub up_bps: Option<u64>,
    /// The host's download (the bridge port's egress towards it).
    pub down_bps: Option<u64>,
}

/// One emulated host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace.
    pub ns: String,
    /// Its address (exists only inside its namespace).
    pub ip: Ipv4Addr,
    /// Its port on the bridge (an interface in the bridge namespace).
    pub port: String,
    /// Its rates.
    pub shape: Shape,
}

/// The address of host `index` (0 = the seed, 1..=N the pupils).
pub fn host_ip(index: usize) -> Ipv4Addr {
    if index == 0 {
        return Ipv4Addr::new(10, 77, 0, 1);
    }
    let i = index - 1;
    Ipv4Addr::new(10, 77, (1 + i / 250) as u8, (i % 250 + 1) as u8)
}

/// Runs `ip` or `tc` with `args`; the error carries the command and what it
/// printed.
pub fn run_tool(tool: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {tool} (is iproute2 installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{tool} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    run_tool("ip", args).map(|_| ())
}

fn tc(args: &[&str]) -> Result<()> {
    run_tool("tc", args).map(|_| ())
}

/// What this machine can emulate.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    /// Running as root.
    pub root: bool,
    /// `ip netns add` works.
    pub netns: bool,
    /// `tc ... htb` works.
    pub htb: bool,
    /// `tc ... netem` works (delay can be emulated).
    pub netem: bool,
    /// Why something does not work.
    pub notes: Vec<String>,
}

impl Probe {
    /// Whether the lab can run at all.
    pub fn usable(&self) -> bool {
        self.root && self.netns && self.htb
    }
}

/// Finds out what works, in a throw-away namespace.
pub fn probe() -> Probe {
    let mut p = Probe {
        root: nix::unistd::geteuid().is_root(),
        ..Probe::default()
    };
    if !p.root {
        p.notes.push("not running as root".into());
        return p;
    }
    // Unique per call: tests of one process probe at the same time.
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ns = format!("{NS_PREFIX}{}probe{k}", std::process::id());
    match ip(&["netns", "add", &ns]) {
        Ok(()) => p.netns = true,
        Err(e) => {
            p.notes
                .push(format!("network namespaces unavailable: {e:#}"));
            return p;
        }
    }
    let r = (|| -> Result<()> {
        ip(&["-n", &ns, "link", "add", "d0", "type", "dummy"])
            .or_else(|_| ip(&["-n", &ns, "link", "set", "lo", "up"]))?;
        let dev = if ip(&["-n", &ns, "link", "show", "d0"]).is_ok() {
            "d0"
        } else {
            "lo"
        };
        match tc(&[
            "-n", &ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
        ]) {
            Ok(()) => p.htb = true,
            Err(e) => p.notes.push(format!("tc htb unavailable: {e:#}")),
        }
        tc(&["-n", &ns, "qdisc", "del", "dev", dev, "root"]).ok();
        match tc(&[
            "-n", &ns, "qdisc", "add", "dev", dev, "root", "netem", "delay", "1ms",
        ]) {
            Ok(()) => p.netem = true,
            Err(e) => p.notes.push(format!(
                "sch_netem unavailable, delay cannot be emulated: {e:#}"
            )),
        }
        Ok(())
    })();
    if let Err(e) = r {
        p.notes.push(format!("probe: {e:#}"));
    }
    if let Err(e) = ip(&["netns", "del", &ns]) {
        p.notes
            .push(format!("could not remove probe namespace {ns}: {e:#}"));
    }
    p
}

/// The namespaces that exist now, by name.
pub fn list_namespaces() -> Vec<String> {
    run_tool("ip", &["netns", "list"])
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The pid embedded in a lab namespace name, if it is one.
pub fn owner_pid(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix(NS_PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Removes lab namespaces whose lab process is gone (left behind by a lab
/// that was killed with SIGKILL). With `all_of_pid`, also those of that
/// (live) pid: the emergency sweep of this very process.
pub fn remove_stale(all_of_pid: Option<u32>) -> Vec<String> {
    let mut removed = Vec::new();
    for ns in list_namespaces() {
        let Some(pid) = owner_pid(&ns) else { continue };
        let dead = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if (dead || Some(pid) == all_of_pid) && ip(&["netns", "del", &ns]).is_ok() {
            removed.push(ns);
        }
    }
    removed
}

/// A built emulated network. Dropping it removes it.
#[derive(Debug)]
pub struct Topology {
    bridge_ns: String,
    hosts: Vec<Host>,
    /// Every namespace created so far, in order.
    created: Vec<String>,
    /// One-way delay added at every host's egress, if netem is used.
    delay_ms: Option<f64>,
    /// Queue, offload and IPv6 details.
    opts: NetOptions,
}

impl Topology {
    /// Builds the network: host 0 is the seed, hosts 1.. are the pupils.
    /// `tag` must be unique on the machine (it includes the pid).
    pub fn build(tag: &str, shapes: &[Shape], delay_ms: Option<f64>) -> Result<Self> {
        Self::build_with(tag, shapes, delay_ms, &NetOptions::default())
    }

    /// [`Topology::build`] with the details of the emulation set by `opts`.
    pub fn build_with(
        tag: &str,
        shapes: &[Shape],
        delay_ms: Option<f64>,
        opts: &NetOptions,
    ) -> Result<Self> {
        if shapes.len() < 2 || shapes.len() > MAX_PUPILS + 1 {
            bail!("a topology needs a seed and 1..={MAX_PUPILS} pupils");
        }
        let mut topo = Topology {
            bridge_ns: format!("{tag}-br"),
            hosts: Vec::new(),
            created: Vec::new(),
            delay_ms,
            opts: opts.clone(),
        };
        topo.build_inner(tag, shapes)?;
        Ok(topo)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        if !self.opts.ipv6 {
            for scope in ["all", "default"] {
                let key = format!("net.ipv6.conf.{scope}.disable_ipv6=1");
                run_tool("ip", &["netns", "exec", ns, "sysctl", "-q", "-w", &key])?;
            }
        }
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    fn build_inner(&mut self, tag: &str, shapes: &[Shape]) -> Result<()> {
        let br = self.bridge_ns.clone();
        self.add_ns(&br)?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for (index, shape) in shapes.iter().enumerate() {
            let (ns, port) = if index == 0 {
                (format!("{tag}-s"), "s0".to_string())
            } else {
                (format!("{tag}-p{index}"), format!("p{index}"))
            };
            let addr = host_ip(index);
            self.add_ns(&ns)?;
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &br,
            ])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/16"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &port, "up"])?;
            if !self.opts.offloads {
                offloads_off(&ns, "eth0")?;
                offloads_off(&br, &port)?;
            }
            shape_egress_with(&ns, "eth0", shape.up_bps, self.delay_ms, &self.opts)?;
            shape_egress_with(&br, &port, shape.down_bps, None, &self.opts)?;
            self.hosts.push(Host {
                ns,
                ip: addr,
                port,
                shape: *shape,
            });
        }
        Ok(())
    }

    /// Host 0 is the seed, 1..=N the pupils.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The seed host.
    pub fn seed(&self) -> &Host {
        &self.hosts[0]
    }

    /// Bytes the host's interface has received and sent (all layers:
    /// IP and UDP/TCP headers, ACKs, retransmissions).
    pub fn counters(&self, host: &Host) -> Result<LinkCounters> {
        link_counters(&host.ns, "eth0")
    }

    /// Removes every namespace this topology created (their veths and the
    /// bridge go with them). Idempotent.
    pub fn destroy(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("classe-lab: warning: could not remove namespace {ns}: {e:#}");
            }
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// HTB on the egress of `dev` in `ns`, with netem below it for delay.
pub(crate) fn shape_egress(
    ns: &str,
    dev: &str,
    rate: Option<u64>,
    delay_ms: Option<f64>,
) -> Result<()> {
    shape_egress_with(ns, dev, rate, delay_ms, &NetOptions::default())
}

/// [`shape_egress`] with the HTB and leaf-queue details of `opts`.
pub(crate) fn shape_egress_with(
    ns: &str,
    dev: &str,
    rate: Option<u64>,
    delay_ms: Option<f64>,
    opts: &NetOptions,
) -> Result<()> {
    let delay = delay_ms.filter(|d| *d > 0.0).map(|d| format!("{d}ms"));
    match (rate, &delay) {
        (None, None) => Ok(()),
        (None, Some(d)) => tc(&[
            "-n", ns, "qdisc", "add", "dev", dev, "root", "netem", "delay", d, "limit", "10000",
        ]),
        (Some(r), _) => {
            let bits = format!("{r}bit");
            let mut root = vec![
                "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default",
                "10",
            ];
            let r2q = opts.htb_r2q.map(|v| v.to_string());
            if let Some(v) = &r2q {
                root.extend(["r2q", v]);
            }
            tc(&root)?;
            let mut class = vec![
                "-n", ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
                "rate", &bits, "ceil", &bits,
            ];
            let quantum = opts.htb_quantum.map(|v| v.to_string());
            if let Some(v) = &quantum {
                class.extend(["quantum", v]);
            }
            tc(&class)?;
            if let Some(d) = &delay {
                tc(&[
                    "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:",
                    "netem", "delay", d, "limit", "10000",
                ])?;
            } else if let Some(ms) = opts.leaf_queue_ms {
                let limit = leaf_packets(r, ms).to_string();
                tc(&[
                    "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:",
                    "pfifo", "limit", &limit,
                ])?;
            }
            Ok(())
        }
    }
}

/// Packets of 1514 bytes that `ms` milliseconds at `rate_bps` carry (at
/// least 2): the size of a leaf queue that holds that much of the rate.
pub fn leaf_packets(rate_bps: u64, ms: u32) -> u64 {
    (rate_bps as f64 * f64::from(ms) / 1000.0 / (1514.0 * 8.0))
        .round()
        .max(2.0) as u64
}

/// TSO, GSO and GRO off on one end of a veth (ethtool from Debian).
fn offloads_off(ns: &str, dev: &str) -> Result<()> {
    run_tool(
        "ip",
        &[
            "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
        ],
    )
    .map(|_| ())
    .context("cannot switch offloads off (is ethtool installed?)")
}

/// Details of the emulated network that should not change a result but
/// can (issue 11: an independent lab that differed in these measured
/// classe 1.5x slower while BitTorrent did not move). The defaults are the
/// lab's historical settings; [`NetOptions::strict`] is that other lab's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NetOptions {
    /// An explicit `pfifo` leaf under each HTB class holding this many
    /// milliseconds of its rate (`None`: HTB's default leaf, a pfifo as
    /// long as the device's txqueuelen, 1000 packets on a veth).
    pub leaf_queue_ms: Option<u32>,
    /// HTB's `r2q` on each root (`None`: tc's default, 10).
    pub htb_r2q: Option<u32>,
    /// HTB's `quantum` on each class (`None`: rate / r2q).
    pub htb_quantum: Option<u32>,
    /// Segmentation and receive offloads (TSO, GSO, GRO) left on.
    pub offloads: bool,
    /// IPv6 left on in every namespace.
    pub ipv6: bool,
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            leaf_queue_ms: None,
            htb_r2q: None,
            htb_quantum: None,
            offloads: true,
            ipv6: true,
        }
    }
}

impl NetOptions {
    /// The independent lab of issue 11: 100 ms pfifo leaves, `r2q 1000`,
    /// `quantum 1514`, offloads and IPv6 off.
    pub fn strict() -> Self {
        Self {
            leaf_queue_ms: Some(100),
            htb_r2q: Some(1000),
            htb_quantum: Some(1514),
            offloads: false,
            ipv6: false,
        }
    }

    /// Whether these are the defaults.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// A short label for tables ("default", or the settings that differ).
    pub fn label(&self) -> String {
        if self.is_default() {
            return "default".into();
        }
        let mut parts = Vec::new();
        if let Some(ms) = self.leaf_queue_ms {
            parts.push(format!("leaf {ms} ms"));
        }
        if let Some(v) = self.htb_r2q {
            parts.push(format!("r2q {v}"));
        }
        if let Some(v) = self.htb_quantum {
            parts.push(format!("quantum {v}"));
        }
        if !self.offloads {
            parts.push("offloads off".into());
        }
        if !self.ipv6 {
            parts.push("IPv6 off".into());
        }
        parts.join(", ")
    }
}

/// Interface byte counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Bytes received.
    pub rx: u64,
    /// Bytes sent.
    pub tx: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// Counters of `dev` in `ns`, from `ip -s -j link`.
pub fn link_counters(ns: &str, dev: &str) -> Result<LinkCounters> {
    let out = run_tool("ip", &["-n", ns, "-s", "-j", "link", "show", "dev", dev])?;
    parse_link_counters(&out).with_context(|| format!("unexpected `ip -s -j link` output: {out}"))
}

fn parse_link_counters(json: &str) -> Result<LinkCounters> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let stats = v
        .get(0)
        .and_then(|l| l.get("stats64"))
        .context("no stats64")?;
    let get = |dir: &str, what: &str| {
        stats
            .get(dir)
            .and_then(|d| d.get(what))
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("no {what} counter"))
    };
    Ok(LinkCounters {
        rx: get("rx", "bytes")?,
        tx: get("tx", "bytes")?,
        rx_packets: get("rx", "packets").unwrap_or(0),
        tx_packets: get("tx", "packets").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_queues_hold_their_milliseconds() {
        // 10 Mbit/s for 100 ms = 125 kB = 82.6 packets of 1514 bytes.
        assert_eq!(leaf_packets(10_000_000, 100), 83);
        assert_eq!(leaf_packets(100_000_000, 100), 826);
        assert_eq!(leaf_packets(64_000, 10), 2);
        assert_eq!(NetOptions::default().label(), "default");
        assert_eq!(
            NetOptions::strict().label(),
            "leaf 100 ms, r2q 1000, quantum 1514, offloads off, IPv6 off"
        );
    }

    #[test]
    fn addresses_stay_in_the_lab_range_and_are_distinct() {
        assert_eq!(host_ip(0), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(host_ip(1), Ipv4Addr::new(10, 77, 1, 1));
        assert_eq!(host_ip(250), Ipv4Addr::new(10, 77, 1, 250));
        assert_eq!(host_ip(251), Ipv4Addr::new(10, 77, 2, 1));
        let all: std::collections::HashSet<_> = (0..=MAX_PUPILS).map(host_ip).collect();
        assert_eq!(all.len(), MAX_PUPILS + 1);
        assert!(all
            .iter()
            .all(|a| a.octets()[0] == 10 && a.octets()[1] == 77));
    }

    #[test]
    fn owner_pid_reads_lab_names_only() {
        assert_eq!(owner_pid("clab1234x0-p3"), Some(1234));
        assert_eq!(owner_pid("clab99probe"), Some(99));
        assert_eq!(owner_pid("other"), None);
        assert_eq!(owner_pid("clabx"), None);
    }

    #[test]
    fn link_counters_parse() {
        let json = r#"[{"ifname":"eth0","stats64":{"rx":{"bytes":10,"packets":1},"tx":{"bytes":20,"packets":2}}}]"#;
        assert_eq!(
            parse_link_counters(json).unwrap(),
            LinkCounters {
                rx: 10,
                tx: 20,
                rx_packets: 1,
                tx_packets: 2,
            }
        );
        assert!(parse_link_counters("[]").is_err());
    }
}
