#!/usr/bin/env bash
# Runs every check of the project: formatting, lints, and all tests, including the
# deterministic simulator over 1,000 seeds (SIM_SEEDS changes the count).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found; install Rust (https://rustup.rs) and retry" >&2
    exit 2
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
