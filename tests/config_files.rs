//! Every file under tests/fixtures/config/valid (and the shipped config/tether.yaml) loads;
//! every file under invalid/ is refused by `tether check-config` with exit code 64 and a
//! message naming the problem.

use std::path::{Path, PathBuf};

fn files(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixture folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    out.sort();
    assert!(
        !out.is_empty(),
        "{} holds no .yaml file: this test would check nothing",
        root.display()
    );
    out
}

fn check(path: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("check-config")
        .arg(path)
        .env_clear()
        .output()
        .expect("run tether")
}

#[test]
fn valid_files_load() {
    let mut all = files("valid");
    all.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tether.yaml"));
    for f in all {
        let out = check(&f);
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn invalid_files_are_refused_with_a_reason() {
    for f in files("invalid") {
        let out = check(&f);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{}: {err}", f.display());
        assert!(err.starts_with("error: "), "{}: {err}", f.display());
        let name = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let expected = match name {
            "unknown-key" => "line 2 column 3",
            "hold-too-long" => "session.hold_window_ms",
            "http-cloud-url" => "cloud.ws_url",
            "required-but-disabled" => "registration.required",
            "broken-yaml" => "line 2",
            "admin-token-in-file" => "TETHER_ADMIN_TOKEN",
            "zero-connection-cap" => "http.max_connections_local",
            other => panic!("no expectation for fixture {other}"),
        };
        assert!(err.contains(expected), "{}: {err}", f.display());
    }
}
