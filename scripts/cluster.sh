#!/usr/bin/env bash
# Starts, inspects and stops a 3-node shardraft cluster on this machine, on loopback.
#
#   scripts/cluster.sh start    build the server if needed, start the nodes in the background
#                               and wait until every group has a leader on every node
#   scripts/cluster.sh status   show which nodes run and what /v1/status reports
#   scripts/cluster.sh stop     stop every node with SIGTERM and wait until it exited
#
# The configs are scripts/cluster/node{1,2,3}.toml: client ports 7101-7103, HTTP ports
# 7201-7203, peer ports 7010, 7020, 7030 (and the next port for shard 1). Data, logs and
# pid files go under $SHARDRAFT_CLUSTER_DIR (default: target/cluster). $SHARDRAFT_BIN
# chooses the binary (default: target/release/shardraft, built when missing).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cluster_dir=${SHARDRAFT_CLUSTER_DIR:-$root/target/cluster}
bin=${SHARDRAFT_BIN:-$root/target/release/shardraft}
nodes=(1 2 3)
start_timeout_secs=${SHARDRAFT_START_TIMEOUT_SECS:-60}
stop_timeout_secs=${SHARDRAFT_STOP_TIMEOUT_SECS:-40}

http_port() { echo $((7200 + $1)); }
pid_file() { echo "$cluster_dir/node$1/pid"; }

running_pid() {
    local file
    file=$(pid_file "$1")
    [[ -f $file ]] || return 1
    local pid
    pid=$(<"$file")
    kill -0 "$pid" 2>/dev/null || return 1
    # A killed node whose parent shell is gone stays a zombie until its new parent reaps
    # it; it no longer runs.
    local state
    state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
    [[ -n $state && $state != Z* ]] || return 1
    echo "$pid"
}

ready() {
    curl -fsS --max-time 1 "http://127.0.0.1:$(http_port "$1")/health/ready" >/dev/null 2>&1
}

start() {
    if [[ ! -x $bin ]]; then
        echo "building $bin"
        (cd "$root" && cargo build --release -p shardraft --bin shardraft)
    fi
    for node in "${nodes[@]}"; do
        if pid=$(running_pid "$node"); then
            echo "node $node already runs (pid $pid)"
            continue
        fi
        mkdir -p "$cluster_dir/node$node/data"
        "$bin" serve --config "$root/scripts/cluster/node$node.toml" \
            --data-dir "$cluster_dir/node$node/data" \
            >>"$cluster_dir/node$node/log" 2>&1 &
        echo $! >"$(pid_file "$node")"
        echo "node $node started (pid $!, log $cluster_dir/node$node/log)"
    done

    local deadline=$((SECONDS + start_timeout_secs))
    for node in "${nodes[@]}"; do
        until ready "$node"; do
            if ! running_pid "$node" >/dev/null; then
                echo "node $node exited; the end of its log:" >&2
                tail -n 20 "$cluster_dir/node$node/log" >&2
                exit 1
            fi
            if ((SECONDS >= deadline)); then
                echo "node $node was not ready within $start_timeout_secs s" >&2
                exit 1
            fi
            sleep 0.2
        done
    done
    echo "cluster ready: every group has a leader on every node"
}

status() {
    for node in "${nodes[@]}"; do
        if pid=$(running_pid "$node"); then
            echo "node $node: running (pid $pid)"
            curl -fsS --max-time 2 "http://127.0.0.1:$(http_port "$node")/v1/status" || true
            echo
        else
            echo "node $node: stopped"
        fi
    done
}

stop() {
    local pids=()
    for node in "${nodes[@]}"; do
        if pid=$(running_pid "$node"); then
            kill -TERM "$pid"
            pids+=("$node:$pid")
        fi
    done
    local deadline=$((SECONDS + stop_timeout_secs))
    for entry in "${pids[@]}"; do
        local node=${entry%%:*} pid=${entry##*:}
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                echo "node $node (pid $pid) did not stop within $stop_timeout_secs s" >&2
                exit 1
            fi
            sleep 0.1
        done
        rm -f "$(pid_file "$node")"
        echo "node $node stopped"
    done
}

case ${1:-} in
    start) start ;;
    status) status ;;
    stop) stop ;;
    *)
        echo "usage: $0 start|status|stop" >&2
        exit 2
        ;;
esac
