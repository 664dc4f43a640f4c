//! Contender processes: started through `ip netns exec`, their output
//! collected, killed and reaped on drop; CPU time and peak RSS from /proc
//! (live process trees) or from wait4's rusage (reaped children).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use turnstile::testkit::{Lines, WaitError};

/// What a process used, from rusage or /proc.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub cpu_s: f64,
    pub peak_rss_kb: u64,
}

pub struct Exit {
    pub code: Option<i32>,
    pub usage: Usage,
}

/// A child process that is killed and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub pid: i32,
    child: Child,
    reaped: bool,
    lines: Lines,
    stderr: Arc<Mutex<String>>,
}

const KEEP: usize = 256 * 1024;

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let lines = Lines::spawn(child.stdout.take().expect("piped"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped");
        let keep = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut b = keep.lock().expect("not poisoned");
                if b.len() < KEEP {
                    b.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Ok(Proc {
            name: name.to_string(),
            pid: child.id() as i32,
            child,
            reaped: false,
            lines,
            stderr,
        })
    }

    /// Waits for a stdout line starting with `prefix` (a readiness line).
    pub fn wait_line(
        &mut self,
        prefix: &str,
        timeout: Duration,
        stop: &AtomicBool,
    ) -> anyhow::Result<String> {
        match self.lines.wait_line(prefix, timeout, stop) {
            Ok(line) => Ok(line),
            Err(WaitError::Exited(_)) => {
                // Its stdout closed: it exited. Give stderr a moment.
                std::thread::sleep(Duration::from_millis(100));
                anyhow::bail!(
                    "{} exited before it was ready: {}",
                    self.name,
                    self.stderr_tail()
                )
            }
            Err(e) => anyhow::bail!("{} not ready: {e}: {}", self.name, self.stderr_tail()),
        }
    }

    pub fn stdout(&self) -> String {
        self.lines.text()
    }

    pub fn stderr_tail(&self) -> String {
        let s = self.stderr.lock().expect("not poisoned");
        let t = s.trim();
        let start = t.len().saturating_sub(600);
        let start = (start..t.len())
            .find(|&i| t.is_char_boundary(i))
            .unwrap_or(t.len());
        t[start..].replace('\n', " | ")
    }

    fn wait4(&mut self, flags: i32) -> Option<Exit> {
        if self.reaped {
            return None;
        }
        let mut status = 0;
        // SAFETY: rusage is plain data, zeroed is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child with live out-pointers.
        let rc = unsafe { libc::wait4(self.pid, &mut status, flags, &mut ru) };
        if rc != self.pid {
            if rc < 0 {
                self.reaped = true; // not ours any more (ECHILD)
            }
            return None;
        }
        self.reaped = true;
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        Some(Exit {
            code,
            usage: Usage {
                cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
                peak_rss_kb: ru.ru_maxrss as u64,
            },
        })
    }

    /// Waits for the exit until `deadline` or `stop`; None if still running.
    pub fn wait_until(
        &mut self,
        deadline: Instant,
        stop: &AtomicBool,
        mut tick: impl FnMut(),
    ) -> Option<Exit> {
        loop {
            if let Some(e) = self.wait4(libc::WNOHANG) {
                return Some(e);
            }
            if self.reaped || Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                return None;
            }
            tick();
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps it.
    pub fn terminate(&mut self, grace: Duration) -> Option<Exit> {
        if self.reaped {
            return None;
        }
        // SAFETY: kill(2) on our unreaped child.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(e) = self.wait4(libc::WNOHANG) {
                return Some(e);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        self.wait4(0)
    }

    /// Sends a signal (e.g. SIGINT to end a load generator).
    pub fn signal(&self, sig: i32) {
        if !self.reaped {
            // SAFETY: kill(2) on our unreaped child.
            unsafe { libc::kill(self.pid, sig) };
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.id();
            // SAFETY: kill(2) on our unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = self.wait4(0);
        }
    }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (ppid, utime+stime ticks) from the text of /proc/PID/stat.
pub fn parse_stat(text: &str) -> Option<(i32, u64)> {
    // The command name may hold spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// VmHWM in kB from the text of /proc/PID/status.
pub fn parse_vmhwm(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `pid` and every descendant of it.
pub fn tree(pid: i32) -> Vec<i32> {
    let mut parent = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                parent.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// CPU seconds so far and peak RSS (sum of VmHWM) of a live process tree.
pub fn tree_usage(pid: i32) -> Usage {
    let mut ticks = 0;
    let mut rss = 0;
    for p in tree(pid) {
        if let Some((_, t)) = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            ticks += t;
        }
        rss += std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|t| parse_vmhwm(&t))
            .unwrap_or(0);
    }
    Usage {
        cpu_s: ticks as f64 / clk_tck(),
        peak_rss_kb: rss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name() {
        let t =
            "1234 (my (odd) name) S 99 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 1 1";
        assert_eq!(parse_stat(t), Some((99, 300)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn vmhwm_from_status() {
        let t = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    4321 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vmhwm(t), Some(4321));
        assert_eq!(parse_vmhwm("Name: x\n"), None);
    }

    #[test]
    fn own_tree_is_measured() {
        let u = tree_usage(std::process::id() as i32);
        assert!(u.peak_rss_kb > 0);
        assert!(tree(std::process::id() as i32).contains(&(std::process::id() as i32)));
    }
}
