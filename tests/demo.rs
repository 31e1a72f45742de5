//! `tether demo --quick` through the real binary: it must finish on its own, exit 0, and its
//! summary must report no loss, no resurrection and a replay. Loopback only.

use std::process::Stdio;
use std::time::Duration;

/// The quick demo takes about 10 s; this leaves room for a slow CI machine.
const BOUND: Duration = Duration::from_secs(60);

/// The number right after `key` in `text`, e.g. `replayed: 30`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = text.split_once(key)?.1;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn the_quick_demo_loses_nothing_and_replays_what_it_buffered() {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["demo", "--quick"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tether demo");
    let pid = child.id().expect("pid");
    let out = match tokio::time::timeout(BOUND, child.wait_with_output()).await {
        Ok(out) => out.expect("demo output"),
        Err(_) => {
            // SIGTERM first so the demo kills its own app process on the way out.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            panic!("tether demo --quick did not finish within {BOUND:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out.status.success(), "exit {:?}\n{shown}", out.status);
    assert!(
        !stdout.contains('\x1b'),
        "no colour codes when stdout is not a terminal"
    );

    let cloud = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("cloud:"))
        .unwrap_or_else(|| panic!("no cloud summary line\n{shown}"));
    assert!(cloud.contains("resurrections: 0"), "{cloud}");
    assert!(cloud.contains("app_disconnects: 0"), "{cloud}");
    assert!(stdout.contains("\n  lost: 0 of "), "{shown}");
    assert!(stdout.contains("\n  duplicated: 0 "), "{shown}");
    let replayed =
        number_after(&stdout, "replayed: ").unwrap_or_else(|| panic!("no replayed count\n{shown}"));
    assert!(replayed >= 1, "replayed {replayed}\n{shown}");
    assert!(stdout.contains("result: PASS"), "{shown}");
}
