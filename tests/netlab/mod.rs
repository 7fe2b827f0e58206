//! A network lab inside one machine (DESIGN.md, "A network lab"): hosts are
//! network namespaces wired to bridges, each bridge in a namespace of its
//! own, with documentation addresses (198.51.100.0/24, 203.0.113.0/24) and
//! 100.64.0.0/10 behind NAT routers. Nothing is routed outside: the
//! machine's own namespace gets no address, route or interface of the lab.
//!
//! What the lab can do to a host: drop a share of the UDP it sends
//! (nftables), cap its rate both ways (tc tbf), hide it behind a NAT router
//! (nftables masquerade; `fully-random` for a mapping that changes with
//! every destination). This kernel has no netem, so there is no delay.
//!
//! Every namespace, and everything running in one, is removed when the
//! [`Lab`] is dropped, also when the test panics. A lab left behind by a
//! test process that was killed is removed by the next one that starts.
//!
//! Lab tests need root. Without it they print why they were skipped, unless
//! `PEER_TREE_REQUIRE_LAB` is set (CI), which makes that a failure.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Set by CI: a machine where the lab cannot run fails these tests.
pub(crate) const REQUIRE: &str = "PEER_TREE_REQUIRE_LAB";

/// Prefix of every namespace a lab makes; the test process's pid follows,
/// so a later run can tell which labs belong to processes that are gone.
const PREFIX: &str = "ptl-";

static LABS: AtomicU32 = AtomicU32::new(0);

/// Runs `ip`, `nft`, `tc` and friends; a failure names the command and
/// what it printed.
fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_with_input(program: &str, args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{program} {} failed on\n{input}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why this process cannot build a lab, if it cannot.
fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Some("network namespaces need root".into());
    }
    for tool in ["ip", "nft", "tc"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!(
                "needs {tool} (Debian: apt-get install -y iproute2 nftables)"
            ));
        }
    }
    None
}

/// A lab, or `None` (and a line saying the test was skipped) when this
/// process cannot make one and CI did not require it.
pub(crate) fn lab_or_skip(test: &str) -> Option<Lab> {
    if let Some(why) = unavailable() {
        let what = format!("{test}: {why}");
        if std::env::var_os(REQUIRE).is_some_and(|v| v != "0") {
            panic!("{what}; {REQUIRE} is set, so this is a failure");
        }
        eprintln!("skipped: {what}");
        return None;
    }
    Some(Lab::new())
}

/// True if a program is on PATH (for optional lab tools such as coturn).
pub(crate) fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// The namespaces of one test; all removed on drop.
pub(crate) struct Lab {
    id: String,
    namespaces: Mutex<Vec<String>>,
    ports: AtomicU32,
}

/// An Ethernet segment: a bridge in a namespace of its own.
pub(crate) struct Switch {
    ns: String,
}

/// How a router maps its inside hosts' ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nat {
    /// `masquerade`: one mapping per inside address and port, whatever the
    /// destination, and the inside port kept when free (endpoint-independent
    /// mapping; filtering per destination, as conntrack does, and nothing
    /// unsolicited gets in).
    PortPreserving,
    /// `masquerade fully-random`: a new random port per destination, as the
    /// symmetric NATs that defeat STUN do.
    Symmetric,
}

/// A host of the lab: one namespace with `eth0` (and `eth1` for routers).
#[derive(Clone, Debug)]
pub(crate) struct Host {
    pub ns: String,
    pub name: String,
    /// The address on `eth0`.
    pub addr: Ipv4Addr,
    /// The switch's namespace and its port at the other end of `eth0`'s
    /// cable: where the network, not the host, does things to its traffic.
    port: (String, String),
}

fn cidr_addr(cidr: &str) -> Ipv4Addr {
    cidr.split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an IPv4 CIDR: {cidr}"))
}

impl Lab {
    /// A new, empty lab. Use [`lab_or_skip`] first to know one can be made.
    pub(crate) fn new() -> Lab {
        sweep_stale_labs();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        Lab {
            id: format!("{PREFIX}{}-{n}", std::process::id()),
            namespaces: Mutex::default(),
            ports: AtomicU32::new(0),
        }
    }

    fn netns(&self, name: &str) -> String {
        let ns = format!("{}-{name}", self.id);
        run("ip", &["netns", "add", &ns]);
        self.namespaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(ns.clone());
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        // No IPv6: no router solicitations or DAD traffic in the captures,
        // and every address in a test is one it chose.
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
            ],
        );
        ns
    }

    /// A new Ethernet segment.
    pub(crate) fn switch(&self, name: &str) -> Switch {
        let ns = self.netns(&format!("sw-{name}"));
        run("ip", &["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        // Flood multicast (mDNS) like a plain switch instead of waiting for
        // IGMP reports no querier asks for.
        run(
            "ip",
            &[
                "-n",
                &ns,
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        );
        run("ip", &["-n", &ns, "link", "set", "br0", "up"]);
        Switch { ns }
    }

    /// Plugs `ns`'s interface `ifname` into `sw`, with `cidr` on it;
    /// returns the switch's port.
    fn plug(&self, sw: &Switch, ns: &str, ifname: &str, cidr: &str) -> String {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::Relaxed));
        run(
            "ip",
            &[
                "link", "add", &port, "netns", &sw.ns, "type", "veth", "peer", "name", ifname,
                "netns", ns,
            ],
        );
        run(
            "ip",
            &["-n", &sw.ns, "link", "set", &port, "master", "br0", "up"],
        );
        run("ip", &["-n", ns, "addr", "add", cidr, "dev", ifname]);
        run("ip", &["-n", ns, "link", "set", ifname, "up"]);
        port
    }

    /// A host on `sw` with `cidr` on its `eth0` and no default route: it
    /// reaches its own segment only, until [`Host::default_route`].
    pub(crate) fn host(&self, name: &str, sw: &Switch, cidr: &str) -> Host {
        let ns = self.netns(name);
        let port = self.plug(sw, &ns, "eth0", cidr);
        Host {
            ns,
            name: name.to_owned(),
            addr: cidr_addr(cidr),
            port: (sw.ns.clone(), port),
        }
    }

    /// A NAT router: `eth0` outside on `outside` (its public address),
    /// `eth1` inside on `inside`. Inside hosts route through it with
    /// [`Host::default_route`] to its inside address.
    pub(crate) fn router(
        &self,
        name: &str,
        outside: (&Switch, &str),
        inside: (&Switch, &str),
        nat: Nat,
    ) -> Host {
        let host = self.host(name, outside.0, outside.1);
        self.plug(inside.0, &host.ns, "eth1", inside.1);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &host.ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        let how = match nat {
            Nat::PortPreserving => "masquerade",
            Nat::Symmetric => "masquerade fully-random",
        };
        host.nft(&format!(
            "table ip nat {{\n chain post {{\n  type nat hook postrouting priority srcnat;\n  \
             oifname \"eth0\" {how}\n }}\n}}\n"
        ));
        // A home router's firewall: nothing unsolicited from outside. It
        // matters beyond realism: conntrack records a packet to the router's
        // own port when it lets it in, and a peer's check that arrives before
        // the inside host has sent its own then holds the tuple the
        // masquerade wanted to keep, so the inside host's packets leave from
        // another port (found by this lab: ICE between two port-preserving
        // NATs failed). Dropped before confirmation, it leaves no trace.
        host.nft(
            "table inet firewall {\n chain input {\n  type filter hook input priority filter;\n  \
             iifname \"eth0\" ct state new drop\n }\n chain forward {\n  type filter hook \
             forward priority filter;\n  iifname \"eth0\" ct state new drop\n }\n}\n",
        );
        host
    }

    /// The Internet beyond the public segment `sw`: a host at `cidr` that
    /// hosts can route through ([`Host::default_route`] to its address) and
    /// that drops, without a word, whatever is not addressed to itself. It
    /// forwards nothing and so answers nothing with ICMP either (Linux sends
    /// no unreachable when forwarding is off), as packets sent to a private
    /// address vanish on the real Internet. A server that sends to addresses
    /// its clients merely announced (a TURN server relaying checks to private
    /// host candidates) needs this: with no route at all its `sendto` fails
    /// with ENETUNREACH, which no server on the Internet sees.
    pub(crate) fn internet(&self, sw: &Switch, cidr: &str) -> Host {
        let host = self.host("internet", sw, cidr);
        host.run(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        host
    }

    /// Names of this lab's namespaces, for logs.
    pub(crate) fn namespaces(&self) -> Vec<String> {
        self.namespaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Host {
    /// `program` run inside this host (`ip netns exec` execs it, so the
    /// child's pid is the program's own).
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Runs a command inside this host; it must succeed.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Loads an nftables ruleset (added to what is there).
    pub(crate) fn nft(&self, ruleset: &str) {
        run_with_input(
            "ip",
            &["netns", "exec", &self.ns, "nft", "-f", "-"],
            ruleset,
        );
    }

    /// Routes everything not on its segment through `via` (a router's
    /// inside address, or any neighbour: on a lab segment the route only
    /// has to exist for multicast and for "is there a network" checks).
    pub(crate) fn default_route(&self, via: Ipv4Addr) {
        let via = via.to_string();
        self.run(&["ip", "route", "add", "default", "via", &via]);
    }

    /// Drops `percent` % of the UDP this host sends, chosen at random per
    /// packet. The switch drops it, as a lossy network would: the sender's
    /// own stack sees nothing (a drop in the host's output chain would fail
    /// its `sendmsg` with EPERM, which no real network does).
    pub(crate) fn drop_udp(&self, percent: u32) {
        if percent == 0 {
            return;
        }
        let (sw, port) = &self.port;
        run_with_input(
            "ip",
            &["netns", "exec", sw, "nft", "-f", "-"],
            &format!(
                "table bridge loss_{port} {{\n chain lossy {{\n  type filter hook forward priority \
                 filter;\n  iifname \"{port}\" meta l4proto udp numgen random mod 100 < {percent} \
                 counter drop\n }}\n}}\n"
            ),
        );
    }

    /// UDP packets [`Host::drop_udp`] dropped so far.
    pub(crate) fn udp_dropped(&self) -> u64 {
        let (sw, port) = &self.port;
        let table = format!("loss_{port}");
        let Some(out) = Command::new("ip")
            .args([
                "netns", "exec", sw, "nft", "list", "table", "bridge", &table,
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
        else {
            return 0;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Drops every packet to or from UDP port `port` (mDNS: 5353).
    pub(crate) fn block_udp_port(&self, port: u16) {
        self.nft(&format!(
            "table inet block{port} {{\n chain out {{\n  type filter hook output priority filter;\n  \
             udp dport {port} drop\n }}\n chain in {{\n  type filter hook input priority filter;\n  \
             udp sport {port} drop\n }}\n}}\n"
        ));
    }

    /// Caps this host's link at `kbit` kbit/s both ways: a token bucket on
    /// its `eth0` for what it sends, and one on the switch's side of the
    /// cable for what it receives. Excess waits in a queue of about
    /// `queue_ms` and is then dropped, as on a slow access link.
    pub(crate) fn rate_limit(&self, kbit: u32, queue_ms: u32) {
        let rate = format!("{kbit}kbit");
        let latency = format!("{queue_ms}ms");
        // A burst of a few full packets: a bucket smaller than one MTU
        // passes nothing.
        let tbf = [
            "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "4500",
            "latency", &latency,
        ];
        let mut args = vec!["tc"];
        args.extend_from_slice(&tbf);
        self.run(&args);
        // What it receives leaves the switch through its port.
        let (sw_ns, port) = &self.port;
        let mut args = vec!["netns", "exec", sw_ns, "tc"];
        let mut tbf_port = tbf.to_vec();
        tbf_port[3] = port;
        args.extend_from_slice(&tbf_port);
        run("ip", &args);
    }

    /// UDP datagrams this host's kernel counted as sent and received, and
    /// receive-buffer drops (`/proc/net/snmp` of its namespace).
    pub(crate) fn udp_counters(&self) -> (u64, u64, u64) {
        let out = self.run(&["cat", "/proc/net/snmp"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut rows = text.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
            return (0, 0, 0);
        };
        let field = |name: &str| {
            names
                .split_whitespace()
                .position(|n| n == name)
                .and_then(|i| values.split_whitespace().nth(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (
            field("OutDatagrams"),
            field("InDatagrams"),
            field("RcvbufErrors"),
        )
    }

    /// GET `url` from inside this host: (status, body). None when nothing
    /// answered within `timeout`.
    pub(crate) fn http_get(&self, url: &str, timeout: Duration) -> Option<(u16, String)> {
        let secs = format!("{:.1}", timeout.as_secs_f64());
        let out = self
            .command("curl")
            .args(["-s", "-m", &secs, "-w", "\n%{http_code}", url])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_owned()))
    }

    /// Waits until `url` answers 200 from this host.
    pub(crate) fn wait_http(&self, url: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self
            .http_get(url, Duration::from_secs(1))
            .is_none_or(|(code, _)| code != 200)
        {
            assert!(
                Instant::now() < deadline,
                "{}: {url} did not answer within {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Kills everything in `ns`, then removes it.
fn remove_namespace(ns: &str) {
    for _ in 0..50 {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() {
            break;
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Removes the labs of test processes that no longer exist (killed before
/// their `Drop` could run).
fn sweep_stale_labs() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(name);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let namespaces = std::mem::take(
            &mut *self
                .namespaces
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        // Hosts first, so nothing is left running when its switch goes.
        for ns in namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// coturn, a real STUN/TURN server, on `host`'s address, port 3478. It
/// takes TURN credentials made from `secret` (its `use-auth-secret`, the
/// TURN REST scheme `signal --turn-secret-file` speaks). Its files (log,
/// pid, database) go to `dir`; its log says "Total General servers" when it
/// is ready.
///
/// `host` needs a default route (see [`Lab::internet`]): coturn closes an
/// allocation when a send from its relay port fails. In this lab, where
/// hosts had no default route, every allocation with a permission for a
/// peer's private host candidate (100.64.x.2) was closed within a second
/// ("closed (2nd stage) ... reason: general" in its log, "udp send: Network
/// is unreachable" on its stderr, one for one), and a link that needed TURN
/// never connected.
pub(crate) fn coturn(host: &Host, secret: &str, dir: &Path) -> Command {
    let ip = host.addr.to_string();
    let mut c = host.command("turnserver");
    c.args([
        "-n",
        "--listening-ip",
        &ip,
        "--relay-ip",
        &ip,
        "--listening-port",
        "3478",
        "--realm",
        "lab.example",
        "--use-auth-secret",
        &format!("--static-auth-secret={secret}"),
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--fingerprint",
        "--simple-log",
        "--verbose",
        "--min-port",
        "49152",
        "--max-port",
        "49999",
    ])
    .arg(format!(
        "--log-file={}",
        dir.join("turnserver.log").display()
    ))
    .arg(format!(
        "--pidfile={}",
        dir.join("turnserver.pid").display()
    ))
    .arg(format!("--db={}", dir.join("turndb").display()));
    c
}
