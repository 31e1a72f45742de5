#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for the given seconds each (default 60), one after another,
# niced and with a single libFuzzer worker, and prints each target's executions and corpus
# size. Installs cargo-fuzz when missing. Not part of scripts/test.sh: CI replays the
# committed corpora instead (tests/fuzz_corpus.rs).
#
#   scripts/fuzz.sh [seconds-per-target]
#
# Environment: TARGETS (space-separated subset), SANITIZER (default none, which runs on
# stable; "address" needs nightly flags, given here through RUSTC_BOOTSTRAP=1), and
# FUZZ_ARGS (extra libFuzzer flags, e.g. "-runs=1000000").
# New inputs land in fuzz/corpus/<target>/; minimise before committing:
#   (cd fuzz && cargo fuzz cmin -s none <target> corpus/<target> seeds/<target>)
# A crash is written to fuzz/artifacts/<target>/ and stops that target's run.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-60}"
sanitizer="${SANITIZER:-none}"
targets="${TARGETS:-peek connection_init webhook routing config}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
if [ "$sanitizer" != none ]; then
  export RUSTC_BOOTSTRAP=1
fi

nice -n 19 cargo fuzz build -s "$sanitizer"

status=0
for t in $targets; do
  mkdir -p "corpus/$t"
  seeds=("seeds/$t")
  # The init harness also reads the frame seeds: any frame may open a connection.
  [ "$t" = connection_init ] && seeds+=("seeds/peek")
  log="target/fuzz-$t.log"
  echo "== $t: ${secs}s"
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  if ! nice -n 19 cargo fuzz run -s "$sanitizer" "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    ${FUZZ_ARGS:-} >"$log" 2>&1; then
    status=1
    echo "   FAILED, see fuzz/$log and fuzz/artifacts/$t/"
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  echo "   executions: ${runs:-?} (${rate:-?}/s), corpus: $(find "corpus/$t" -type f | wc -l) files"
done
exit "$status"
