//! The `holdfast` binary: CLI (clap), logging setup, signals and exit codes
//! (0 clean shutdown, 2 bad config or usage, 1 runtime failure).

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use holdfast::config;
use holdfast::workers::Workers;

#[derive(Parser)]
#[command(
    version,
    about = "WebSocket-aware reverse proxy that holds clients across upstream restarts"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "HOLDFAST_CONFIG",
        default_value = "proxy.toml"
    )]
    config: PathBuf,
    /// Log level [default: info; warn for `demo`] (HOLDFAST_LOG, tracing filter directives,
    /// overrides it).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    /// Worker threads serving connections, each with its own runtime [default: one per
    /// CPU available to the process].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// How workers do socket I/O on plain TCP connections: `epoll`, or `io-uring` (where
    /// the kernel allows it; else epoll, with a warning). TLS connections always use epoll.
    #[arg(long, value_enum, default_value_t = Io::Epoll)]
    io: Io,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Io {
    IoUring,
    Epoll,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print every effective key with its origin.
    Check,
    /// Self-contained demo: an echo upstream that restarts itself, holdfast in front of it,
    /// and a scripted client. Needs nothing else.
    Demo {
        /// Keep the demo upstream and proxy running for you to try with any WebSocket client.
        #[arg(long)]
        serve: bool,
        /// Where the proxy listens with --serve.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = std::env::var("HOLDFAST_LOG").unwrap_or_else(|_| level.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// jemalloc instead of glibc's malloc: it keeps each size of allocation in pages of its
/// own, so the buffers a handshake frees leave no holes between the sessions' long-lived
/// blocks, and it gives freed pages back by itself (`.cargo/config.toml`). Idle RSS per
/// session fell from 7.0 to 4.1 KiB with it (docs/PERFORMANCE.md).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Demo { serve, listen }) = cli.command {
        init_logging(cli.log_level.as_deref().unwrap_or("warn"), cli.log_format);
        return demo(serve, listen);
    }
    init_logging(cli.log_level.as_deref().unwrap_or("info"), cli.log_format);
    let loaded = match config::load_file(&cli.config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("holdfast: {}: {e}", cli.config.display());
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Check) => {
            println!("# {}: valid", cli.config.display());
            let width = loaded
                .effective
                .iter()
                .map(|e| e.key.len() + e.value.len() + 3)
                .max()
                .unwrap_or(0);
            for entry in &loaded.effective {
                let line = format!("{} = {}", entry.key, entry.value);
                println!("{line:width$}  # {}", entry.origin);
            }
            println!("# routes, in the order requests are matched (the first match wins):");
            for (i, route) in loaded.config.routes.iter().enumerate() {
                println!("#   {}. {}", i + 1, config::describe_route(route));
            }
            if loaded.config.routes.is_empty() {
                println!("#   (none: every request is answered 404)");
            }
            for warning in &loaded.config.warnings {
                println!("# warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Some(Command::Demo { .. }) => unreachable!("handled above"),
        None => run(
            loaded.config,
            cli.config,
            cli.workers.map(usize::from),
            cli.io == Io::IoUring,
        ),
    }
}

fn demo(serve: bool, listen: std::net::SocketAddr) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("holdfast: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(holdfast::demo::run(serve, listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("holdfast demo: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(config: config::Config, path: PathBuf, workers: Option<usize>, io_uring: bool) -> ExitCode {
    // Each session holds two sockets: use every file descriptor the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    // The accept loop, admin endpoint, signals and upkeep run on this thread; connections
    // are served on one worker runtime per core.
    let count = workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| Ok((rt, Arc::new(Workers::start(count, io_uring)?))));
    let (runtime, workers) = match runtime {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("holdfast: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async {
        let app = match holdfast::App::build(config).await {
            Ok(app) => app.with_workers(workers.clone()),
            Err(e) => {
                eprintln!("holdfast: {e}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(
            address = %app.proxy_addr(),
            workers = workers.len(),
            io_uring_workers = workers.on_io_uring(),
            admin = %app.admin_addr().map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            config = %path.display(),
            "holdfast listening"
        );
        tokio::spawn(reload_on_sighup(app.handle(), path));
        let left = app.run(shutdown_signal()).await;
        tracing::info!(sessions_left = left, "holdfast stopped");
        ExitCode::SUCCESS
    });
    workers.stop();
    code
}

/// SIGHUP: re-read the config file; an invalid file keeps the running configuration.
async fn reload_on_sighup(handle: holdfast::app::AppHandle, path: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install a SIGHUP handler; reloads are off");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration");
        // Errors are logged and counted by reload_file.
        let _ = handle.reload_file(&path);
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
