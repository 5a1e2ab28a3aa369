//! Separate hosts on one machine: each a network namespace with its own
//! address on a bridge this test made (10.231.N.0/24, reached only by these
//! hosts), so a link can be cut, not only a process killed.
//!
//! `Lab::start` needs root and `ip`/`iptables`; where they are missing it
//! returns `None` and the caller skips, saying why. Everything it made is
//! removed on drop.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// A bridge and the hosts on it.
pub struct Lab {
    prefix: String,
    subnet: u8,
    hosts: Vec<String>,
}

/// One host: a namespace and its address.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub ip: String,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Lab {
    /// A fresh bridge, or `Err(why)` where this machine cannot make one.
    pub fn start() -> std::result::Result<Self, String> {
        let id = (crate::rand_u64() % 200 + 20) as u8;
        let lab = Self {
            prefix: format!("cl{:x}", crate::rand_u64() % 0xfffff),
            subnet: id,
            hosts: Vec::new(),
        };
        let bridge = lab.bridge();
        run(&["ip", "link", "add", &bridge, "type", "bridge"]).map_err(|e| e.to_string())?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.231.{id}.1/24"),
            "dev",
            &bridge,
        ])
        .and_then(|_| run(&["ip", "link", "set", &bridge, "up"]))
        // Where bridged traffic passes the host's firewall (Docker sets
        // FORWARD to DROP), let this bridge's hosts reach each other.
        .and_then(|_| {
            run(&[
                "iptables", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
            ])
        })
        .map_err(|e| e.to_string())?;
        Ok(lab)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// The address the test process (on the bridge) has.
    pub fn gateway(&self) -> String {
        format!("10.231.{}.1", self.subnet)
    }

    /// Adds a host with the next address.
    pub fn host(&mut self, name: &str) -> Result<Host> {
        let n = self.hosts.len() + 2;
        let ns = format!("{}-{name}", self.prefix);
        let outside = format!("{}o{n}", self.prefix);
        let ip = format!("10.231.{}.{n}", self.subnet);
        run(&["ip", "netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        run(&[
            "ip", "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        run(&["ip", "link", "set", &outside, "master", &self.bridge()])?;
        run(&["ip", "link", "set", &outside, "up"])?;
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        run(&[
            "ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up",
        ])?;
        run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        Ok(Host { ns, ip })
    }

    /// Cuts all traffic between `host` and `peer_ip`, both ways.
    pub fn cut(&self, host: &Host, peer_ip: &str) -> Result<()> {
        for (chain, dir) in [("OUTPUT", "-d"), ("INPUT", "-s")] {
            iptables(host, &["-A", chain, dir, peer_ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Drops `percent` % of `host`'s packets, both ways, at random (the
    /// kernel here has no netem: iptables' statistic match instead).
    pub fn lose(&self, host: &Host, percent: u32) -> Result<()> {
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        for chain in ["OUTPUT", "INPUT"] {
            iptables(
                host,
                &[
                    "-A",
                    chain,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Queues `host`'s outgoing packets to netfilter queue `queue`, where
    /// a `netem` process inside the host holds them (see `netem.rs`);
    /// packets pass untouched while none listens.
    pub fn shape(&self, host: &Host, queue: u16) -> Result<()> {
        let queue = queue.to_string();
        iptables(
            host,
            &[
                "-A",
                "OUTPUT",
                "-o",
                "eth0",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue,
                "--queue-bypass",
            ],
        )
    }

    /// Heals every cut, loss and shaping of `host`.
    pub fn heal(&self, host: &Host) -> Result<()> {
        for chain in ["OUTPUT", "INPUT"] {
            iptables(host, &["-F", chain])?;
        }
        Ok(())
    }
}

/// Runs iptables with `args` inside `host`.
fn iptables(host: &Host, args: &[&str]) -> Result<()> {
    let mut all = vec!["ip", "netns", "exec", &host.ns, "iptables"];
    all.extend(args);
    run(&all)
}

impl Host {
    /// A command that runs inside this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.hosts {
            // Anything still running inside dies with its namespace's links.
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("iptables")
            .args([
                "-D",
                "FORWARD",
                "-i",
                &self.bridge(),
                "-o",
                &self.bridge(),
                "-j",
                "ACCEPT",
            ])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}
