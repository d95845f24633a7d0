#!/usr/bin/env bash
# The session fuzzer's long mode (tests/session_fuzz.rs): new seeds, one run after
# another, for SECONDS (default 600), against a debug build of corelb (so its
# isolation invariants are checked after every step). Loopback only. A failing
# run prints its seed: replay it with CORELB_FUZZ_SEED=N and add it to
# tests/session_fuzz_seeds.txt.
#
# Usage: scripts/session-fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
CORELB_FUZZ_SECONDS="${1:-600}" exec cargo test --test session_fuzz -- --nocapture
