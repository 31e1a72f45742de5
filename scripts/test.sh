#!/usr/bin/env bash
# The whole test suite, as CI runs it: the real-SDK example's packages, formatting, lints,
# every Rust test (unit, loopback integration, real SDK), and the offline deploy checks.
set -euo pipefail
cd "$(dirname "$0")/.."

(cd examples/sdk-app && npm ci --no-audit --no-fund --loglevel=error)
cargo fmt --all --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
bash scripts/check-deploy.sh
