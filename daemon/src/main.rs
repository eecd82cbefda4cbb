//! The `qetcd` binary: parse etcd's configuration, run a member, map errors to exit codes.

use std::process::ExitCode;

use qetcd::config::{Config, Parsed};

/// mimalloc rather than glibc's malloc: a member allocates per request and per Raft
/// message on several threads, and glibc's allocator took ~9% of a loaded member's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let (config, warnings) = match Config::parse(std::env::args_os(), &env) {
        Ok(Parsed::Run { config, warnings }) => (config, warnings),
        Ok(Parsed::Version) => {
            println!("qetcd Version: {}", env!("CARGO_PKG_VERSION"));
            println!("etcd API Version: {}", qetcd::api::ETCD_VERSION);
            println!(
                "Go OS/Arch: {}/{}",
                std::env::consts::OS,
                std::env::consts::ARCH
            );
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Help(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("qetcd: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    if let Err(e) = qetcd::logging::init(config.log_level, config.log_format, &config.log_outputs) {
        eprintln!("qetcd: {e}");
        return ExitCode::FAILURE;
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = config.validate() {
        tracing::error!("{e}");
        return ExitCode::from(e.exit_code() as u8);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(qetcd::server::run(*config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
