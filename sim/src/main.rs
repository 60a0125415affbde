//! `firetower-sim --seed N` runs one seed and prints its trace hash; `--seeds A..B` runs a
//! range and ends with `N passed, M failed`. A failure prints the seed, the invariant, the
//! simulated step and time, and how to reproduce it. `--keep-going` runs a failing seed to
//! its end and also prints the first violation of every other invariant it broke (for
//! sweeps: a seed that breaks one invariant early would otherwise hide the others).
//!
//! The simulation is only deterministic when tokio is built with `--cfg tokio_unstable`
//! (turmoil then seeds each host's scheduler). Started without it, this binary re-runs
//! itself through cargo with that flag, in its own target directory (`target-sim`).

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: firetower-sim --seed N | --seeds A..B [--check-determinism] [--jobs J] | --regressions  [--keep-going]");
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
    let keep_going = args.iter().any(|a| a == "--keep-going");
    let jobs = args
        .iter()
        .position(|a| a == "--jobs")
        .and_then(|i| args.get(i + 1))
        .and_then(|j| j.parse::<usize>().ok())
        .unwrap_or(2)
        .max(1);
    match args.first().map(String::as_str) {
        Some("--seed") => match args.get(1).and_then(|s| s.parse::<u64>().ok()) {
            Some(seed) => run_one(seed, keep_going),
            None => usage(),
        },
        Some("--regressions") => {
            let mut code = ExitCode::SUCCESS;
            for (seed, what) in firetower_sim::regressions::SEEDS {
                println!("regression seed {seed}: {what}");
                if run_range(*seed, seed + 1, false, 1, keep_going) != ExitCode::SUCCESS {
                    code = ExitCode::FAILURE;
                }
            }
            code
        }
        Some("--seeds") => {
            let Some((a, b)) = args.get(1).and_then(|r| r.split_once("..")) else {
                return usage();
            };
            match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(a), Ok(b)) if a < b => run_range(a, b, check, jobs, keep_going),
                _ => usage(),
            }
        }
        _ => usage(),
    }
}

/// Runs one seed in this process and prints its result line (and the failure report).
fn run_one(seed: u64, keep_going: bool) -> ExitCode {
    let outcome = match firetower_sim::run_seed(seed, keep_going) {
        Ok(o) => o,
        Err(e) => {
            println!("seed {seed}: FAILED to run: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match &outcome.violation {
        None => {
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
            ExitCode::SUCCESS
        }
        Some((v, step)) => {
            println!(
                "seed {seed}: FAILED invariant \"{}\" at step {step}, simulated time {:.3}s trace {:016x}",
                v.invariant,
                v.at.as_secs_f64(),
                outcome.trace_hash
            );
            println!("  {}", v.detail);
            for l in &outcome.later {
                println!(
                    "  also invariant \"{}\" at simulated time {:.3}s: {}",
                    l.invariant,
                    l.at.as_secs_f64(),
                    l.detail
                );
            }
            println!("  faults: {}", outcome.faults.join("; "));
            println!("  REPRODUCE WITH: cargo run -p firetower-sim --release -- --seed {seed}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one seed in a fresh process (tokio numbers tasks process-wide, and the order in
/// which a crashed host's tasks are dropped follows those numbers: a fresh process per seed
/// keeps every seed's run independent of what ran before it).
fn spawn_seed(seed: u64, keep_going: bool) -> std::io::Result<std::process::Child> {
    std::process::Command::new(std::env::current_exe()?)
        .args(["--seed", &seed.to_string()])
        .args(keep_going.then_some("--keep-going"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
}

fn collect(child: std::process::Child) -> (bool, String) {
    match child.wait_with_output() {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ),
        Err(e) => (false, format!("could not run: {e}\n")),
    }
}

fn trace_of(output: &str) -> Option<&str> {
    output
        .split_whitespace()
        .skip_while(|w| *w != "trace")
        .nth(1)
}

fn run_range(from: u64, to: u64, check: bool, jobs: usize, keep_going: bool) -> ExitCode {
    let (mut passed, mut failed) = (0u64, 0u64);
    let seeds: Vec<u64> = (from..to).collect();
    for chunk in seeds.chunks(jobs) {
        let mut children = Vec::new();
        for &seed in chunk {
            let first = spawn_seed(seed, keep_going);
            let second = if check {
                Some(spawn_seed(seed, keep_going))
            } else {
                None
            };
            children.push((seed, first, second));
        }
        for (seed, first, second) in children {
            let (ok, output) = match first {
                Ok(child) => collect(child),
                Err(e) => (false, format!("seed {seed}: could not start: {e}\n")),
            };
            print!("{output}");
            let mut good = ok;
            if let Some(second) = second {
                let (_, again) = match second {
                    Ok(child) => collect(child),
                    Err(e) => (false, format!("could not start: {e}")),
                };
                if trace_of(&output) != trace_of(&again) || trace_of(&output).is_none() {
                    println!(
                        "seed {seed}: NOT DETERMINISTIC: trace {:?} then {:?}",
                        trace_of(&output),
                        trace_of(&again)
                    );
                    good = false;
                }
            }
            if good {
                passed += 1;
            } else {
                failed += 1;
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
