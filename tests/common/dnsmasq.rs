//! dnsmasq as an authoritative-enough DNS server in a test namespace: SRV
//! and A records given on its command line, no upstream, no files read.
//! dnsmasq re-reads only host files on SIGHUP, not `--srv-host`, so records
//! change by restarting it (`set_records`).

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use turnstile::topology::Host;

use super::eventually;

/// One SRV record: its target host, address, port, priority and weight.
#[derive(Clone, Debug)]
pub struct SrvRecord {
    pub host: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

pub struct Dnsmasq {
    ns: Host,
    pub ip: Ipv4Addr,
    /// The SRV owner name (e.g. `_http._tcp.api.internal`).
    pub name: String,
    /// TTL of its answers, seconds.
    pub ttl: u32,
    child: Option<Child>,
}

/// Whether dnsmasq is installed (deploy/dev-setup.sh installs it).
pub fn available() -> bool {
    std::path::Path::new("/usr/sbin/dnsmasq").exists()
}

impl Dnsmasq {
    /// Starts serving `records` under `name` on `ip`:53 in `ns`.
    pub fn start(ns: &Host, ip: Ipv4Addr, name: &str, ttl: u32, records: &[SrvRecord]) -> Self {
        let mut d = Dnsmasq {
            ns: ns.clone(),
            ip,
            name: name.to_string(),
            ttl,
            child: None,
        };
        d.set_records(records);
        d
    }

    /// Replaces the records (a restart: dnsmasq cannot reload SRV records).
    pub fn set_records(&mut self, records: &[SrvRecord]) {
        self.stop();
        let mut args: Vec<String> = vec![
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--no-poll".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={}", self.ip),
            "--port=53".into(),
            "--user=root".into(),
            "--pid-file=".into(),
            format!("--local-ttl={}", self.ttl),
            format!("--auth-ttl={}", self.ttl),
        ];
        for r in records {
            args.push(format!(
                "--srv-host={},{},{},{},{}",
                self.name, r.host, r.port, r.priority, r.weight
            ));
            args.push(format!("--host-record={},{}", r.host, r.ip));
        }
        let child = self
            .ns
            .command("/usr/sbin/dnsmasq")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq");
        self.child = Some(child);
        // Up once it answers (dig is not installed everywhere: python asks).
        let probe = format!(
            "import socket,struct\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(0.3)\nq=b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00'+b''.join(bytes([len(l)])+l.encode() for l in {:?}.split('.'))+b'\\x00\\x00\\x21\\x00\\x01'\ns.sendto(q,('{}',53))\ns.recvfrom(512)\n",
            self.name, self.ip
        );
        let up = eventually(Duration::from_secs(10), || {
            self.ns
                .command("python3")
                .args(["-c", &probe])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(up, "dnsmasq does not answer on {}:53", self.ip);
    }

    /// Stops answering (the process ends).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
