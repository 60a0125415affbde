//! `firetower-sim --seed N` runs one seed and prints its trace hash; `--seeds A..B` runs a
//! range and ends with `N passed, M failed`. A failure prints the seed, the invariant, the
//! simulated step and time, and how to reproduce it.
//!
//! The simulation is only deterministic when tokio is built with `--cfg tokio_unstable`
//! (turmoil then seeds each host's scheduler). Started without it, this binary re-runs
//! itself through cargo with that flag, in its own target directory (`target-sim`).

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: firetower-sim --seed N | --seeds A..B [--check-determinism]");
    ExitCode::from(64)
}

fn reexec_with_tokio_unstable() -> ExitCode {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
    flags.push_str(" --cfg tokio_unstable");
    let status = std::process::Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "firetower-sim",
            "--target-dir",
            "target-sim",
            "--",
        ])
        .args(std::env::args().skip(1))
        .env("RUSTFLAGS", flags.trim())
        .status();
    match status {
        Ok(s) => ExitCode::from(s.code().unwrap_or(1) as u8),
        Err(e) => {
            eprintln!(
                "error: cannot run cargo to build the simulator with --cfg tokio_unstable: {e}"
            );
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    if !cfg!(tokio_unstable) {
        return reexec_with_tokio_unstable();
    }
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check-determinism");
    let (from, to) = match args.first().map(String::as_str) {
        Some("--seed") => match args.get(1).and_then(|s| s.parse::<u64>().ok()) {
            Some(n) => (n, n + 1),
            None => return usage(),
        },
        Some("--seeds") => {
            let Some((a, b)) = args.get(1).and_then(|r| r.split_once("..")) else {
                return usage();
            };
            match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(a), Ok(b)) if a < b => (a, b),
                _ => return usage(),
            }
        }
        _ => return usage(),
    };
    let (mut passed, mut failed) = (0u64, 0u64);
    for seed in from..to {
        let outcome = match firetower_sim::run_seed(seed) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("seed {seed}: could not run: {e:#}");
                failed += 1;
                continue;
            }
        };
        if check {
            match firetower_sim::run_seed(seed) {
                Ok(again) if again.trace_hash == outcome.trace_hash => {}
                Ok(again) => {
                    println!(
                        "seed {seed}: NOT DETERMINISTIC: trace hash {:016x} then {:016x}",
                        outcome.trace_hash, again.trace_hash
                    );
                    failed += 1;
                    continue;
                }
                Err(e) => {
                    eprintln!("seed {seed}: second run failed: {e:#}");
                    failed += 1;
                    continue;
                }
            }
        }
        match &outcome.violation {
            None => {
                passed += 1;
                println!(
                    "seed {seed}: ok trace {:016x} ({} distributors, {} edges, {} publishes, {} deliveries, {} events, {} steps, {:.1}s simulated)",
                    outcome.trace_hash,
                    outcome.distributors,
                    outcome.edges,
                    outcome.publishes,
                    outcome.deliveries,
                    outcome.events,
                    outcome.steps,
                    outcome.sim_time.as_secs_f64()
                );
            }
            Some((v, step)) => {
                failed += 1;
                println!(
                    "seed {seed}: FAILED invariant \"{}\" at step {step}, simulated time {:.3}s",
                    v.invariant,
                    v.at.as_secs_f64()
                );
                println!("  {}", v.detail);
                println!("  faults: {}", outcome.faults.join("; "));
                println!("  trace {:016x}", outcome.trace_hash);
                println!("  REPRODUCE WITH: cargo run -p firetower-sim --release -- --seed {seed}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
