//! The `turnstile` binary: serve, run (the sidecar) and demo.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use turnstile::runtime::{self, ServeOptions};
use turnstile::xdp::XdpMode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    },
    /// Run the load-balancer sidecar from a configuration file.
    Run {
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Build a namespace/veth topology, show a churn run, clean up.
    Demo,
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
    let result = match cli.command {
        Command::Serve {
            iface,
            port,
            app,
            queues,
            xdp_mode,
            msl_ms,
            metrics,
        } => serve(
            ServeOptions {
                iface,
                ports: port,
                queues,
                xdp_mode,
                metrics,
            },
            app,
            msl_ms,
        ),
        Command::Run { config } => Err(anyhow::anyhow!(
            "turnstile run --config {}: the sidecar is not built yet (issue #6)",
            config.display()
        )),
        Command::Demo => Err(anyhow::anyhow!("turnstile demo: not built yet")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(opts: ServeOptions, app: Option<AppKind>, _msl_ms: u64) -> anyhow::Result<()> {
    if let Some(app) = app {
        anyhow::bail!(
            "--app {app:?}: the apps are not built yet; omit --app to refuse every connection"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let running = runtime::start(&opts)?;
    println!("{}", running.listening_line(&opts.ports));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    running.stop();
    Ok(())
}
