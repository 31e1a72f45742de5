//! Replays the committed fuzz corpora through the harnesses in `tether::fuzzing`, on stable
//! and without cargo-fuzz: every file in `fuzz/corpus/<target>/` and `fuzz/seeds/<target>/`
//! must pass its target's invariants, so an input the fuzzer once kept, or a crash that was
//! fixed and added, stays passing. Each corpus folder must be non-empty, and every target in
//! `fuzz/fuzz_targets/` must be listed here.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

type Harness = fn(&[u8]);

/// Every fuzz target and its harness.
const TARGETS: &[(&str, Harness)] = &[
    ("peek", tether::fuzzing::peek),
    ("connection_init", tether::fuzzing::connection_init),
    ("webhook", tether::fuzzing::webhook),
    ("routing", tether::fuzzing::routing),
    ("config", tether::fuzzing::config),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Feeds every corpus and seed file of `target` to `harness`; names each file that fails.
fn replay(target: &str) {
    let (_, harness) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("target listed");
    let corpus = files(&fuzz_dir().join("corpus").join(target));
    assert!(!corpus.is_empty(), "fuzz/corpus/{target}/ is empty");
    let seeds = files(&fuzz_dir().join("seeds").join(target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&seeds) {
        let data = std::fs::read(path).expect("read corpus file");
        if panic::catch_unwind(AssertUnwindSafe(|| harness(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: failing inputs {failed:#?}");
}

#[test]
fn every_target_is_replayed() {
    let dir = fuzz_dir().join("fuzz_targets");
    let found: Vec<String> = files(&dir)
        .iter()
        .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_string))
        .collect();
    assert!(!found.is_empty(), "no targets in {}", dir.display());
    for name in &found {
        assert!(
            TARGETS.iter().any(|(t, _)| t == name),
            "fuzz target {name} has no replay here"
        );
    }
    for (t, _) in TARGETS {
        assert!(found.contains(&t.to_string()), "{t} is not a fuzz target");
    }
}

#[test]
fn peek_corpus() {
    replay("peek");
}

#[test]
fn connection_init_corpus() {
    replay("connection_init");
}

#[test]
fn webhook_corpus() {
    replay("webhook");
}

#[test]
fn routing_corpus() {
    replay("routing");
}

#[test]
fn config_corpus() {
    replay("config");
}
