//! `firetower`: the one command-line tool for every role.
//!
//! Thin by design: it parses arguments, builds each service's `Config` and calls the
//! library's `run`. Bad arguments or configuration exit with status 64 (EX_USAGE) and a
//! message naming the bad value.

mod cli;
mod config_file;
mod dashboard;
mod dev;
mod roles;
mod status;

use std::process::ExitCode;

use clap::Parser;

/// Exit status for bad arguments or configuration (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit status when no metastore node could be reached (sysexits EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // Names the cluster's addresses use, for hosts without DNS for them (and tests):
    // `/etc/hosts` format, consulted before the system resolver.
    if let Ok(path) = std::env::var("FIRETOWER_HOSTS_FILE") {
        let hosts = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| firetower_net::resolve::parse_hosts(&text));
        match hosts {
            Ok(hosts) => {
                firetower_net::resolve::set_hosts(hosts);
            }
            Err(e) => {
                eprintln!("error: FIRETOWER_HOSTS_FILE {path}: {e}");
                return ExitCode::from(EX_USAGE);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::execute(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(cli::Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EX_USAGE)
        }
        Err(cli::Failure::Unavailable(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EX_UNAVAILABLE)
        }
        Err(cli::Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
