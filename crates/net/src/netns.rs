//! Network namespaces for tests that run nodes as separate hosts (feature `test-utils`): a hub
//! namespace holding bridges with no uplink, and one namespace per node joined to a bridge by a
//! veth pair. Everything lives inside namespaces created here, so the host's own network is
//! untouched and traffic can reach no outside address.
//!
//! ```text
//!   ns <prefix><tag>-hub:  br0 (bridge, no address)   [br1 ...]
//!                           ├── h0 ══ veth ══ eth0: ns <prefix><tag>-0, <address 0>/24
//!                           └── h1 ══ veth ══ eth0: ns <prefix><tag>-1, <address 1>/24
//! ```
//!
//! `<tag>` is unique per run, so parallel runs do not clash. Deleting a namespace deletes its
//! interfaces, so dropping the [`Namespaces`] guard (also when a test fails) removes everything.
//! A node runs in its namespace as a child process under `ip netns exec` (no `setns`, which would
//! need `unsafe`). Needs root and `ip` (iproute2).

use std::net::Ipv4Addr;
use std::process::Command;

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process runs as root (effective uid 0), as creating namespaces needs.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Where a node's namespace joins the hub.
#[derive(Debug, Clone, Copy)]
pub struct Attach {
    /// The hub's bridge the node's veth is put on (one of those given to
    /// [`Namespaces::create`]).
    pub bridge: &'static str,
    /// The node's address on its `eth0`, in a /24.
    pub address: Ipv4Addr,
}

/// The namespaces of one run; dropping it deletes them (and with them every interface).
#[derive(Debug)]
pub struct Namespaces {
    hub: String,
    nodes: Vec<String>,
}

impl Namespaces {
    /// The hub namespace with `bridges` (up, no address), and one namespace per entry of
    /// `nodes`, named `<prefix><tag>-<i>`: `eth0` with the entry's address, joined to its bridge,
    /// and `lo`, both up. Whatever was created is deleted again when a step fails.
    pub fn create(prefix: &str, bridges: &[&str], nodes: &[Attach]) -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tag = format!("{:05x}", (std::process::id() ^ nanos) & 0xf_ffff);
        let mut ns = Self {
            hub: format!("{prefix}{tag}-hub"),
            nodes: Vec::new(),
        };
        ip(&["netns", "add", &ns.hub])?;
        for br in bridges {
            ip(&["-n", &ns.hub, "link", "add", br, "type", "bridge"])?;
            ip(&["-n", &ns.hub, "link", "set", br, "up"])?;
        }
        for (i, node) in nodes.iter().enumerate() {
            let name = format!("{prefix}{tag}-{i}");
            ip(&["netns", "add", &name])?;
            ns.nodes.push(name.clone());
            // Interface names are per namespace, so short fixed names cannot clash.
            let hub_end = format!("h{i}");
            ip(&[
                "-n", &ns.hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0",
                "netns", &name,
            ])?;
            ip(&[
                "-n",
                &ns.hub,
                "link",
                "set",
                &hub_end,
                "master",
                node.bridge,
                "up",
            ])?;
            let cidr = format!("{}/24", node.address);
            ip(&["-n", &name, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &name, "link", "set", "eth0", "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }

    /// The hub namespace (the bridges' home).
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// The nodes' namespaces, in the order given to [`Namespaces::create`].
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            if let Err(e) = ip(&["netns", "delete", name]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}
