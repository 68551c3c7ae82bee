#!/usr/bin/env bash
# Starts, inspects and stops a 3-member etcd cluster on loopback, the etcd target of
# shardraft-bench (`--target etcd`).
#
#   scripts/peer-etcd.sh install  install etcd when missing, and nothing else
#   scripts/peer-etcd.sh start    install etcd when missing, start the members in the
#                                 background, wait until every member reports healthy and
#                                 print the client endpoints
#   scripts/peer-etcd.sh status   show which members run and whether each is healthy; exits
#                                 0 only when all of them run and are healthy
#   scripts/peer-etcd.sh stop     stop the members this script started (SIGTERM, then SIGKILL
#                                 after the stop timeout) and remove their data
#
# Every listener binds 127.0.0.1. The members keep etcd's default durability: the WAL is
# fdatasync'd before a write is acknowledged, because this script does not pass
# --unsafe-no-fsync (which etcd 3.4.23 accepts, although its --help does not list it).
#
# Environment:
#   SHARDRAFT_ETCD_DIR           data, logs and pid files (default: target/peer-etcd)
#   SHARDRAFT_ETCD_CLIENT_PORTS  3 client ports (default: "2379 22379 32379")
#   SHARDRAFT_ETCD_PEER_PORTS    3 peer ports (default: "2380 22380 32380")
#   SHARDRAFT_ETCD_BIN           the etcd binary (default: etcd on PATH, else /usr/bin/etcd)
#   SHARDRAFT_ETCD_START_TIMEOUT_SECS  wait for health at most this long (default: 30)
#   SHARDRAFT_ETCD_STOP_TIMEOUT_SECS   wait for each member to exit this long (default: 20)
#
# Installing: when etcd is missing and this runs as root, it installs the Debian package
# etcd-server (3.4.x in Debian 12) with apt-get. The package's maintainer scripts would
# start a system etcd service on the default ports 2379 and 2380. To prevent that, the
# install runs with a /usr/sbin/policy-rc.d that forbids every service start (exit 101),
# which invoke-rc.d and deb-systemd-invoke obey; the file is removed again afterwards. Where
# a policy-rc.d already exists it is left as it is, and an etcd process that appears during
# the install is stopped afterwards (through systemctl when systemd runs it, otherwise by
# its pid); etcd processes that ran before the install are never touched. The package still
# enables etcd.service for boot, which this script leaves as it is: on a systemd host that
# system etcd holds 2379 and 2380 after a reboot, and `start` then reports the port in use.
# Health checks use curl.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cluster_dir=${SHARDRAFT_ETCD_DIR:-$root/target/peer-etcd}
read -r -a client_ports <<<"${SHARDRAFT_ETCD_CLIENT_PORTS:-2379 22379 32379}"
read -r -a peer_ports <<<"${SHARDRAFT_ETCD_PEER_PORTS:-2380 22380 32380}"
start_timeout_secs=${SHARDRAFT_ETCD_START_TIMEOUT_SECS:-30}
stop_timeout_secs=${SHARDRAFT_ETCD_STOP_TIMEOUT_SECS:-20}
members=(0 1 2)
cluster_token=shardraft-bench-etcd
policy_file=/usr/sbin/policy-rc.d

member_name() { echo "member$(($1 + 1))"; }
member_dir() { echo "$cluster_dir/$(member_name "$1")"; }
pid_file() { echo "$(member_dir "$1")/pid"; }
log_file() { echo "$(member_dir "$1")/log"; }
client_url() { echo "http://127.0.0.1:${client_ports[$1]}"; }
peer_url() { echo "http://127.0.0.1:${peer_ports[$1]}"; }

check_config() {
    if ! command -v curl >/dev/null; then
        echo "curl is missing; it checks the members' /health endpoints. Install it, for" \
            "example 'apt-get install -y curl', then run this again." >&2
        exit 1
    fi
    if ((${#client_ports[@]} != 3 || ${#peer_ports[@]} != 3)); then
        echo "SHARDRAFT_ETCD_CLIENT_PORTS and SHARDRAFT_ETCD_PEER_PORTS need 3 ports each," \
            "got '${client_ports[*]}' and '${peer_ports[*]}'" >&2
        exit 2
    fi
}

# Prints the etcd binary, or fails when there is none.
etcd_bin() {
    if [[ -n ${SHARDRAFT_ETCD_BIN:-} ]]; then
        echo "$SHARDRAFT_ETCD_BIN"
    elif command -v etcd >/dev/null; then
        command -v etcd
    elif [[ -x /usr/bin/etcd ]]; then
        echo /usr/bin/etcd
    else
        return 1
    fi
}

# Prints the pid of member $1 when it runs. A pid counts only when its command line names
# this member's data directory, so a pid reused by another process is never taken for it.
running_pid() {
    local file pid state
    file=$(pid_file "$1")
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # A member whose parent shell is gone stays a zombie until its new parent reaps it; it
    # no longer runs.
    state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
    [[ -n $state && $state != Z* ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--data-dir $(member_dir "$1")/data" ||
        return 1
    echo "$pid"
}

healthy() {
    curl -fsS --max-time 2 "$(client_url "$1")/health" 2>/dev/null | grep -q '"health":"true"'
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Prints the pids of every etcd process on this machine, for the install's before and after.
etcd_pids() {
    pgrep -x etcd || true
}

install_etcd() {
    if ((EUID != 0)); then
        echo "etcd is not installed. Install the Debian package etcd-server (3.4.x), for" \
            "example 'sudo apt-get install -y etcd-server', or set SHARDRAFT_ETCD_BIN to an" \
            "etcd binary, then run this again." >&2
        exit 1
    fi

    local before created_policy=false
    before=$(etcd_pids)
    if [[ ! -e $policy_file ]]; then
        printf '#!/bin/sh\n# Written by %s while it installs etcd-server.\nexit 101\n' \
            "$0" >"$policy_file"
        chmod 755 "$policy_file"
        created_policy=true
        trap 'rm -f "$policy_file"' EXIT
    fi

    echo "installing etcd-server with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server; then
        echo "apt-get install failed; retrying after apt-get update" >&2
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server
    fi

    if $created_policy; then
        rm -f "$policy_file"
        trap - EXIT
    fi
    stop_service_started_by_install "$before"
}

# Stops an etcd that appeared during the install, which only a package's own service start
# can have launched; $1 lists the etcd pids from before the install.
stop_service_started_by_install() {
    local pid
    for pid in $(etcd_pids); do
        if grep -qx "$pid" <<<"$1"; then
            continue
        fi
        if [[ -d /run/systemd/system ]] && systemctl is-active --quiet etcd; then
            echo "stopping the system etcd service that the package install started"
            systemctl stop etcd
        else
            echo "stopping the etcd (pid $pid) that the package install started"
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
}

start_member() {
    local member=$1 bin=$2 initial_cluster=$3
    local dir
    dir=$(member_dir "$member")
    mkdir -p "$dir/data"
    chmod 700 "$dir/data"
    echo "--- start $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$(log_file "$member")"
    "$bin" --name "$(member_name "$member")" \
        --data-dir "$dir/data" \
        --listen-client-urls "$(client_url "$member")" \
        --advertise-client-urls "$(client_url "$member")" \
        --listen-peer-urls "$(peer_url "$member")" \
        --initial-advertise-peer-urls "$(peer_url "$member")" \
        --initial-cluster "$initial_cluster" \
        --initial-cluster-token "$cluster_token" \
        --initial-cluster-state new \
        --logger zap --log-outputs stderr \
        </dev/null >>"$(log_file "$member")" 2>&1 &
    echo $! >"$(pid_file "$member")"
    echo "$(member_name "$member") started (pid $!, log $(log_file "$member"))"
}

wait_healthy() {
    local deadline=$((SECONDS + start_timeout_secs)) member
    for member in "${members[@]}"; do
        until healthy "$member"; do
            if ! running_pid "$member" >/dev/null; then
                echo "$(member_name "$member") exited; the end of its log:" >&2
                tail -n 20 "$(log_file "$member")" >&2
                exit 1
            fi
            if ((SECONDS >= deadline)); then
                echo "$(member_name "$member") was not healthy within $start_timeout_secs s;" \
                    "see $(log_file "$member")" >&2
                exit 1
            fi
            sleep 0.2
        done
    done
}

start() {
    check_config
    local bin
    if ! bin=$(etcd_bin); then
        install_etcd
        bin=$(etcd_bin)
    fi

    local running=() stopped=() member
    for member in "${members[@]}"; do
        if running_pid "$member" >/dev/null; then
            running+=("$member")
        else
            stopped+=("$member")
        fi
    done
    if ((${#running[@]} == 0)); then
        # Nothing runs, so whatever data is left belongs to an earlier cluster that was not
        # stopped through this script; a new cluster starts empty.
        for member in "${members[@]}"; do
            rm -rf "$(member_dir "$member")/data"
        done
    fi

    local initial_cluster="" separator=""
    for member in "${members[@]}"; do
        initial_cluster+="$separator$(member_name "$member")=$(peer_url "$member")"
        separator=,
    done
    for member in "${stopped[@]}"; do
        start_stopped_member "$member" "$bin" "$initial_cluster" "${#running[@]}"
    done
    for member in "${running[@]}"; do
        echo "$(member_name "$member") already runs (pid $(running_pid "$member"))"
    done

    wait_healthy
    local endpoints=()
    for member in "${members[@]}"; do
        endpoints+=("127.0.0.1:${client_ports[$member]}")
    done
    echo "etcd cluster healthy ($("$bin" --version | head -n 1))"
    echo "client endpoints: $(
        IFS=,
        echo "${endpoints[*]}"
    )"
}

# Starts member $1, which does not run; $4 is the number of members that ran before this
# start. A member rejoins a running cluster only with the data it had, because the others do
# not accept a member that starts empty with `--initial-cluster-state new`.
start_stopped_member() {
    local member=$1 bin=$2 initial_cluster=$3 running_before=$4
    local data
    data="$(member_dir "$member")/data"
    if [[ ! -d $data/member ]] && ((running_before > 0)); then
        echo "$(member_name "$member") has no data in $data but other members run;" \
            "run '$0 stop' and then '$0 start' for a new cluster" >&2
        exit 1
    fi
    local port
    for port in "${client_ports[$member]}" "${peer_ports[$member]}"; do
        if port_in_use "$port"; then
            echo "port 127.0.0.1:$port is in use by another process; stop it or choose" \
                "other ports with SHARDRAFT_ETCD_CLIENT_PORTS and SHARDRAFT_ETCD_PEER_PORTS" >&2
            exit 1
        fi
    done
    start_member "$member" "$bin" "$initial_cluster"
}

status() {
    check_config
    local all_healthy=true member pid
    for member in "${members[@]}"; do
        if pid=$(running_pid "$member"); then
            if healthy "$member"; then
                echo "$(member_name "$member"): running (pid $pid), healthy at $(client_url "$member")"
            else
                echo "$(member_name "$member"): running (pid $pid), not healthy at $(client_url "$member")"
                all_healthy=false
            fi
        else
            echo "$(member_name "$member"): stopped"
            all_healthy=false
        fi
    done
    $all_healthy
}

# Waits until pid $1 of member $2 exits, sending SIGKILL once the stop timeout has passed.
wait_exit() {
    local pid=$1 member=$2
    local deadline=$((SECONDS + stop_timeout_secs))
    while running_pid "$member" >/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "$(member_name "$member") (pid $pid) did not stop within" \
                "$stop_timeout_secs s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + stop_timeout_secs))
        fi
        sleep 0.1
    done
}

stop() {
    check_config
    local stopping=() member pid
    for member in "${members[@]}"; do
        if pid=$(running_pid "$member"); then
            kill -TERM "$pid"
            stopping+=("$member:$pid")
        fi
    done
    local entry
    for entry in "${stopping[@]}"; do
        member=${entry%%:*}
        pid=${entry##*:}
        wait_exit "$pid" "$member"
        echo "$(member_name "$member") stopped (pid $pid)"
    done
    for member in "${members[@]}"; do
        rm -f "$(pid_file "$member")"
        rm -rf "$(member_dir "$member")/data"
    done
    echo "etcd cluster stopped; data removed, logs kept under $cluster_dir"
}

case ${1:-} in
    install)
        if etcd_bin >/dev/null 2>&1; then
            echo "etcd is installed: $(etcd_bin)"
        else
            install_etcd
        fi
        ;;
    start) start ;;
    status) status ;;
    stop) stop ;;
    *)
        echo "usage: $0 install|start|status|stop" >&2
        exit 2
        ;;
esac
