#!/usr/bin/env bash
# Checks the argument handling of scripts/profile.sh and scripts/compare-profiles.sh, and
# the self-time table of compare-profiles.sh on two small made-up profiles. It records no
# profile and needs no perf. The comparison check runs only where inferno is installed.
set -uo pipefail

scripts=$(cd "$(dirname "$0")" && pwd)
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
PATH=$cargo_bin:$PATH
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SHARDRAFT_PROFILES_DIR=$work/profiles
mkdir -p "$SHARDRAFT_PROFILES_DIR"

passed=0
failed=0

# Runs a script with arguments and stores its exit status, stdout and stderr.
run() {
    "$@" >"$work/stdout" 2>"$work/stderr"
    status=$?
}

check() {
    local description=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $description (exit status $status)" >&2
        sed 's/^/  stderr: /' "$work/stderr" >&2
    fi
}

stderr_contains() { grep -qF -- "$1" "$work/stderr"; }
stdout_contains() { grep -qF -- "$1" "$work/stdout"; }

# profile.sh
run "$scripts/profile.sh"
check "profile.sh without arguments exits 2" test "$status" -eq 2
check "profile.sh without arguments prints usage" stderr_contains "usage: scripts/profile.sh"

run "$scripts/profile.sh" --help
check "profile.sh --help exits 0" test "$status" -eq 0
check "profile.sh --help prints usage on stdout" stdout_contains "usage: scripts/profile.sh"

run "$scripts/profile.sh" baseline
check "profile.sh without -- exits 2" test "$status" -eq 2
check "profile.sh without -- names the missing --" stderr_contains "missing '--'"

run "$scripts/profile.sh" ../escape -- node
check "profile.sh with a path as NAME exits 2" test "$status" -eq 2
check "profile.sh names the invalid NAME" stderr_contains "invalid NAME '../escape'"

run "$scripts/profile.sh" --call-graph lbr baseline -- node
check "profile.sh with an unknown call graph exits 2" test "$status" -eq 2
check "profile.sh names the invalid call graph" stderr_contains "invalid --call-graph 'lbr'"

run "$scripts/profile.sh" --freq 0 baseline -- node
check "profile.sh with --freq 0 exits 2" test "$status" -eq 2

run "$scripts/profile.sh" --frequency 99 baseline -- node
check "profile.sh with an unknown option exits 2" test "$status" -eq 2
check "profile.sh names the unknown option" stderr_contains "unknown option --frequency"

run "$scripts/profile.sh" baseline -- node --json out.json
check "profile.sh with --json in the bench arguments exits 2" test "$status" -eq 2
check "profile.sh explains that it adds --json" stderr_contains "remove --json"

mkdir -p "$SHARDRAFT_PROFILES_DIR/taken"
echo "main;work 1" >"$SHARDRAFT_PROFILES_DIR/taken/stacks.folded"
run "$scripts/profile.sh" taken -- node
check "profile.sh over an existing profile exits 1" test "$status" -eq 1
check "profile.sh over an existing profile suggests --force" stderr_contains "--force"

# compare-profiles.sh
run "$scripts/compare-profiles.sh"
check "compare-profiles.sh without arguments exits 2" test "$status" -eq 2
check "compare-profiles.sh without arguments prints usage" stderr_contains "usage: scripts/compare-profiles.sh"

run "$scripts/compare-profiles.sh" taken
check "compare-profiles.sh with one profile exits 2" test "$status" -eq 2

run "$scripts/compare-profiles.sh" -o
check "compare-profiles.sh with -o and no file exits 2" test "$status" -eq 2

run "$scripts/compare-profiles.sh" taken missing
check "compare-profiles.sh with a missing profile exits 1" test "$status" -eq 1
check "compare-profiles.sh names the missing file" \
    stderr_contains "$SHARDRAFT_PROFILES_DIR/missing/stacks.folded"

run "$scripts/compare-profiles.sh" missing taken
check "compare-profiles.sh names a missing first profile" \
    stderr_contains "$SHARDRAFT_PROFILES_DIR/missing/stacks.folded"

if command -v inferno-diff-folded >/dev/null 2>&1 && command -v inferno-flamegraph >/dev/null 2>&1; then
    # In "before", f has 30 % of the self time and g 70 %. In "after", f has 60 % and g 40 %
    # with ten times the samples, which the shares must not depend on. The frame name with
    # spaces checks that the count is split from the last field only.
    mkdir -p "$SHARDRAFT_PROFILES_DIR/before" "$SHARDRAFT_PROFILES_DIR/after"
    printf '%s\n' "main;<a as b>::f 30" "main;g 70" >"$SHARDRAFT_PROFILES_DIR/before/stacks.folded"
    printf '%s\n' "main;<a as b>::f 600" "main;g 400" >"$SHARDRAFT_PROFILES_DIR/after/stacks.folded"
    run "$scripts/compare-profiles.sh" -o "$work/diff.svg" before after
    check "compare-profiles.sh on two profiles exits 0" test "$status" -eq 0
    check "compare-profiles.sh writes the SVG" test -s "$work/diff.svg"
    check "compare-profiles.sh reports f's gain in share" \
        grep -qE '^ +30\.00 +60\.00 +\+30\.00  <a as b>::f$' "$work/stdout"
    check "compare-profiles.sh reports g's loss in share" \
        grep -qE '^ +70\.00 +40\.00 +-30\.00  g$' "$work/stdout"

    run "$scripts/compare-profiles.sh" before after
    check "compare-profiles.sh writes compare-A-B.svg by default" \
        test -s "$SHARDRAFT_PROFILES_DIR/compare-before-after.svg"
else
    echo "skipped the comparison check: inferno is not installed (cargo install inferno --locked)"
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
