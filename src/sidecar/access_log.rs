//! The access log's writer: a thread that drains every shard's ring (see
//! `app::proxy::access`) every few milliseconds and writes one JSON line
//! per finished session to a file (appended) or stderr. Shards never wait
//! for it: when it falls behind, their rings fill and records are dropped
//! and counted (`turnstile_access_log_lines_total{result="dropped"}`).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::app::proxy::access::AccessLog;
use crate::config::AccessLog as Target;

/// Records per shard ring (64 bytes each: 1 MiB per shard).
pub const RING: usize = 16 * 1024;
/// How often the rings are drained.
const EVERY: Duration = Duration::from_millis(10);

/// Starts the writer; it drains one last time after `stop`.
pub fn start(
    target: &Target,
    log: Arc<AccessLog>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut out: Box<dyn Write + Send> = match target {
        Target::Stderr => Box::new(std::io::stderr()),
        Target::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("access_log = {:?}: cannot open it", path.display()))?,
        ),
    };
    let thread = std::thread::Builder::new()
        .name("turnstile-access-log".into())
        .spawn(move || {
            let mut buf = std::io::BufWriter::with_capacity(256 * 1024, &mut out);
            let mut failed = false;
            loop {
                let last = stop.load(Ordering::Relaxed);
                log.drain(|r| {
                    let _ = writeln!(buf, "{}", r.json());
                });
                if let Err(e) = buf.flush()
                    && !failed
                {
                    failed = true;
                    tracing::error!(%e, "access log write failed (lines are lost until it works)");
                }
                if last {
                    break;
                }
                std::thread::sleep(EVERY);
            }
        })?;
    Ok(thread)
}
