#!/usr/bin/env bash
# Compares two profiles that scripts/profile.sh recorded: draws a differential flamegraph
# and prints the functions whose share of self time changed most.
#
#   scripts/compare-profiles.sh [-o OUT.svg] A B
#
# A and B are profile names, i.e. folders under profiles/ with a stacks.folded. The SVG
# (default: profiles/compare-A-B.svg) has B's stacks, coloured red where a frame has a larger
# share of samples in B than in A and blue where it has a smaller one. A's counts are
# normalised to B's total first, so runs of different lengths or sampling rates compare.
# SHARDRAFT_PROFILES_DIR changes the profiles folder (default: profiles/ in the repository).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
profiles_dir=${SHARDRAFT_PROFILES_DIR:-$root/profiles}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
PATH=$cargo_bin:$PATH
top_count=15

usage() {
    cat <<EOF
usage: scripts/compare-profiles.sh [-o OUT.svg] A B

Writes a differential flamegraph of profiles A and B (folders under $profiles_dir) and
prints the $top_count functions whose share of self time changed most from A to B.

  -o OUT.svg   where to write the flamegraph (default: $profiles_dir/compare-A-B.svg)

example: scripts/compare-profiles.sh baseline my-change
EOF
}

usage_error() {
    echo "compare-profiles.sh: $*" >&2
    usage >&2
    exit 2
}

fail() {
    echo "compare-profiles.sh: $*" >&2
    exit 1
}

output=
while [[ $# -gt 0 && $1 == -* ]]; do
    case $1 in
        -o | --output)
            [[ $# -ge 2 ]] || usage_error "$1 needs a file name"
            output=$2
            shift 2
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        --)
            shift
            break
            ;;
        *) usage_error "unknown option $1" ;;
    esac
done
[[ $# -eq 2 ]] || usage_error "expected two profile names, got $#"
name_a=$1
name_b=$2
folded_a=$profiles_dir/$name_a/stacks.folded
folded_b=$profiles_dir/$name_b/stacks.folded
for folded in "$folded_a" "$folded_b"; do
    [[ -f $folded ]] || fail "profile file not found: $folded (record it with scripts/profile.sh)"
    [[ -s $folded ]] || fail "profile file is empty: $folded"
done
output=${output:-$profiles_dir/compare-$name_a-$name_b.svg}

# Counts in the two files must have the same unit (cycles or ns of cpu-clock) for the
# normalised widths to mean the same thing.
event_of() {
    sed -n 's/^perf event: \([^,]*\),.*/\1/p' "$(dirname "$1")/meta.txt" 2>/dev/null || true
}
event_a=$(event_of "$folded_a")
event_b=$(event_of "$folded_b")
if [[ -n $event_a && -n $event_b && $event_a != "$event_b" ]]; then
    echo "compare-profiles.sh: $name_a sampled $event_a and $name_b sampled $event_b;" \
        "the shares compare only roughly" >&2
fi

if ! command -v inferno-diff-folded >/dev/null 2>&1 || ! command -v inferno-flamegraph >/dev/null 2>&1; then
    command -v cargo >/dev/null 2>&1 || fail "inferno not found and cargo is missing to install it; install Rust (https://rustup.rs) and retry"
    echo "compare-profiles.sh: inferno not found; installing it with cargo install inferno --locked"
    cargo install inferno --locked
fi

mkdir -p "$(dirname "$output")"
inferno-diff-folded --normalize "$folded_a" "$folded_b" |
    inferno-flamegraph --title "differential flamegraph: $name_a -> $name_b" \
        --subtitle "widths: $name_b's samples. Red: larger share in $name_b than in $name_a, blue: smaller." \
        >"$output"
echo "differential flamegraph written to $output"
echo

# Self time of a function: the samples of the stacks whose leaf frame is that function. A
# folded line is "frame;frame;...;leaf COUNT", and frames may contain spaces, so the count
# is the last field and the leaf is what follows the last ';' before it.
echo "self-time share by function, $name_a -> $name_b, the $top_count largest changes"
# Each share column is as wide as its header.
width_a=$((${#name_a} + 2 > 8 ? ${#name_a} + 2 : 8))
width_b=$((${#name_b} + 2 > 8 ? ${#name_b} + 2 : 8))
printf '%*s %*s %8s  %s\n' "$width_a" "$name_a %" "$width_b" "$name_b %" "change" "function"
awk -v width_a="$width_a" -v width_b="$width_b" '
    FNR == 1 { file++ }
    {
        count = $NF
        stack = substr($0, 1, length($0) - length($NF) - 1)
        leaf = stack
        sub(/.*;/, "", leaf)
        if (file == 1) { self_a[leaf] += count; total_a += count }
        else { self_b[leaf] += count; total_b += count }
        seen[leaf] = 1
    }
    END {
        for (leaf in seen) {
            share_a = 100 * self_a[leaf] / total_a
            share_b = 100 * self_b[leaf] / total_b
            change = share_b - share_a
            magnitude = change < 0 ? -change : change
            printf "%.9f\t%*.2f %*.2f %+8.2f  %s\n", magnitude, width_a, share_a, width_b, share_b, change, leaf
        }
    }
' "$folded_a" "$folded_b" |
    sort -t $'\t' -k1,1 -g -r | awk -F '\t' -v top="$top_count" 'NR <= top { print $2 }'
