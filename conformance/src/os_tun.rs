//! A real Linux TUN device for the mock manager, so that a tunnel can be
//! driven the way a manager with a real interface drives it (protocol.md
//! §9.5, §6.10, §6.11): the manager creates the device, hands its
//! descriptor to the tunnel as `StartRequest.tunnel_file_descriptor`, and
//! applies every NetworkSettingsRequest to the interface.
//!
//! Why `ip` (iproute2) and not netlink: the commands are what an operator
//! would type, so a failure is reported as the exact command and the
//! kernel's words, which is what a test or a person debugging a tunnel
//! needs. The settings are merged by the macOS manager's rules (§6.11 item
//! 2) and the whole merged object is re-applied each time; what this
//! manager added earlier and the new object no longer holds is removed.
//!
//! DNS settings are validated and merged but not installed in the host's
//! resolver: a test queries the server directly (`dig @fd60:627a:a42b::53`),
//! which the included route already sends into the tunnel.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::time::Duration;

use codervpn_proto::NetworkSettingsRequest;
use codervpn_proto::vpn::network_settings_request::{DnsSettings, IPv4Settings, IPv6Settings};

/// Bound on each `ip` command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Linux capability number of CAP_NET_ADMIN.
const CAP_NET_ADMIN: u32 = 12;

/// Why the device could not be made or configured.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error(
        "creating the TUN device {0:?} needs CAP_NET_ADMIN, which this process lacks: run it as root (or grant the capability)"
    )]
    NotPrivileged(String),
    #[error("cannot create the TUN device {name:?}: {source}")]
    Create {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("real TUN devices are supported on Linux only")]
    Unsupported,
    #[error("cannot duplicate the TUN descriptor: {0}")]
    Dup(#[source] std::io::Error),
    #[error("{0}")]
    Settings(String),
}

/// Whether this process holds CAP_NET_ADMIN (read from `/proc/self/status`,
/// so no privileged call is needed to find out).
pub fn has_net_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// The settings accumulated from every request so far (§6.11 item 2).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Merged {
    pub mtu: u32,
    pub ipv4: Option<IPv4Settings>,
    pub ipv6: Option<IPv6Settings>,
    pub dns: Option<DnsSettings>,
}

impl Merged {
    /// Merges `req` by the macOS manager's rules: a present section
    /// replaces the old one, a 0 MTU keeps the old value, the tunnel
    /// overhead and remote address are ignored.
    pub fn merge(&mut self, req: &NetworkSettingsRequest) {
        if req.mtu != 0 {
            self.mtu = req.mtu;
        }
        if let Some(v4) = &req.ipv4_settings {
            self.ipv4 = Some(v4.clone());
        }
        if let Some(v6) = &req.ipv6_settings {
            self.ipv6 = Some(v6.clone());
        }
        if let Some(dns) = &req.dns_settings {
            self.dns = Some(dns.clone());
        }
    }
}

/// What one application of the merged settings does to the interface.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `ip` argument lists, in order.
    pub commands: Vec<Vec<String>>,
    /// Addresses (`addr/len`) and routes (`net/len`) present afterwards.
    pub addrs: BTreeSet<String>,
    pub routes: BTreeSet<String>,
}

/// The commands that bring interface `name` to `merged`, given what was
/// applied before. Invalid settings are an error naming the field, and no
/// command runs (§6.11 item 4).
pub fn plan(
    name: &str,
    merged: &Merged,
    had_addrs: &BTreeSet<String>,
    had_routes: &BTreeSet<String>,
) -> Result<Plan, String> {
    let mut addrs = Vec::new();
    let mut routes = Vec::new();
    if let Some(v4) = &merged.ipv4 {
        v4_entries(v4, &mut addrs, &mut routes)?;
    }
    if let Some(v6) = &merged.ipv6 {
        v6_entries(v6, &mut addrs, &mut routes)?;
    }
    if let Some(dns) = &merged.dns {
        for server in &dns.servers {
            server
                .parse::<IpAddr>()
                .map_err(|_| format!("dns_settings.servers: {server:?} is not an IP address"))?;
        }
    }
    let words = |list: &[&str]| list.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
    let mut plan = Plan::default();
    if merged.mtu != 0 {
        let mtu = merged.mtu.to_string();
        plan.commands
            .push(words(&["link", "set", "dev", name, "mtu", &mtu]));
    }
    plan.commands
        .push(words(&["link", "set", "dev", name, "up"]));
    for (family, addr) in &addrs {
        let mut command = words(&[family, "addr", "replace", addr, "dev", name]);
        if *family == "-6" {
            // A point-to-point TUN has nobody to detect duplicates with.
            command.push("nodad".into());
        }
        plan.commands.push(command);
        plan.addrs.insert(addr.clone());
    }
    for stale in had_addrs.difference(&plan.addrs) {
        plan.commands
            .push(words(&["addr", "del", stale, "dev", name]));
    }
    for (family, net, via) in &routes {
        let mut command = words(&[family, "route", "replace", net, "dev", name]);
        if let Some(via) = via {
            command.extend(["via".to_owned(), via.clone()]);
        }
        plan.commands.push(command);
        plan.routes.insert(net.clone());
    }
    for stale in had_routes.difference(&plan.routes) {
        plan.commands
            .push(words(&["route", "del", stale, "dev", name]));
    }
    Ok(plan)
}

type Addrs = Vec<(&'static str, String)>;
type Routes = Vec<(&'static str, String, Option<String>)>;

fn v4_entries(v4: &IPv4Settings, addrs: &mut Addrs, routes: &mut Routes) -> Result<(), String> {
    if v4.addrs.len() != v4.subnet_masks.len() {
        return Err(format!(
            "ipv4_settings: {} addrs but {} subnet_masks",
            v4.addrs.len(),
            v4.subnet_masks.len()
        ));
    }
    for (addr, mask) in v4.addrs.iter().zip(&v4.subnet_masks) {
        let ip: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("ipv4_settings.addrs: {addr:?} is not an IPv4 address"))?;
        let len = mask_len(mask).ok_or_else(|| {
            format!("ipv4_settings.subnet_masks: {mask:?} is not a contiguous dotted-decimal mask")
        })?;
        addrs.push(("-4", format!("{ip}/{len}")));
    }
    if !v4.excluded_routes.is_empty() {
        return Err("ipv4_settings.excluded_routes: this manager cannot exclude routes".into());
    }
    for route in &v4.included_routes {
        let dest: Ipv4Addr = route.destination.parse().map_err(|_| {
            format!(
                "ipv4_settings.included_routes: destination {:?} is not an IPv4 address",
                route.destination
            )
        })?;
        let len = mask_len(&route.mask).ok_or_else(|| {
            format!(
                "ipv4_settings.included_routes: mask {:?} is not a contiguous dotted-decimal mask",
                route.mask
            )
        })?;
        // §6.10: the destination comes as given, not masked; the kernel
        // wants the network address.
        let bits = u32::from(dest) & u32::MAX.checked_shl(32 - len).unwrap_or(0);
        let via = gateway::<Ipv4Addr>(&route.router, "ipv4_settings.included_routes")?;
        routes.push(("-4", format!("{}/{len}", Ipv4Addr::from(bits)), via));
    }
    Ok(())
}

fn v6_entries(v6: &IPv6Settings, addrs: &mut Addrs, routes: &mut Routes) -> Result<(), String> {
    if v6.addrs.len() != v6.prefix_lengths.len() {
        return Err(format!(
            "ipv6_settings: {} addrs but {} prefix_lengths",
            v6.addrs.len(),
            v6.prefix_lengths.len()
        ));
    }
    for (addr, len) in v6.addrs.iter().zip(&v6.prefix_lengths) {
        let ip: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("ipv6_settings.addrs: {addr:?} is not an IPv6 address"))?;
        if *len > 128 {
            return Err(format!("ipv6_settings.prefix_lengths: {len} is over 128"));
        }
        addrs.push(("-6", format!("{ip}/{len}")));
    }
    if !v6.excluded_routes.is_empty() {
        return Err("ipv6_settings.excluded_routes: this manager cannot exclude routes".into());
    }
    for route in &v6.included_routes {
        let dest: Ipv6Addr = route.destination.parse().map_err(|_| {
            format!(
                "ipv6_settings.included_routes: destination {:?} is not an IPv6 address",
                route.destination
            )
        })?;
        let len = route.prefix_length;
        if len > 128 {
            return Err(format!(
                "ipv6_settings.included_routes: prefix_length {len} is over 128"
            ));
        }
        let bits = u128::from(dest) & u128::MAX.checked_shl(128 - len).unwrap_or(0);
        let via = gateway::<Ipv6Addr>(&route.router, "ipv6_settings.included_routes")?;
        routes.push(("-6", format!("{}/{len}", Ipv6Addr::from(bits)), via));
    }
    Ok(())
}

/// A route's `router`: empty means on-link.
fn gateway<A: std::str::FromStr + ToString>(
    router: &str,
    field: &str,
) -> Result<Option<String>, String> {
    if router.is_empty() {
        return Ok(None);
    }
    router
        .parse::<A>()
        .map(|a| Some(a.to_string()))
        .map_err(|_| format!("{field}: router {router:?} is not an address"))
}

/// The prefix length of a contiguous dotted-decimal mask.
fn mask_len(mask: &str) -> Option<u32> {
    let bits = u32::from(mask.parse::<Ipv4Addr>().ok()?);
    let len = bits.leading_ones();
    (bits.checked_shl(len).unwrap_or(0) == 0).then_some(len)
}

/// The state behind the device: merged settings and what was applied.
#[derive(Debug, Default)]
struct State {
    merged: Merged,
    addrs: BTreeSet<String>,
    routes: BTreeSet<String>,
    applied: usize,
}

/// A TUN device (IFF_TUN | IFF_NO_PI: one raw IP packet per read or
/// write) that lives as long as this value and the tunnel's copies of its
/// descriptor.
#[derive(Debug)]
pub struct OsTun {
    name: String,
    fd: OwnedFd,
    state: tokio::sync::Mutex<State>,
}

impl OsTun {
    /// Creates the device `name` in the current network namespace. It
    /// stays down until the first settings arrive.
    pub fn create(name: &str) -> Result<OsTun, TunError> {
        if !has_net_admin() {
            return Err(TunError::NotPrivileged(name.to_owned()));
        }
        let fd = create_fd(name)?;
        Ok(OsTun {
            name: name.to_owned(),
            fd,
            state: tokio::sync::Mutex::default(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new descriptor of the device, for the tunnel to inherit.
    pub fn child_fd(&self) -> Result<OwnedFd, TunError> {
        self.fd.try_clone().map_err(TunError::Dup)
    }

    /// How many requests were applied successfully.
    pub async fn applied(&self) -> usize {
        self.state.lock().await.applied
    }

    /// Merges `req` into the settings so far and applies the result to the
    /// interface (§6.11). The error is the text for `error_message`.
    pub async fn apply(&self, req: &NetworkSettingsRequest) -> Result<(), String> {
        let mut state = self.state.lock().await;
        let mut merged = state.merged.clone();
        merged.merge(req);
        let plan = plan(&self.name, &merged, &state.addrs, &state.routes)?;
        state.merged = merged;
        for command in &plan.commands {
            run_ip(command).await?;
        }
        state.addrs = plan.addrs;
        state.routes = plan.routes;
        state.applied += 1;
        Ok(())
    }
}

/// Runs `ip ARGS`, bounded; the error quotes the command and its stderr.
async fn run_ip(args: &[String]) -> Result<(), String> {
    let shown = format!("ip {}", args.join(" "));
    let mut command = tokio::process::Command::new("ip");
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await {
        Err(_) => Err(format!(
            "`{shown}` did not finish within {COMMAND_TIMEOUT:?}"
        )),
        Ok(Err(err)) => Err(format!(
            "cannot run `{shown}`: {err} (is iproute2 installed?)"
        )),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

#[cfg(target_os = "linux")]
fn create_fd(name: &str) -> Result<OwnedFd, TunError> {
    use std::os::fd::AsFd;
    let create = |source| TunError::Create {
        name: name.to_owned(),
        source,
    };
    let device = tun_rs::DeviceBuilder::new()
        .name(name)
        .packet_information(false)
        .build_sync()
        .map_err(create)?;
    // The builder's device owns the descriptor; keep an independent copy
    // and let the builder's go (the device lives while any copy is open).
    device.as_fd().try_clone_to_owned().map_err(create)
}

#[cfg(not(target_os = "linux"))]
fn create_fd(_name: &str) -> Result<OwnedFd, TunError> {
    Err(TunError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use codervpn_proto::vpn::network_settings_request::i_pv4_settings::IPv4Route;
    use codervpn_proto::vpn::network_settings_request::i_pv6_settings::IPv6Route;

    fn v6(addrs: &[&str], lens: &[u32], routes: &[(&str, u32)]) -> IPv6Settings {
        IPv6Settings {
            addrs: addrs.iter().map(|a| (*a).to_owned()).collect(),
            prefix_lengths: lens.to_vec(),
            included_routes: routes
                .iter()
                .map(|(d, l)| IPv6Route {
                    destination: (*d).to_owned(),
                    prefix_length: *l,
                    router: String::new(),
                })
                .collect(),
            excluded_routes: vec![],
        }
    }

    fn lines(plan: &Plan) -> Vec<String> {
        plan.commands.iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn the_reference_tunnels_router_settings_become_ip_commands() {
        let mut merged = Merged::default();
        merged.merge(&NetworkSettingsRequest {
            mtu: 1280,
            ipv6_settings: Some(v6(
                &["fd60:627a:a42b:708:90a:b0c:d0e:f10"],
                &[128],
                // Not masked on the wire (§6.10); masked for the kernel.
                &[("fd60:627a:a42b:1::", 48)],
            )),
            ..NetworkSettingsRequest::default()
        });
        let plan = plan("coder0", &merged, &BTreeSet::new(), &BTreeSet::new()).unwrap();
        assert_eq!(
            lines(&plan),
            [
                "link set dev coder0 mtu 1280",
                "link set dev coder0 up",
                "-6 addr replace fd60:627a:a42b:708:90a:b0c:d0e:f10/128 dev coder0 nodad",
                "-6 route replace fd60:627a:a42b::/48 dev coder0",
            ]
        );
    }

    #[test]
    fn a_dns_request_keeps_the_router_settings_and_a_new_section_replaces_the_old() {
        let mut merged = Merged::default();
        merged.merge(&NetworkSettingsRequest {
            mtu: 1280,
            ipv6_settings: Some(v6(&["fd60::1"], &[128], &[("fd60::", 16)])),
            ..NetworkSettingsRequest::default()
        });
        let first = plan("t", &merged, &BTreeSet::new(), &BTreeSet::new()).unwrap();
        merged.merge(&NetworkSettingsRequest {
            dns_settings: Some(DnsSettings {
                servers: vec!["fd60:627a:a42b::53".into()],
                match_domains: vec!["coder".into()],
                ..DnsSettings::default()
            }),
            ..NetworkSettingsRequest::default()
        });
        assert_eq!(merged.mtu, 1280);
        let again = plan("t", &merged, &first.addrs, &first.routes).unwrap();
        assert_eq!(again, first);
        merged.merge(&NetworkSettingsRequest {
            ipv6_settings: Some(v6(&["fd60::2"], &[64], &[])),
            ..NetworkSettingsRequest::default()
        });
        let moved = plan("t", &merged, &first.addrs, &first.routes).unwrap();
        assert_eq!(
            lines(&moved)[2..],
            [
                "-6 addr replace fd60::2/64 dev t nodad",
                "addr del fd60::1/128 dev t",
                "route del fd60::/16 dev t",
            ]
        );
    }

    #[test]
    fn ipv4_masks_become_prefix_lengths_and_routes_are_masked() {
        let merged = Merged {
            ipv4: Some(IPv4Settings {
                addrs: vec!["100.64.0.5".into()],
                subnet_masks: vec!["255.255.255.255".into()],
                router: String::new(),
                included_routes: vec![IPv4Route {
                    destination: "100.64.1.9".into(),
                    mask: "255.192.0.0".into(),
                    router: "100.64.0.1".into(),
                }],
                excluded_routes: vec![],
            }),
            ..Merged::default()
        };
        let plan = plan("t", &merged, &BTreeSet::new(), &BTreeSet::new()).unwrap();
        assert_eq!(
            lines(&plan)[1..],
            [
                "-4 addr replace 100.64.0.5/32 dev t",
                "-4 route replace 100.64.0.0/10 dev t via 100.64.0.1",
            ]
        );
    }

    #[test]
    fn settings_that_cannot_be_applied_are_refused_with_the_field() {
        let check = |merged: Merged, needle: &str| {
            let err = plan("t", &merged, &BTreeSet::new(), &BTreeSet::new()).unwrap_err();
            assert!(err.contains(needle), "{err}");
        };
        check(
            Merged {
                ipv6: Some(v6(&["fd60::1", "fd60::2"], &[128], &[])),
                ..Merged::default()
            },
            "2 addrs but 1 prefix_lengths",
        );
        check(
            Merged {
                ipv6: Some(v6(&["not-an-address"], &[128], &[])),
                ..Merged::default()
            },
            "\"not-an-address\" is not an IPv6 address",
        );
        check(
            Merged {
                ipv4: Some(IPv4Settings {
                    addrs: vec!["10.0.0.1".into()],
                    subnet_masks: vec!["255.0.255.0".into()],
                    ..IPv4Settings::default()
                }),
                ..Merged::default()
            },
            "not a contiguous",
        );
        check(
            Merged {
                dns: Some(DnsSettings {
                    servers: vec!["resolver".into()],
                    ..DnsSettings::default()
                }),
                ..Merged::default()
            },
            "servers",
        );
    }

    #[test]
    fn masks() {
        assert_eq!(mask_len("255.255.255.255"), Some(32));
        assert_eq!(mask_len("0.0.0.0"), Some(0));
        assert_eq!(mask_len("255.255.240.0"), Some(20));
        assert_eq!(mask_len("255.0.0.255"), None);
        assert_eq!(mask_len("nope"), None);
    }
}
