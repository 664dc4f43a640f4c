//! Packet captures kept as test artifacts: a test starts tcpdump on both veth
//! ends, and the pcap files stay under `target/test-artifacts/` when the test
//! fails (they are deleted when it passes), so a flake that shows up once in
//! ten runs under contention leaves the evidence behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use turnstile::topology::Host;

/// Where failing tests leave their captures: `target/test-artifacts/`
/// (`CARGO_TARGET_DIR` respected), created on demand.
pub fn artifact_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// tcpdump on each given host's veth end, writing `NAME-<netns>.pcap`.
/// Dropped without [`Capture::keep`]: the files are removed.
pub struct Capture {
    procs: Vec<Child>,
    files: Vec<PathBuf>,
    keep: bool,
}

impl Capture {
    /// Starts one tcpdump per host (headers only, `filter` as tcpdump's
    /// expression) and waits, bounded, until each has opened its file.
    pub fn start(name: &str, hosts: &[&Host], filter: &str) -> Capture {
        Self::start_with(name, hosts, filter, false)
    }

    /// Like [`Capture::start`], with `--immediate-mode`: each packet reaches
    /// the file as it is captured, not when tcpdump's buffer block fills, so
    /// a capture stopped right after an event holds it.
    pub fn start_immediate(name: &str, hosts: &[&Host], filter: &str) -> Capture {
        Self::start_with(name, hosts, filter, true)
    }

    fn start_with(name: &str, hosts: &[&Host], filter: &str, immediate: bool) -> Capture {
        let dir = artifact_dir();
        let mut cap = Capture {
            procs: Vec::new(),
            files: Vec::new(),
            keep: false,
        };
        for h in hosts {
            let file = dir.join(format!("{name}-{}.pcap", h.netns));
            let _ = std::fs::remove_file(&file);
            let mut cmd = h.command("tcpdump");
            if immediate {
                cmd.arg("--immediate-mode");
            }
            let child = cmd
                .args(["-i", &h.dev, "-n", "-s", "128", "-U", "-B", "16384", "-w"])
                .arg(&file)
                .arg(filter)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            match child {
                Ok(c) => {
                    cap.procs.push(c);
                    cap.files.push(file);
                }
                Err(e) => eprintln!("capture: tcpdump did not start ({e}); no artifact"),
            }
        }
        // tcpdump opens the file once the socket is bound: wait for that so
        // the first packets of the test are in it.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) && !cap.files.iter().all(|f| f.exists()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        cap
    }

    /// Stops the captures (SIGINT flushes them) and keeps the files; returns
    /// their paths for the failure message.
    pub fn keep(&mut self) -> Vec<PathBuf> {
        self.stop();
        self.keep = true;
        self.files.clone()
    }

    /// The files, for reading while the capture is stopped.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Stops tcpdump, waiting bounded for it to flush.
    pub fn stop(&mut self) {
        for c in &mut self.procs {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        }
        let start = Instant::now();
        for c in &mut self.procs {
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.procs.clear();
    }

    /// The capture's segments with RST set, as tcpdump prints them, with the
    /// `context` segments of the same flow before each (at most `limit` RSTs).
    pub fn resets_with_context(&self, context: usize, limit: usize) -> String {
        let mut out = String::new();
        for f in &self.files {
            let text = Command::new("tcpdump")
                .args(["-n", "-tt", "-S", "-r"])
                .arg(f)
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("== {}\n", f.display());
            let mut shown = 0;
            for (i, l) in lines.iter().enumerate() {
                if shown == limit {
                    break;
                }
                if !l.contains("Flags [R") {
                    continue;
                }
                shown += 1;
                let ports = flow_key(l);
                let before: Vec<&&str> = lines[..i]
                    .iter()
                    .rev()
                    .filter(|p| ports.is_some() && flow_key(p) == ports)
                    .take(context)
                    .collect();
                for p in before.iter().rev() {
                    out += &format!("   {p}\n");
                }
                out += &format!(">> {l}\n");
            }
        }
        out
    }
}

/// The unordered pair of endpoints of a tcpdump line, to find a flow's
/// earlier segments.
fn flow_key(line: &str) -> Option<(String, String)> {
    let mut it = line.split_whitespace();
    let a = it.find(|w| w.contains('.') && w.matches('.').count() == 4)?;
    let _gt = it.next()?;
    let b = it.next()?.trim_end_matches(':');
    let (a, b) = (a.to_string(), b.to_string());
    Some(if a < b { (a, b) } else { (b, a) })
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
        // A failing test keeps its evidence even when it panics before
        // calling `keep`.
        if !self.keep && !std::thread::panicking() {
            for f in &self.files {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

/// One captured TCP segment, from tcpdump's text (`-n -S`: absolute
/// sequence numbers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seg {
    /// `ip.port` of the sender and the receiver.
    pub src: String,
    pub dst: String,
    /// tcpdump's flag letters: `S`, `F`, `R`, `P`, `.` (ACK).
    pub flags: String,
    pub seq: Option<u32>,
    pub ack: Option<u32>,
    /// The line as tcpdump printed it.
    pub line: String,
}

impl Seg {
    pub fn has(&self, flag: char) -> bool {
        self.flags.contains(flag)
    }
}

/// Parses one line of `tcpdump -n -S -tt` (None for anything else).
pub fn parse_seg(line: &str) -> Option<Seg> {
    let (_, rest) = line.split_once(" IP ")?;
    let mut w = rest.split_whitespace();
    let src = w.next()?.to_string();
    let _gt = w.next()?;
    let dst = w.next()?.trim_end_matches(':').to_string();
    let flags = rest.split_once("Flags [")?.1.split_once(']')?.0.to_string();
    let num = |key: &str| -> Option<u32> {
        let tail = rest.split_once(key)?.1;
        let v = tail.split([',', ':', ' ']).next()?;
        v.parse().ok()
    };
    Some(Seg {
        src,
        dst,
        flags,
        seq: num(", seq "),
        ack: num(", ack "),
        line: line.to_string(),
    })
}

/// Every segment of a pcap file, in capture order.
pub fn read_segments(file: &Path) -> Vec<Seg> {
    let text = Command::new("tcpdump")
        .args(["-n", "-tt", "-S", "-r"])
        .arg(file)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines().filter_map(parse_seg).collect()
}
