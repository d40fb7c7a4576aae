//! `warrenmq` / `warrenmq serve`: start the broker. `warrenmq ctl …`: administer a running
//! one through its management API.

use clap::{Parser, Subcommand};
use warrenmq::config::{Config, ServeArgs};

#[derive(Parser)]
#[command(name = "warrenmq", version, about = "AMQP 0-9-1 message broker")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Start the broker (the default).
    Serve(Box<ServeArgs>),
    /// Administer a running broker through its management HTTP API.
    Ctl(warrenmq::ctl::CtlArgs),
    /// Verify every file of a data dir offline (segments, ack files, definitions); exits
    /// 1 when anything is damaged.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The data dir to verify (a copy of sled is opened, nothing is changed).
    #[arg(long, env = "WARRENMQ_DATA_DIR")]
    data_dir: std::path::PathBuf,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(a)) => *a,
        Some(Command::Ctl(a)) => return ctl(a),
        Some(Command::Check(a)) => return check(&a.data_dir),
        None => cli.serve,
    };
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warrenmq: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // openraft reports every election and membership step of every quorum queue's group
    // at info: its own warnings and errors are what an operator needs, unless the filter
    // asks for openraft explicitly.
    let directives = if config.log_level.contains("openraft") {
        config.log_level.clone()
    } else {
        format!("{},openraft=warn", config.log_level)
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    // Escapes only for a terminal: a pipe or a file (systemd, docker logs) gets plain text.
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        warrenmq::config::LogFormat::Json => fmt.json().init(),
        warrenmq::config::LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warrenmq: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let handle = match warrenmq::server::start(config).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("{e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down");
        handle.shutdown().await;
        std::process::ExitCode::SUCCESS
    })
}

fn check(data_dir: &std::path::Path) -> std::process::ExitCode {
    match warrenmq::store::check::run(data_dir) {
        Ok(report) => {
            for line in &report.lines {
                println!("{line}");
            }
            if report.ok() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("warrenmq check: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn ctl(args: warrenmq::ctl::CtlArgs) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warrenmq: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(warrenmq::ctl::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warrenmq ctl: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
