//! A small fleet: two turnstile instances (namespaces `a` and `b`, one
//! interface each) behind a router namespace, and a `hosts` namespace
//! behind the router holding the kernel backends and the clients:
//!
//! ```text
//!   a (turnstile, bird) --\                      /-- hosts: backends .10-.12,
//!                          router (bird, ECMP) --       clients .100-.149
//!   b (turnstile, bird) --/
//! ```
//!
//! The router learns the VIP from each instance's bird over BGP and
//! installs one route with a next hop per announcing instance. Every
//! namespace, and every process left in one, is removed on drop.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use turnstile::topology::Host;

use super::first_line;
use super::lab::{BACKEND_PY, NAMES};

pub const BACKEND_PORT: u16 = 9000;
pub const METRICS: &str = "127.0.0.1:9931";

fn run(line: &str) {
    let out = Command::new("sh")
        .args(["-c", line])
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "`{line}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One instance: its namespace side, the router's side of its link.
pub struct Instance {
    pub host: Host,
    /// The router's address on this instance's link (its BGP neighbor).
    pub router_ip: Ipv4Addr,
    pub proc: Option<Child>,
    pub stderr_path: PathBuf,
}

impl Instance {
    pub fn metrics(&self) -> String {
        self.get("/metrics")
    }

    pub fn get(&self, path: &str) -> String {
        let addr: SocketAddr = METRICS.parse().unwrap();
        let out = self
            .host
            .command("curl")
            .args(["-s", "--max-time", "3", &format!("http://{addr}{path}")])
            .stdin(Stdio::null())
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The HTTP status of GET /ready ("000" when nothing answers).
    pub fn ready(&self) -> String {
        let out = self
            .host
            .command("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                &format!("http://{METRICS}/ready"),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

pub struct Fleet {
    pub dir: PathBuf,
    pub a: Instance,
    pub b: Instance,
    pub router: Host,
    pub hosts: Host,
    pub vip: Ipv4Addr,
    pub backends: Vec<Ipv4Addr>,
    pub clients: Vec<Ipv4Addr>,
    kids: Vec<Child>,
    netns: Vec<String>,
}

impl Fleet {
    pub fn new(clients: usize) -> Fleet {
        let pid = std::process::id();
        let tag = format!("{:x}", pid & 0xfffff);
        // Three /24s of 198.19.0.0/16 of our own (other tests use 198.18/16
        // and 198.19.255/24).
        let t = ((pid % 80) * 3) as u8;
        let net = |k: u8, last: u8| Ipv4Addr::new(198, 19, t + k, last);
        let dir = std::env::temp_dir().join(format!("turnstile-fleet-{pid}"));
        std::fs::create_dir_all(&dir).unwrap();
        let names: Vec<String> = ["a", "b", "r", "h"]
            .iter()
            .map(|n| format!("tsf-{tag}-{n}"))
            .collect();
        let mut fleet = Fleet {
            dir: dir.clone(),
            a: Instance {
                host: Host {
                    netns: names[0].clone(),
                    dev: format!("tsf{tag}a"),
                    ip: net(0, 2),
                },
                router_ip: net(0, 1),
                proc: None,
                stderr_path: dir.join("a.stderr"),
            },
            b: Instance {
                host: Host {
                    netns: names[1].clone(),
                    dev: format!("tsf{tag}b"),
                    ip: net(1, 2),
                },
                router_ip: net(1, 1),
                proc: None,
                stderr_path: dir.join("b.stderr"),
            },
            router: Host {
                netns: names[2].clone(),
                dev: format!("tsf{tag}rh"),
                ip: net(2, 1),
            },
            hosts: Host {
                netns: names[3].clone(),
                dev: format!("tsf{tag}h"),
                ip: net(2, 2),
            },
            vip: Ipv4Addr::new(198, 19, 255, 102),
            backends: (0..3).map(|i| net(2, 10 + i)).collect(),
            clients: (0..clients).map(|i| net(2, 100 + i as u8)).collect(),
            kids: Vec::new(),
            netns: Vec::new(),
        };
        for n in &names {
            run(&format!("ip netns add {n}"));
            fleet.netns.push(n.clone());
        }
        let r = fleet.router.netns.clone();
        // Each instance's link: its end in its namespace, the router's end
        // named after it with an `r`.
        for inst in [&fleet.a, &fleet.b] {
            let (ns, dev) = (&inst.host.netns, &inst.host.dev);
            run(&format!(
                "ip link add {dev} type veth peer name {dev}r && ip link set {dev} netns {ns} && ip link set {dev}r netns {r}"
            ));
            run(&format!(
                "ip -n {ns} link set lo up && ip -n {ns} addr add {}/24 dev {dev} && ip -n {ns} link set {dev} up && ip -n {ns} route add default via {}",
                inst.host.ip, inst.router_ip
            ));
            run(&format!(
                "ip -n {r} addr add {}/24 dev {dev}r && ip -n {r} link set {dev}r up",
                inst.router_ip
            ));
            for (n, d) in [(ns.as_str(), dev.clone()), (r.as_str(), format!("{dev}r"))] {
                run(&format!(
                    "ip netns exec {n} ethtool -K {d} tx off tso off gso off gro off >/dev/null 2>&1 || true"
                ));
            }
        }
        let (h, hd, rd) = (&fleet.hosts.netns, &fleet.hosts.dev, &fleet.router.dev);
        run(&format!(
            "ip link add {hd} type veth peer name {rd} && ip link set {hd} netns {h} && ip link set {rd} netns {r}"
        ));
        run(&format!(
            "ip -n {h} link set lo up && ip -n {h} addr add {}/24 dev {hd} && ip -n {h} link set {hd} up && ip -n {h} route add default via {}",
            fleet.hosts.ip, fleet.router.ip
        ));
        run(&format!(
            "ip -n {r} link set lo up && ip -n {r} addr add {}/24 dev {rd} && ip -n {r} link set {rd} up",
            fleet.router.ip
        ));
        for (n, d) in [(h.as_str(), hd.as_str()), (r.as_str(), rd.as_str())] {
            run(&format!(
                "ip netns exec {n} ethtool -K {d} tx off tso off gso off gro off >/dev/null 2>&1 || true"
            ));
        }
        for ip in fleet.backends.iter().chain(&fleet.clients) {
            run(&format!("ip -n {h} addr add {ip}/24 dev {hd}"));
        }
        // The router forwards and spreads flows by their 5-tuple (policy 1:
        // addresses, protocol and ports), as an L4 ECMP router does.
        run(&format!(
            "ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 net.ipv4.conf.all.rp_filter=0"
        ));
        run(&format!(
            "ip netns exec {h} sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range='1024 60999'"
        ));
        std::fs::write(dir.join("backend.py"), BACKEND_PY).unwrap();
        fleet
    }

    /// Starts backend `i` (lab.rs's `http` mode: answers with its name).
    pub fn start_backend(&mut self, i: usize) {
        let mut child = self
            .hosts
            .command("python3")
            .arg(self.dir.join("backend.py"))
            .args([
                &self.backends[i].to_string(),
                &BACKEND_PORT.to_string(),
                NAMES[i],
                "http",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn backend");
        let line = first_line(child.stdout.take().unwrap(), Duration::from_secs(30));
        assert_eq!(line.as_deref().map(str::trim), Some("ready"), "backend {i}");
        self.kids.push(child);
    }

    /// Writes `text` as `name` in the test's directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Starts `turnstile run` in instance `a` or `b` with `config`.
    pub fn start_instance(&mut self, which: char, config: &Path) {
        let inst = if which == 'a' {
            &mut self.a
        } else {
            &mut self.b
        };
        let stderr = File::create(&inst.stderr_path).unwrap();
        let mut child = inst
            .host
            .command(super::BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn turnstile run");
        let line = first_line(child.stdout.take().unwrap(), Duration::from_secs(30));
        if !line.as_deref().unwrap_or("").starts_with("listening ") {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "instance {which}: no listening line; stderr: {}",
                inst.stderr()
            );
        }
        inst.proc = Some(child);
    }

    /// Starts a process that lives until the fleet is dropped.
    pub fn keep(&mut self, mut cmd: Command) {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        self.kids.push(child);
    }

    /// bird with `conf` in `host`, its control socket `NAME.ctl`.
    pub fn start_bird(&mut self, host: &Host, name: &str, conf: &str) -> PathBuf {
        let conf_path = self.write(&format!("{name}.conf"), conf);
        let ctl = self.dir.join(format!("{name}.ctl"));
        let mut cmd = host.command("bird");
        cmd.args(["-f", "-c"]).arg(conf_path).arg("-s").arg(&ctl);
        self.keep(cmd);
        ctl
    }

    /// The router's route to the VIP as `ip route` prints it.
    pub fn vip_route(&self) -> String {
        self.router
            .sh_ok(&format!("ip route show {}/32", self.vip))
            .unwrap_or_default()
    }

    /// Which instances the router's VIP route leads to now.
    pub fn next_hops(&self) -> (bool, bool) {
        let r = self.vip_route();
        (
            r.contains(&format!("via {} ", self.a.host.ip)),
            r.contains(&format!("via {} ", self.b.host.ip)),
        )
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for inst in [&mut self.a, &mut self.b] {
            if let Some(mut c) = inst.proc.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for c in &mut self.kids {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.netns {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", n]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) on a process left inside our namespace.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
