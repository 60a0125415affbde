//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets' bodies on
//! stable, so every input a fuzzer found worth keeping is checked by `cargo test`: none may
//! panic. The targets and how to run them are in `fuzz/` (docs/security.md).

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::Path;

/// A fuzz target's body.
type Target = fn(&[u8]);

fn replay(target: &str, run: Target) -> anyhow::Result<usize> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.is_file() {
            run(&std::fs::read(&path)?);
            n += 1;
        }
    }
    anyhow::ensure!(n > 0, "no corpus in {}", dir.display());
    Ok(n)
}

#[test]
fn the_fuzz_corpus_replays_without_a_panic() -> anyhow::Result<()> {
    let targets: [(&str, Target); 4] = [
        ("client_frame", targets::client_frame),
        ("relay_frame", targets::relay_frame),
        ("jwt", targets::jwt),
        ("grpc_requests", targets::grpc_requests),
    ];
    for (name, run) in targets {
        let n = replay(name, run)?;
        println!("{name}: {n} inputs");
    }
    Ok(())
}
