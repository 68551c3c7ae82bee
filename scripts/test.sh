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

# The metrics test checks a scrape with promtool, from Debian's prometheus package (about
# 20 MB to download). Install it when possible; without it that check is skipped and says
# so.
if ! command -v promtool >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing promtool (Debian package prometheus)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends prometheus; } >/dev/null 2>&1; then
        echo "test.sh: installing prometheus failed; the promtool check will be skipped" >&2
    fi
fi

# The etcd target's test runs a 3-member etcd on loopback (Debian package etcd-server);
# without etcd that test is skipped and prints why.
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    scripts/peer-etcd.sh install >/dev/null 2>&1 ||
        echo "test.sh: installing etcd failed; the etcd target test will be skipped" >&2
fi

# A one-off build gains nothing from incremental compilation, whose caches would add
# gigabytes to the target directory.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# The build and the tests' data files took 1.9 GiB on a fresh clone. Warn up front when
# the disk is short, since a full disk shows up later as storage errors in unrelated tests.
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir"
free_kib=$(df -Pk "$target_dir" | awk 'NR == 2 { print $4 }')
if [[ -n $free_kib ]] && ((free_kib < 3 * 1024 * 1024)); then
    echo "test.sh: warning: only $((free_kib / 1024)) MiB free under $target_dir;" \
        "the build and the tests need about 3 GiB" >&2
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# cargo prints one "test result" line per test binary; the total goes on the last line.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;/) passed += $(i - 1); if ($i ~ /^failed;/) failed += $(i - 1) } }
     END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
