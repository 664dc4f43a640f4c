//! Test hosts on one machine: two network namespaces joined by a veth pair.
//!
//! Used by the integration tests, the benchmark harness and `turnstile demo`.
//! Every topology gets unique names, addresses in 198.18.0.0/15 (the
//! benchmarking range) and is torn down on drop, also when a test panics.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("could not run `{cmd}`: {err} (is iproute2 installed and are you root?)")]
    Spawn { cmd: String, err: std::io::Error },
}

/// How to build the pair.
#[derive(Clone, Copy, Debug)]
pub struct TopologyConfig {
    /// Receive/transmit queues on each veth end.
    pub queues: u32,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig { queues: 1 }
    }
}

/// One side of the pair: a namespace, its veth end and address.
#[derive(Clone, Debug)]
pub struct Host {
    pub netns: String,
    pub dev: String,
    pub ip: Ipv4Addr,
}

impl Host {
    /// A `Command` that runs `program` inside this host's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }

    /// Moves the calling thread into this host's namespace (setns(2)); its
    /// sockets from then on are this host's.
    pub fn enter(&self) -> std::io::Result<()> {
        enter_netns(&self.netns)
    }

    /// Scrapes a Prometheus endpoint listening inside this namespace (e.g.
    /// on its loopback), from a short-lived thread that joins it, so the
    /// caller's own namespace is untouched and no process is spawned.
    pub fn scrape_metrics(&self, addr: SocketAddr) -> std::io::Result<String> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                crate::testkit::scrape(addr, Duration::from_secs(5))
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("scrape thread panicked")))
        })
    }

    /// Runs a shell line in this namespace and returns its output.
    pub fn sh(&self, line: &str) -> Result<Output, TopologyError> {
        let mut cmd = self.command("sh");
        cmd.args(["-c", line]);
        output(cmd, line)
    }

    /// Like [`Host::sh`] but fails unless the line exits 0.
    pub fn sh_ok(&self, line: &str) -> Result<String, TopologyError> {
        let out = self.sh(line)?;
        if !out.status.success() {
            return Err(TopologyError::Command {
                cmd: format!("[{}] {line}", self.netns),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Moves the calling thread into the named namespace (`ip netns` names, from
/// /run/netns) with setns(2); it affects only this thread.
pub fn enter_netns(netns: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{netns}");
    let file = std::fs::File::open(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("open {path}: {e}")))?;
    // SAFETY: a valid namespace fd we hold; setns only affects this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("setns {netns}: {e}")));
    }
    Ok(())
}

/// Two hosts joined by veth: `server` is where turnstile runs, `client` is
/// the Linux kernel peer.
pub struct Topology {
    pub server: Host,
    pub client: Host,
    children: Vec<Child>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn output(mut cmd: Command, what: &str) -> Result<Output, TopologyError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|err| TopologyError::Spawn {
            cmd: what.to_string(),
            err,
        })
}

fn run(args: &[&str]) -> Result<(), TopologyError> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let out = output(cmd, &args.join(" "))?;
    if !out.status.success() {
        return Err(TopologyError::Command {
            cmd: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

impl Topology {
    pub fn new(cfg: TopologyConfig) -> Result<Self, TopologyError> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names are limited to 15 bytes: keep the tag short.
        let tag = format!("{:x}{:x}", pid & 0xfffff, n);
        let subnet = ((pid as u8) ^ (n as u8).wrapping_mul(37)) as u32;
        let third = (subnet % 256) as u8;
        let server = Host {
            netns: format!("ts-{tag}-srv"),
            dev: format!("ts{tag}s"),
            ip: Ipv4Addr::new(198, 18, third, 1),
        };
        let client = Host {
            netns: format!("ts-{tag}-cli"),
            dev: format!("ts{tag}c"),
            ip: Ipv4Addr::new(198, 18, third, 2),
        };
        // From here on, Drop cleans up whatever part was made.
        let topo = Topology {
            server,
            client,
            children: Vec::new(),
        };
        topo.build(cfg)?;
        Ok(topo)
    }

    fn build(&self, cfg: TopologyConfig) -> Result<(), TopologyError> {
        let (s, c) = (&self.server, &self.client);
        let q = cfg.queues.max(1).to_string();
        run(&["ip", "netns", "add", &s.netns])?;
        run(&["ip", "netns", "add", &c.netns])?;
        run(&[
            "ip",
            "link",
            "add",
            &s.dev,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &c.dev,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])?;
        run(&["ip", "link", "set", &s.dev, "netns", &s.netns])?;
        run(&["ip", "link", "set", &c.dev, "netns", &c.netns])?;
        for h in [s, c] {
            h.sh_ok(&format!(
                "ip link set lo up && ip addr add {}/24 dev {} && ip link set {} up",
                h.ip, h.dev, h.dev
            ))?;
            // The kernel would otherwise leave TCP checksums to an offload
            // that veth never performs; GRO/GSO would hand us super-frames.
            h.sh_ok(&format!(
                "ethtool -K {} tx off tso off gso off gro off >/dev/null 2>&1 || true",
                h.dev
            ))?;
        }
        Ok(())
    }

    /// Starts `program args...` in the server namespace; it is killed on drop.
    pub fn spawn_server(
        &mut self,
        program: &str,
        args: &[&str],
    ) -> Result<&mut Child, TopologyError> {
        let mut cmd = self.server.command(program);
        cmd.args(args).stdin(Stdio::null());
        self.spawn(cmd, program)
    }

    /// Starts a process in the client namespace; it is killed on drop.
    pub fn spawn_client(
        &mut self,
        program: &str,
        args: &[&str],
    ) -> Result<&mut Child, TopologyError> {
        let mut cmd = self.client.command(program);
        cmd.args(args).stdin(Stdio::null());
        self.spawn(cmd, program)
    }

    /// Keeps a process started elsewhere so it is killed on drop.
    pub fn adopt(&mut self, child: Child) -> &mut Child {
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }

    fn spawn(&mut self, mut cmd: Command, what: &str) -> Result<&mut Child, TopologyError> {
        let child = cmd.spawn().map_err(|err| TopologyError::Spawn {
            cmd: what.to_string(),
            err,
        })?;
        Ok(self.adopt(child))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for h in [&self.server, &self.client] {
            remove_netns(&h.netns);
        }
    }
}

/// Ends every process still inside namespace `name`, then deletes it (and
/// so the veth ends inside it, and their peers). Processes spawned through
/// `ip netns exec` would otherwise keep the namespace alive after its name
/// is gone. Best effort: for Drop guards.
pub fn remove_netns(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|out| {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2) on a pid inside our namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        });
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}
