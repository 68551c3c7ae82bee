#!/usr/bin/env bash
# Records a CPU profile of one shardraft-bench run with perf and writes it to profiles/NAME/.
#
#   scripts/profile.sh [--call-graph fp|dwarf] [--freq HZ] [--force] NAME -- [BENCH_ARGS...]
#
# The bench is built in release with line tables and frame pointers into target/profiling/,
# so normal builds in target/release/ stay valid. The script appends `--json
# profiles/NAME/bench.json` to BENCH_ARGS, so BENCH_ARGS must name a command that accepts
# --json (the default command and `log` do). Written files: stacks.folded, flamegraph.svg, bench.json, bench.txt
# and meta.txt (see profiles/README.md). perf.data stays in target/profiling/NAME.perf.data
# for `perf report -i`.
#
# Needs perf (installed from Debian's linux-perf when missing and running as root) and
# inferno (installed with `cargo install inferno --locked` when missing).
# SHARDRAFT_PROFILES_DIR changes the output folder (default: profiles/ in the repository).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
profiles_dir=${SHARDRAFT_PROFILES_DIR:-$root/profiles}
[[ $profiles_dir == /* ]] || profiles_dir=$PWD/$profiles_dir
build_dir=$root/target/profiling
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
PATH=$cargo_bin:$PATH

usage() {
    cat <<EOF
usage: scripts/profile.sh [--call-graph fp|dwarf] [--freq HZ] [--force] NAME -- [BENCH_ARGS...]

Builds shardraft-bench with symbols and frame pointers, runs it under perf record with
BENCH_ARGS plus --json, and writes the profile to $profiles_dir/NAME/.

  --call-graph fp|dwarf  how perf unwinds user stacks (default: fp)
  --freq HZ              samples per second per CPU (default: 997)
  --force                replace an existing profile of the same NAME

example: scripts/profile.sh baseline -- --clients 256 --groups 64 --duration 5 --no-progress
EOF
}

fail() {
    echo "profile.sh: $*" >&2
    exit 1
}

usage_error() {
    echo "profile.sh: $*" >&2
    usage >&2
    exit 2
}

call_graph=fp
freq=997
force=0
while [[ $# -gt 0 && $1 == -* && $1 != -- ]]; do
    case $1 in
        --call-graph)
            [[ $# -ge 2 ]] || usage_error "--call-graph needs a value: fp or dwarf"
            call_graph=$2
            shift 2
            ;;
        --freq)
            [[ $# -ge 2 ]] || usage_error "--freq needs a value in Hz"
            freq=$2
            shift 2
            ;;
        --force)
            force=1
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) usage_error "unknown option $1" ;;
    esac
done
[[ $call_graph == fp || $call_graph == dwarf ]] ||
    usage_error "invalid --call-graph '$call_graph': expected fp or dwarf"
[[ $freq =~ ^[1-9][0-9]*$ ]] || usage_error "invalid --freq '$freq': expected a positive integer (Hz)"

[[ $# -ge 1 ]] || usage_error "missing NAME"
name=$1
shift
[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
    usage_error "invalid NAME '$name': use letters, digits, '.', '_' and '-', starting with a letter or digit"
[[ $# -ge 1 && $1 == -- ]] || usage_error "missing '--' between NAME and the bench arguments"
shift
bench_args=("$@")
for arg in "${bench_args[@]}"; do
    if [[ $arg == --json || $arg == --json=* ]]; then
        usage_error "remove --json from the bench arguments: the script adds --json $profiles_dir/$name/bench.json"
    fi
done

out_dir=$profiles_dir/$name
if [[ -e $out_dir/stacks.folded && $force -eq 0 ]]; then
    fail "$out_dir already contains a profile; pass --force to replace it or choose another NAME"
fi

# perf: install it where that is possible, then check that it can open a software event.
if ! command -v perf >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "profile.sh: perf not found; installing Debian's linux-perf"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf
    else
        fail "perf not found; install it (Debian: 'sudo apt-get install linux-perf', Fedora: 'sudo dnf install perf') and retry"
    fi
fi
if ! perf_check=$(perf stat -e task-clock true 2>&1 >/dev/null); then
    paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo unknown)
    echo "$perf_check" >&2
    fail "perf cannot open the task-clock event. kernel.perf_event_paranoid is $paranoid:" \
        "above 2 it blocks all unprivileged profiling, 2 allows user-space samples only," \
        "1 adds kernel samples. Run this script as root, or lower the setting with" \
        "'sudo sysctl kernel.perf_event_paranoid=1'. In a container, perf_event_open may" \
        "also be blocked by the seccomp profile."
fi
if [[ $(id -u) -ne 0 ]]; then
    paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo unknown)
    if [[ $paranoid != unknown && $paranoid -ge 2 ]]; then
        echo "profile.sh: kernel.perf_event_paranoid is $paranoid, so the profile has no kernel frames" >&2
    fi
fi

# inferno: folds perf's stacks and draws the flamegraph.
if ! command -v inferno-collapse-perf >/dev/null 2>&1 || ! command -v inferno-flamegraph >/dev/null 2>&1; then
    command -v cargo >/dev/null 2>&1 || fail "inferno not found and cargo is missing to install it; install Rust (https://rustup.rs) and retry"
    echo "profile.sh: inferno not found; installing it with cargo install inferno --locked"
    cargo install inferno --locked
fi

# Hardware cycles give the most precise samples, but many VMs expose no PMU. cpu-clock is a
# timer-driven software event that needs no PMU, with a period in nanoseconds.
cycles_check=$(perf stat -x, -e cycles true 2>&1 >/dev/null || true)
if [[ $cycles_check =~ ^[0-9] ]]; then
    event=cycles
    count_name=cycles
else
    event=cpu-clock
    count_name=ns
    echo "profile.sh: hardware cycles are not supported here; sampling the cpu-clock software event"
fi

# Frame pointers in the crates of this workspace and their C dependencies (mimalloc). The
# precompiled std is built without them, so fp stacks that pass through std or libc can end
# early, as profiles/README.md describes.
echo "profile.sh: building shardraft-bench (release, line tables, frame pointers) in $build_dir"
(
    cd "$root"
    CARGO_TARGET_DIR=$build_dir \
        CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
        RUSTFLAGS="${RUSTFLAGS:-} -C force-frame-pointers=yes" \
        CFLAGS="${CFLAGS:-} -fno-omit-frame-pointer" \
        cargo build --release --locked -p shardraft-bench --bin shardraft-bench
) || fail "building shardraft-bench failed; see cargo's output above"
bench=$build_dir/release/shardraft-bench

# The bench writes bench.json straight into the profile, at the path it records in the file
# (relative to the repository root where possible). The other files go to a staging folder
# first, so a failed run leaves no half-written profile.
staging=$build_dir/runs/$name
perf_data=$build_dir/$name.perf.data
json_path=${out_dir#"$root"/}/bench.json
rm -rf "$staging"
mkdir -p "$staging"
created_out_dir=0
if [[ ! -d $out_dir ]]; then
    mkdir -p "$out_dir"
    created_out_dir=1
fi
remove_empty_profile() {
    if [[ $created_out_dir -eq 1 ]]; then
        rmdir "$out_dir" 2>/dev/null || true
    fi
}

case $call_graph in
    fp) call_graph_arg=fp ;;
    # With 16 KiB of stack per sample, about two thirds of this bench's stacks reach the
    # thread's root frame. perf's maximum, 65528, would make perf.data about four times
    # larger (an estimate: perf copies that much for every sample).
    dwarf) call_graph_arg=dwarf,16384 ;;
esac

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "profile.sh: recording: perf record -e $event -F $freq --call-graph $call_graph_arg -- $bench ${bench_args[*]} --json $json_path"
set +e
(
    cd "$root"
    perf record -e "$event" -F "$freq" --call-graph "$call_graph_arg" -o "$perf_data" -- \
        "$bench" "${bench_args[@]}" --json "$json_path"
) 2> >(tee "$staging/stderr.txt" >&2) | tee "$staging/bench.txt"
status=${PIPESTATUS[0]}
set -e
if [[ $status -ne 0 ]]; then
    remove_empty_profile
    fail "the bench run failed with status $status; its output and perf's messages are in $staging/stderr.txt, perf.data in $perf_data"
fi
if [[ ! -s $out_dir/bench.json ]]; then
    remove_empty_profile
    fail "the bench wrote no $out_dir/bench.json; check that its command accepts --json"
fi

echo "profile.sh: folding stacks"
# Inline expansion through addr2line takes minutes on a dwarf profile and names inlined
# frames without their module path. With --no-inline every frame is a real function.
perf script -i "$perf_data" --no-inline 2>"$staging/perf-script.log" |
    inferno-collapse-perf >"$staging/stacks.folded" ||
    fail "perf script or inferno-collapse-perf failed; see $staging/perf-script.log"
[[ -s $staging/stacks.folded ]] || fail "perf recorded no samples; see $staging/perf-script.log"
samples=$(perf script -i "$perf_data" -F period 2>/dev/null | grep -c '[0-9]' || true)

commit=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
if [[ $commit != unknown ]] && [[ -n $(git -C "$root" --no-optional-locks status --porcelain 2>/dev/null) ]]; then
    commit="$commit (working tree has uncommitted changes)"
fi
title="shardraft-bench ${bench_args[*]}"
[[ ${#bench_args[@]} -gt 0 ]] || title="shardraft-bench (default command)"
inferno-flamegraph --title "$title" \
    --subtitle "perf $event at $freq Hz, $call_graph call graphs, $samples samples, $started, commit ${commit:0:12}" \
    --countname "$count_name" <"$staging/stacks.folded" >"$staging/flamegraph.svg"

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
hypervisor=$(awk -F': *' '/^Hypervisor vendor/ { print $2 }' < <(lscpu 2>/dev/null) || true)
{
    echo "date: $started"
    echo "commit: $commit"
    echo "bench args: ${bench_args[*]}"
    echo "command: shardraft-bench ${bench_args[*]} --json $json_path"
    echo "cpu: ${cpu_model:-unknown}${hypervisor:+ (virtual machine, $hypervisor)}"
    echo "cores: $(nproc) online of $(getconf _NPROCESSORS_CONF)"
    echo "memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "kernel: $(uname -srm)"
    echo "load average at start: $load_start (1, 5, 15 min)"
    echo "rustc: $(rustc --version 2>/dev/null || echo unknown)"
    echo "perf: $(perf version 2>/dev/null || echo unknown)"
    echo "perf event: $event, $freq Hz; stack counts in stacks.folded are in $count_name"
    echo "call graph: $call_graph_arg"
    echo "samples: $samples"
    echo "build: release, debug=line-tables-only, -C force-frame-pointers=yes, $bench"
} >"$staging/meta.txt"

for file in stacks.folded flamegraph.svg bench.txt meta.txt; do
    cp "$staging/$file" "$out_dir/$file"
done
svg_bytes=$(stat -c %s "$out_dir/flamegraph.svg")
if ((svg_bytes > 3 * 1024 * 1024)); then
    echo "profile.sh: flamegraph.svg is $((svg_bytes / 1024)) KiB; record with a lower --freq or a shorter run to keep it small" >&2
fi
echo "profile.sh: $samples samples written to $out_dir (perf.data kept in $perf_data)"
