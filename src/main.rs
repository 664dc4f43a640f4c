//! The `turnstile` binary: serve, run (the sidecar) and demo.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod demo;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use turnstile::app::App;
use turnstile::app::discard::Discard;
use turnstile::app::echo::Echo;
use turnstile::app::http::Http;
use turnstile::app::load::{Load, LoadConfig, LoadReport};
use turnstile::runtime::{self, StackOptions};
use turnstile::xdp::XdpMode;
use turnstile::xsk::{BusyPoll, ZeroCopy};

/// mimalloc, counting the bytes live on the heap for `turnstile_heap_bytes`
/// (a relaxed add per allocation: the engine does not allocate per segment,
/// so this is off the per-packet path).
struct CountingMimalloc;

// SAFETY: every call is forwarded unchanged to mimalloc; the counter only
// observes sizes.
unsafe impl std::alloc::GlobalAlloc for CountingMimalloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        turnstile::metrics::heap_grew(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        turnstile::metrics::heap_grew(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        turnstile::metrics::heap_grew(new);
        turnstile::metrics::heap_shrank(layout.size());
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        turnstile::metrics::heap_shrank(layout.size());
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingMimalloc = CountingMimalloc;

#[derive(Parser)]
#[command(
    name = "turnstile",
    version,
    about = "Kernel-bypass TCP on AF_XDP with safe TIME_WAIT recycling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Memory bounds of connection buffers (`serve`).
#[derive(clap::Args)]
struct BufferArgs {
    /// Receive-buffer autotuning's ceiling per connection, KiB (the window
    /// grows per RTT to about twice what the app consumed, up to this).
    #[arg(long, default_value_t = 6 * 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    recv_buffer_max_kb: u64,
    /// The send buffer follows cwnd up to this, KiB per connection.
    #[arg(long, default_value_t = 4 * 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    send_buffer_max_kb: u64,
    /// All connections' buffers of one shard, MiB: past it windows shrink
    /// (counted in turnstile_buffer_pool_exhausted_total).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    buffer_pool_mb: u64,
}

impl BufferArgs {
    fn apply(&self, opts: &mut StackOptions) {
        opts.tcp.recv_buffer_max = self.recv_buffer_max_kb as usize * 1024;
        opts.tcp.send_buffer_max = self.send_buffer_max_kb as usize * 1024;
        opts.tcp.buffer_pool_budget = (self.buffer_pool_mb as usize) << 20;
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AppKind {
    Echo,
    Http,
    Discard,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a built-in app on chosen TCP ports of an interface.
    Serve {
        /// The interface to attach to; its own IPv4 address is served.
        #[arg(long)]
        iface: String,
        /// TCP ports steered to turnstile (comma-separated).
        #[arg(long, value_delimiter = ',', required = true, value_parser = clap::value_parser!(u16).range(1..))]
        port: Vec<u16>,
        /// The app behind the ports. Without one, every SYN is refused with a RST.
        #[arg(long, value_enum)]
        app: Option<AppKind>,
        /// Receive queues to serve, one shard each (default: every queue).
        #[arg(long)]
        queues: Option<u32>,
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: XdpMode,
        /// Maximum segment lifetime; TIME_WAIT lasts twice this.
        #[arg(long, default_value_t = 30_000)]
        msl_ms: u64,
        /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Clamp the MSS below what the interface MTU allows (MTU - 40).
        #[arg(long, value_parser = clap::value_parser!(u16).range(88..))]
        mss: Option<u16>,
        #[command(flatten)]
        buffers: BufferArgs,
        /// The NIC's RSS key as hex bytes (`ethtool -x` prints it), for
        /// drivers that do not report it; needs --rss-table.
        #[arg(long, requires = "rss_table", value_parser = check_key)]
        rss_key: Option<String>,
        /// The NIC's RSS indirection table: queues, comma-separated,
        /// `Q*COUNT` for runs (e.g. `0*124,1*4`); needs --rss-key.
        #[arg(long, requires = "rss_key", value_parser = check_table)]
        rss_table: Option<String>,
        /// Connections held at once at most (split evenly between the
        /// queues); SYNs beyond are dropped, as a full backlog drops them.
        #[arg(long)]
        max_connections: Option<usize>,
        #[command(flatten)]
        socket: SocketArgs,
        /// Where the ISN/timestamp secret is kept across restarts (0600).
        #[arg(long, default_value = turnstile::state::DEFAULT_STATE_DIR)]
        state_dir: std::path::PathBuf,
        /// During a SYN flood, answer SYNs in the XDP program (XDP_TX) with
        /// the engine's cookies: `on` (default) or `off` (the shards answer
        /// them). On veth, XDP_TX needs GRO or an XDP program on the peer.
        #[arg(long, value_enum, default_value = "on")]
        xdp_syn_cookies: OnOff,
        /// TCP keepalive (RFC 1122 4.2.3.6), off by default:
        /// `IDLE_MS,INTERVAL_MS,COUNT`, e.g. `60000,10000,5`. An idle
        /// connection is probed after IDLE_MS, then every INTERVAL_MS; after
        /// COUNT unanswered probes it is reset.
        #[arg(long, value_parser = parse_keepalive)]
        keepalive: Option<turnstile::tcp::Keepalive>,
        /// Congestion control: `newreno` (default) or `bbr` (a model of the
        /// path's bandwidth and RTT, paced; random loss does not cut it).
        #[arg(long, default_value = "newreno", value_parser = parse_congestion)]
        congestion: turnstile::tcp::Congestion,
    },
    /// Open short HTTP connections to a server through turnstile's own active
    /// opens (a load generator; prints one JSON summary line).
    Load {
        #[arg(long)]
        iface: String,
        /// The server, IP:PORT.
        #[arg(long)]
        target: std::net::SocketAddrV4,
        /// Connections in all.
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
        /// Connections open at once (across all shards).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Local ports for the connections, LO-HI (steered to turnstile).
        #[arg(long, default_value = "61000-65535", value_parser = parse_range)]
        local_ports: std::ops::RangeInclusive<u16>,
        /// Forbid reusing TIME_WAIT tuples (connections fail with no_port instead).
        #[arg(long)]
        no_reuse: bool,
        #[arg(long, default_value_t = 1000)]
        reuse_delay_ms: u64,
        #[arg(long, default_value_t = 30_000)]
        msl_ms: u64,
        /// Body every response must carry (checked byte for byte).
        #[arg(long)]
        expect_body: Option<String>,
        #[arg(long)]
        queues: Option<u32>,
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: XdpMode,
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Stop after this many seconds even if connections remain.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        /// The NIC's RSS key as hex bytes (`ethtool -x` prints it), for
        /// drivers that do not report it; needs --rss-table.
        #[arg(long, requires = "rss_table", value_parser = check_key)]
        rss_key: Option<String>,
        /// The NIC's RSS indirection table: queues, comma-separated,
        /// `Q*COUNT` for runs (e.g. `0*124,1*4`); needs --rss-key.
        #[arg(long, requires = "rss_key", value_parser = check_table)]
        rss_table: Option<String>,
        #[command(flatten)]
        socket: SocketArgs,
        /// Where the ISN/timestamp secret is kept across restarts (0600).
        #[arg(long, default_value = turnstile::state::DEFAULT_STATE_DIR)]
        state_dir: std::path::PathBuf,
    },
    /// Run the load-balancer sidecar from a configuration file.
    Run {
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Print the Maglev tables a configuration gives with every backend up
    /// (the same bytes on every instance of a fleet; a running sidecar shows
    /// its live tables at /maglev on the metrics port).
    MaglevTable {
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Build a namespace/veth topology, show a churn run, clean up.
    Demo,
}

/// How the AF_XDP sockets are bound (`serve` and `load` alike).
#[derive(clap::Args)]
struct SocketArgs {
    /// Zero-copy: `auto` (the kernel's choice), `on` (ask for it; copy
    /// mode with a warning where the driver refuses), `off` (copy mode).
    #[arg(long, value_enum, default_value = "auto")]
    zero_copy: ZeroCopy,
    /// Preferred busy polling: each shard's syscalls run the driver's
    /// poll loop for up to this many microseconds (0: off). Pair it with
    /// the device's napi_defer_hard_irqs and gro_flush_timeout.
    #[arg(long, default_value_t = 0)]
    busy_poll_us: u32,
    /// Packets one busy poll may process.
    #[arg(long, default_value_t = 64)]
    busy_poll_budget: u32,
}

impl SocketArgs {
    fn apply(&self, opts: &mut StackOptions) {
        opts.zero_copy = self.zero_copy;
        // Off at 0 microseconds.
        opts.busy_poll = (self.busy_poll_us > 0).then_some(BusyPoll {
            usecs: self.busy_poll_us,
            budget: self.busy_poll_budget.max(1),
        });
    }
}

/// A switch given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line naming the problem; --help has the rest.
            let text = e.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or("invalid arguments"));
            return ExitCode::from(2);
        }
    };
    let installed = match cli.command {
        Command::Demo => Ok(()), // the demo handles its own signals
        Command::MaglevTable { .. } => Ok(()),
        _ => install_signal_handlers(),
    };
    if let Err(e) = installed {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Serve {
            iface,
            port,
            app,
            queues,
            xdp_mode,
            msl_ms,
            metrics,
            mss,
            buffers,
            rss_key,
            rss_table,
            max_connections,
            socket,
            state_dir,
            xdp_syn_cookies,
            keepalive,
            congestion,
        } => {
            let mut opts = StackOptions::new(&iface, port);
            socket.apply(&mut opts);
            opts.xdp_syn_cookies = xdp_syn_cookies == OnOff::On;
            opts.mss = mss;
            opts.rss = rss_option(rss_key, rss_table);
            opts.max_connections = max_connections;
            opts.state_dir = state_dir;
            opts.queues = queues;
            opts.xdp_mode = xdp_mode;
            opts.metrics = metrics;
            opts.tcp.msl = Duration::from_millis(msl_ms);
            opts.tcp.keepalive = keepalive;
            opts.tcp.congestion = congestion;
            buffers.apply(&mut opts);
            serve(opts, app)
        }
        Command::Load {
            iface,
            target,
            connections,
            concurrency,
            local_ports,
            no_reuse,
            reuse_delay_ms,
            msl_ms,
            expect_body,
            queues,
            xdp_mode,
            metrics,
            timeout_s,
            rss_key,
            rss_table,
            socket,
            state_dir,
        } => {
            // The load generator listens on nothing: only its active-open
            // range is steered.
            let mut opts = StackOptions::new(&iface, Vec::new());
            socket.apply(&mut opts);
            opts.listen = false;
            opts.rss = rss_option(rss_key, rss_table);
            opts.active_ports = local_ports;
            opts.state_dir = state_dir;
            opts.queues = queues;
            opts.xdp_mode = xdp_mode;
            opts.metrics = metrics;
            opts.tcp.msl = Duration::from_millis(msl_ms);
            opts.tcp.reuse = !no_reuse;
            opts.tcp.reuse_delay = Duration::from_millis(reuse_delay_ms);
            let cfg = LoadConfig {
                target,
                total: connections,
                concurrency,
                request: format!(
                    "GET / HTTP/1.1\r\nHost: {target}\r\nUser-Agent: turnstile-load\r\n\r\n"
                )
                .into_bytes(),
                expect_body: expect_body.map(String::into_bytes),
            };
            match load(opts, cfg, Duration::from_secs(timeout_s)) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(3),
                Err(e) => Err(e),
            }
        }
        Command::Run { config } => turnstile::sidecar::run(&config, print_ready),
        Command::MaglevTable { config } => maglev_table(&config),
        Command::Demo => demo::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn maglev_table(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use turnstile::app::proxy::pool::{BackendSet, Routes};
    let config = turnstile::config::Config::load(path)?;
    let routes = Routes::build(&config.proxy_settings(), &BackendSet::default(), None, 1);
    let dump = routes.maglev_dump();
    if dump.is_empty() {
        anyhow::bail!("{}: no listener has balance = \"maglev\"", path.display());
    }
    std::io::stdout()
        .lock()
        .write_all(dump.as_bytes())
        .context("writing the table")?;
    Ok(())
}

// Kept as text for clap (a Vec value would be read as many values) and
// checked at parse time, so the parse below cannot fail.
fn check_key(s: &str) -> Result<String, String> {
    turnstile::rss::parse_key(s).map(|_| s.to_string())
}

fn check_table(s: &str) -> Result<String, String> {
    turnstile::rss::parse_table(s).map(|_| s.to_string())
}

fn rss_option(key: Option<String>, table: Option<String>) -> Option<turnstile::rss::RssConfig> {
    Some(turnstile::rss::RssConfig {
        key: turnstile::rss::parse_key(&key?).ok()?,
        table: turnstile::rss::parse_table(&table?).ok()?,
        source: "--rss-key/--rss-table",
    })
}

fn parse_congestion(s: &str) -> Result<turnstile::tcp::Congestion, String> {
    s.parse()
}

fn parse_keepalive(s: &str) -> Result<turnstile::tcp::Keepalive, String> {
    turnstile::tcp::Keepalive::parse(s)
}

fn parse_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or("expected LO-HI, e.g. 40000-40999")?;
    let lo: u16 = lo.trim().parse().map_err(|_| format!("bad port {lo:?}"))?;
    let hi: u16 = hi.trim().parse().map_err(|_| format!("bad port {hi:?}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{s}: need 1 <= LO <= HI <= 65535"));
    }
    Ok(lo..=hi)
}

/// Set by SIGINT/SIGTERM; the handlers are installed before anything starts,
/// so a signal that comes right after the `listening` line is never lost.
static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

fn install_signal_handlers() -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let _ = STOP.set(stop);
    Ok(())
}

/// Blocks until SIGINT or SIGTERM, or until `done` says so.
fn wait_for_signal(done: impl Fn() -> bool) -> anyhow::Result<bool> {
    let stop = STOP.get().context("signal handlers not installed")?.clone();
    while !stop.load(Ordering::Relaxed) {
        if done() {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(true)
}

fn print_ready(line: &str) {
    use std::io::Write;
    println!("{line}");
    let _ = std::io::stdout().flush();
}

fn serve(opts: StackOptions, app: Option<AppKind>) -> anyhow::Result<()> {
    fn go<A: App + Send + 'static>(
        opts: &StackOptions,
        make: impl Fn() -> A,
    ) -> anyhow::Result<()> {
        let running = runtime::start(opts, |_, _| make())?;
        print_ready(&running.listening_line(&opts.ports));
        wait_for_signal(|| false)?;
        running.drain();
        Ok(())
    }
    match app {
        Some(AppKind::Echo) => go(&opts, Echo::default),
        Some(AppKind::Http) => go(&opts, Http::default),
        Some(AppKind::Discard) => go(&opts, Discard::default),
        None => {
            let opts = StackOptions {
                listen: false,
                ..opts
            };
            go(&opts, Discard::default)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn load(opts: StackOptions, cfg: LoadConfig, timeout: Duration) -> anyhow::Result<bool> {
    let total = cfg.total;
    let conc = cfg.concurrency;
    let started = std::time::Instant::now();
    let running = runtime::start(&opts, |id, shards| {
        let share = |n: u64| n / shards as u64 + u64::from((id as u64) < n % shards as u64);
        Load::new(LoadConfig {
            total: share(total),
            concurrency: (share(conc as u64) as usize).max(1),
            ..cfg.clone()
        })
    })?;
    eprintln!("{}", running.listening_line(&opts.ports));
    let interrupted = wait_for_signal(|| running.finished() || started.elapsed() > timeout)?;
    let registry = running.registry.clone();
    let apps = running.stop();
    let handoff: u64 = registry
        .shards
        .iter()
        .map(|m| m.handoff.load(Ordering::Relaxed))
        .sum();
    let elapsed = started.elapsed().as_secs_f64();
    let mut report = LoadReport::default();
    let mut last_error = None;
    for app in &apps {
        report.merge(&app.report);
        if let Some(e) = app.last_error() {
            last_error = Some(e.to_string());
        }
    }
    let h = &report.latency_us;
    let summary = serde_json::json!({
        "connections": total,
        "ok": report.ok,
        "failed": report.failed(),
        "failures": {
            "no_port": report.failed_no_port,
            "refused": report.failed_refused,
            "timeout": report.failed_timeout,
            "reset": report.failed_reset,
            "bad_response": report.failed_bad_response,
            "other": report.failed_other,
        },
        "elapsed_s": elapsed,
        "rate_per_s": report.ok as f64 / elapsed.max(1e-9),
        "latency_us": { "p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999) },
        "handoff": handoff,
        "interrupted": interrupted,
        "last_error": last_error,
    });
    println!("{summary}");
    Ok(report.failed() == 0 && report.ok == total)
}
