#!/usr/bin/env bash
# Run the cargo-fuzz targets in fuzz/ for N seconds each (default 60), then copy
# every input that made one fail into tests/fuzz_regressions/<target>/, where
# `cargo test` replays them (tests/fuzz_regressions.rs).
#
# To refresh the kept corpus after a long run: cargo +nightly fuzz cmin TARGET
# fuzz/corpus/TARGET, then copy fuzz/corpus/TARGET/* into tests/fuzz_regressions/TARGET/.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   targets: request_head response_head chunked proxy_header
#
# Needs a nightly toolchain (rustup toolchain install nightly) and cargo-fuzz
# (installed here with `cargo install cargo-fuzz --locked` if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request_head response_head chunked proxy_header)
case "$seconds" in ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, not '$seconds'" >&2; exit 2 ;; esac
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz.sh: cargo fuzz needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
failed=0
for t in "${targets[@]}"; do
  if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
    echo "fuzz.sh: no target '$t' (see fuzz/fuzz_targets)" >&2
    exit 2
  fi
  mkdir -p "fuzz/corpus/$t" "tests/fuzz_regressions/$t"
  echo "== $t: ${seconds}s"
  # Seeds: the regression inputs, so every run starts from what once failed.
  if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "tests/fuzz_regressions/$t" -- \
      -max_total_time="$seconds" -max_len=4096 -print_final_stats=1; then
    failed=1
  fi
  for crash in fuzz/artifacts/"$t"/*; do
    [ -f "$crash" ] || continue
    cp "$crash" "tests/fuzz_regressions/$t/"
    echo "fuzz.sh: $t failed on $crash; kept as tests/fuzz_regressions/$t/$(basename "$crash")"
    failed=1
  done
done
exit "$failed"
