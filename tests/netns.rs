//! Interop with an independent WireGuard implementation (Debian's
//! `wireguard-go`) through a real TUN device, in two network namespaces
//! (design.md: real components; protocol.md §9.3-§9.5, §6.10, §6.11).
//!
//! ```text
//!  namespace A (agent)                      namespace T (the user's machine)
//!  wireguard-go wg0                         codervpn mock-coder (127.0.0.1)
//!   fd60:627a:a42b:<agent>/128              codervpn mock-manager --tun-device coder0
//!   fd7a:115c:a1e0:<agent>/128                └─ codervpn tunnel (fd 5 = coder0)
//!  iperf3 -s                                ping, dig, iperf3 -c
//!        veth 10.99.0.1  <──────────────>  veth 10.99.0.2
//! ```
//!
//! The mock publishes wireguard-go as the workspace agent; the tunnel
//! announces its key on the coordination stream, the test reads it from
//! the mock and gives it to wireguard-go. Then, from T: ping the agent's
//! Coder address through coder0, resolve its name at the tunnel's resolver,
//! and move a few seconds of TCP with iperf3.
//!
//! Needs root (CAP_NET_ADMIN) and the tools; without them it says so and
//! passes, unless `CI` is set, where it fails instead. Every namespace and
//! process is removed by a Drop guard, and every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use codervpn_conformance::os_tun::has_net_admin;
use codervpn_proto::ids::{DNS_SERVER, Uuid, agent_address, ping_address};

const BIN: &str = env!("CARGO_BIN_EXE_codervpn");
const TOOLS: [&str; 7] = ["ip", "wireguard-go", "wg", "iperf3", "dig", "ping", "curl"];
const AGENT_ID: &str = "7b2c3d4e-5f60-4a1b-8c2d-3e4f5a6b7c8d";
const WORKSPACE_ID: &str = "7b2c3d4e-5f60-4a1b-8c2d-000000000001";
const AGENT_IP4: &str = "10.99.0.1";
const TUNNEL_IP4: &str = "10.99.0.2";
const WG_PORT: u16 = 51820;

/// `Some(reason)` when this machine cannot run the test.
fn missing_prerequisite() -> Option<String> {
    if !has_net_admin() {
        return Some("needs root (CAP_NET_ADMIN) to create namespaces and TUN devices".into());
    }
    let missing: Vec<&str> = TOOLS
        .into_iter()
        .filter(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        })
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "missing tools: {} (apt-get install wireguard-go wireguard-tools iperf3 bind9-dnsutils iputils-ping iproute2 curl)",
            missing.join(", ")
        )
    })
}

/// A unique, short tag for this run's names (interface names are at most
/// 15 bytes, namespace names are free).
fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{:x}", std::process::id(), nanos & 0xffff)
}

/// Runs a command to its end within `limit`; its stdout, or an error with
/// the command, its status and stderr.
fn run(args: &[&str], limit: Duration) -> Result<String, String> {
    let shown = args.join(" ");
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("`{shown}` did not finish within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`{shown}` failed ({status}): {}{}",
            err.trim(),
            out.trim()
        ))
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// `run` inside namespace `ns`.
fn run_in(ns: &str, args: &[&str], limit: Duration) -> Result<String, String> {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all, limit)
}

/// `line` (words split at spaces) inside `ns`, within `limit`.
fn try_in(ns: &str, line: &str, limit: Duration) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    run_in(ns, &words, limit)
}

/// `line` inside `ns`, which must succeed within 10 s.
fn must(ns: &str, line: &str) -> String {
    try_in(ns, line, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"))
}

/// A long-running process in a namespace: its output goes to a log file
/// that is printed when the test fails; stdout lines also arrive on a
/// channel.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(dir: &Path, name: &str, ns: &str, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        // Stderr and a copy of stdout share the log (appended, so neither
        // overwrites the other).
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut copy = file.try_clone().unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(copy, "{line}");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            name: name.into(),
            child,
            log,
            lines,
        }
    }

    /// The first stdout line satisfying `pick`, within `limit`.
    fn line(&mut self, limit: Duration, pick: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pick(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "{}: no expected output within {limit:?}; exit status {:?}; log:\n{}",
                    self.name,
                    self.child.try_wait().ok().flatten(),
                    self.log_tail()
                ),
            }
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(6000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    /// SIGTERM, then SIGKILL after `grace`; the exit status if it ended by
    /// itself in time.
    fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

/// Everything the test created; dropping it removes all of it, processes
/// first (a namespace outlives its processes otherwise).
struct Topology {
    dir: PathBuf,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    /// Logs of processes started by others (the tunnel).
    logs: Vec<PathBuf>,
}

impl Topology {
    fn new(tag: &str) -> Topology {
        let dir = std::env::temp_dir().join(format!("codervpn-netns-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        Topology {
            dir,
            namespaces: Vec::new(),
            procs: Vec::new(),
            logs: Vec::new(),
        }
    }

    fn namespace(&mut self, name: String) -> String {
        run(&["ip", "netns", "add", &name], Duration::from_secs(10)).unwrap();
        self.namespaces.push(name.clone());
        must(&name, "ip link set lo up");
        name
    }

    fn spawn(&mut self, name: &str, ns: &str, args: &[&str]) -> usize {
        self.procs.push(Proc::start(&self.dir, name, ns, args));
        self.procs.len() - 1
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        for proc in self.procs.iter_mut().rev() {
            proc.stop(Duration::from_secs(5));
            if failing {
                eprintln!("---- {} log ----\n{}", proc.name, proc.log_tail());
            }
        }
        if failing {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: String = text
                    .lines()
                    .rev()
                    .take(80)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                eprintln!("---- {} ----\n{tail}", log.display());
            }
        }
        for ns in &self.namespaces {
            if let Err(err) = run(&["ip", "netns", "del", ns], Duration::from_secs(10)) {
                eprintln!("cleanup: {err}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Retries `attempt` until it succeeds or `limit` passes.
fn eventually<T>(what: &str, limit: Duration, mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(err) if Instant::now() > deadline => {
                panic!("{what}: not within {limit:?}; last error: {err}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The tunnel's WireGuard key, from the node it announced to the mock
/// control plane (`GET /_mock/nodes`).
fn tunnel_key(ns: &str, url: &str) -> Result<String, String> {
    let nodes_url = format!("{url}/_mock/nodes");
    let body = run_in(
        ns,
        &["curl", "-sf", "--max-time", "2", &nodes_url],
        Duration::from_secs(5),
    )?;
    let nodes: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|node| node["public_key"].as_str().filter(|key| !key.is_empty()))
        .map(str::to_owned)
        .ok_or_else(|| format!("no tunnel node announced yet: {body}"))
}

/// The agent machine: wireguard-go `wg0` with both agent addresses
/// (§9.3), answering for either prefix through the tunnel's peer. Returns
/// its public key.
fn start_agent(topo: &mut Topology, a: &str, agent_id: Uuid) -> String {
    let key_file = topo.dir.join("agent.key");
    let private = run(&["wg", "genkey"], Duration::from_secs(5)).unwrap();
    std::fs::write(&key_file, private.trim()).unwrap();
    let public = run(
        &["sh", "-c", &format!("wg pubkey < '{}'", key_file.display())],
        Duration::from_secs(5),
    )
    .unwrap();
    topo.spawn("wireguard-go", a, &["wireguard-go", "-f", "wg0"]);
    eventually("wireguard-go creates wg0", Duration::from_secs(10), || {
        try_in(a, "ip link show wg0", Duration::from_secs(5))
    });
    let key_path = key_file.display().to_string();
    let port = WG_PORT.to_string();
    run_in(
        a,
        &[
            "wg",
            "set",
            "wg0",
            "private-key",
            &key_path,
            "listen-port",
            &port,
        ],
        Duration::from_secs(10),
    )
    .unwrap();
    for ip in [agent_address(agent_id), ping_address(agent_id)] {
        must(a, &format!("ip -6 addr add {ip}/128 dev wg0 nodad"));
    }
    must(a, "ip link set wg0 mtu 1280 up");
    must(a, "ip -6 route add fd60:627a:a42b::/48 dev wg0");
    must(a, "ip -6 route add fd7a:115c:a1e0::/48 dev wg0");
    public.trim().to_owned()
}

/// The scenario: wireguard-go published as agent `dev` of workspace `wsp`
/// (`external_node`).
fn scenario(agent_key: &str) -> serde_json::Value {
    serde_json::json!({
        "user": {"id": "00000000-0000-0000-0000-000000000001", "username": "rootbeer"},
        "hostname_suffix": "coder",
        "workspaces": [{
            "id": WORKSPACE_ID,
            "name": "wsp",
            "agents": [{
                "id": AGENT_ID,
                "name": "dev",
                "external_node": {
                    "public_key": agent_key,
                    "endpoint": format!("{AGENT_IP4}:{WG_PORT}")
                }
            }]
        }]
    })
}

#[test]
fn reference_tunnel_reaches_a_wireguard_go_agent_through_a_real_tun() {
    if let Some(reason) = missing_prerequisite() {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set, so this test may not be skipped: {reason}");
        }
        eprintln!("skipping: {reason}");
        return;
    }
    let tag = run_tag();
    let mut topo = Topology::new(&tag);
    let a = topo.namespace(format!("cvpn-a-{tag}"));
    let t = topo.namespace(format!("cvpn-t-{tag}"));
    let agent_id: Uuid = AGENT_ID.parse().unwrap();
    let agent_ip = agent_address(agent_id);

    // The wire between the two machines.
    let veth = format!("ip link add veth-a netns {a} type veth peer name veth-t netns {t}");
    let words: Vec<&str> = veth.split_whitespace().collect();
    run(&words, Duration::from_secs(10)).unwrap();
    must(&a, &format!("ip addr add {AGENT_IP4}/24 dev veth-a"));
    must(&t, &format!("ip addr add {TUNNEL_IP4}/24 dev veth-t"));
    must(&a, "ip link set veth-a up");
    must(&t, "ip link set veth-t up");

    let agent_key = start_agent(&mut topo, &a, agent_id);

    // The control plane, in T.
    let scenario_file = topo.dir.join("scenario.json");
    std::fs::write(&scenario_file, scenario(&agent_key).to_string()).unwrap();
    let scenario_arg = scenario_file.display().to_string();
    let coder = topo.spawn(
        "mock-coder",
        &t,
        &[
            BIN,
            "mock-coder",
            "--listen",
            "127.0.0.1:0",
            "--scenario",
            &scenario_arg,
        ],
    );
    let url = topo.procs[coder].line(Duration::from_secs(15), |l| l.starts_with("http://"));

    // The manager with a real interface, and the tunnel it launches; the
    // tunnel's stderr goes to a file (the manager keeps only a tail).
    let tunnel_log = topo.dir.join("tunnel.log");
    topo.logs.push(tunnel_log.clone());
    let tunnel_cmd = format!(
        "sh -c 'exec {BIN} tunnel --log-level debug \"$@\" 2>>{}' sh",
        tunnel_log.display()
    );
    let manager_args = [
        BIN,
        "mock-manager",
        "--tun-device",
        "coder0",
        "--tunnel-cmd",
        &tunnel_cmd,
        "--coder-url",
        &url,
        "--hold-secs",
        "300",
    ];
    let manager = topo.spawn("mock-manager", &t, &manager_args);
    let started = topo.procs[manager].line(Duration::from_secs(60), |l| l.starts_with("started:"));
    assert!(started.contains("1 agents"), "{started}");

    // The interface as the NetworkSettingsRequests left it (§6.10, §6.11).
    let addrs = eventually("coder0 gets its /128", Duration::from_secs(10), || {
        let out = try_in(&t, "ip -6 addr show dev coder0", Duration::from_secs(5))?;
        let ok = out.contains("inet6 fd60:627a:a42b:") && out.contains("/128");
        if ok { Ok(out) } else { Err(out) }
    });
    assert!(
        addrs.contains("mtu 1280") && addrs.contains(",UP,"),
        "{addrs}"
    );
    let routes = must(&t, "ip -6 route show dev coder0");
    assert!(routes.contains("fd60:627a:a42b::/48"), "{routes}");

    // wireguard-go learns the tunnel's key, the only thing it needs.
    let key = eventually("the tunnel's key", Duration::from_secs(20), || {
        tunnel_key(&t, &url)
    });
    must(
        &a,
        &format!("wg set wg0 peer {key} allowed-ips fd60:627a:a42b::/48,fd7a:115c:a1e0::/48"),
    );

    // 1. ICMPv6 through coder0. The first answer may wait for the tunnel's
    // next handshake attempt (WireGuard retries every 5 s).
    eventually("ping6 through the tunnel", Duration::from_secs(30), || {
        try_in(
            &t,
            &format!("ping -6 -c 1 -W 1 {agent_ip}"),
            Duration::from_secs(5),
        )
    });
    let pings = must(&t, &format!("ping -6 -c 3 -i 0.2 -W 2 {agent_ip}"));
    assert!(pings.contains(" 3 received"), "{pings}");

    // 2. The tunnel's resolver answers the agent's name (§9.4).
    let answer = must(
        &t,
        &format!("dig +short +time=2 +tries=3 AAAA dev.wsp.me.coder @{DNS_SERVER}"),
    );
    let resolved: Vec<Ipv6Addr> = answer
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(resolved, [agent_ip], "dig answered {answer:?}");

    // 3. A few seconds of TCP, both ends real kernel stacks.
    let server = topo.spawn(
        "iperf3-server",
        &a,
        &["iperf3", "-s", "-1", "-B", &agent_ip.to_string()],
    );
    eventually("iperf3 listens", Duration::from_secs(10), || {
        let out = try_in(&a, "ss -Htln", Duration::from_secs(5))?;
        if out.contains(":5201") {
            Ok(())
        } else {
            Err(out)
        }
    });
    let report = try_in(
        &t,
        &format!("iperf3 -c {agent_ip} -t 3 -J --connect-timeout 5000"),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("iperf3 through the tunnel: {e}"));
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let received = &report["end"]["sum_received"];
    let bytes = received["bytes"].as_u64().unwrap_or(0);
    assert!(bytes > 100_000, "iperf3 moved only {bytes} bytes: {report}");
    let mbits = received["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6;
    eprintln!("TCP through the reference tunnel: {mbits:.0} Mbit/s (debug build)");
    topo.procs[server].stop(Duration::from_secs(2));

    // Stop: SIGTERM ends the manager's hold; it sends Stop and the tunnel
    // answers (§7.2).
    let status = topo.procs[manager].stop(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "mock-manager: {status:?}"
    );
    let summary = topo.procs[manager].line(Duration::from_secs(2), |l| l.contains("stopped"));
    assert!(
        summary.contains("2 network settings applied to coder0"),
        "{summary}"
    );
}
