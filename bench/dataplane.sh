#!/usr/bin/env bash
# Dataplane benchmark: the reference tunnel (real TUN, launched by the mock
# manager) against wireguard-go, both talking to the same wireguard-go agent
# over the same veth, measured in one run. See bench/README.md.
#
# Needs root, wireguard-go, wireguard-tools, iperf3, iproute2, iputils-ping,
# curl. Usage: bench/dataplane.sh [SECONDS]   (TCP run length, default 10)
# CODERVPN_BIN=path uses that binary instead of building target/release.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-10}
UDP_SECS=5
NS_A=cvpn-bench-a          # the agent
NS_T=cvpn-bench-t          # the user's machine: coder0 and wgc
IP_A=10.98.0.1
IP_T=10.98.0.2
WG_PORT=51820
AGENT_ID=7b2c3d4e-5f60-4a1b-8c2d-3e4f5a6b7c8d
# The agent's two addresses (protocol.md §9.3): the Coder prefix is reached
# through the reference tunnel, the Tailscale one through wireguard-go.
AGENT_CODER=fd60:627a:a42b:4a1b:8c2d:3e4f:5a6b:7c8d
AGENT_TS=fd7a:115c:a1e0:4a1b:8c2d:3e4f:5a6b:7c8d
WGC_ADDR=fd7a:115c:a1e0:ffff::2

KEEP=
die() { echo "error: $*" >&2; KEEP=1; exit 1; }
[[ $SECS =~ ^[1-9][0-9]*$ ]] || die "SECONDS must be a positive whole number, got '$SECS'"
[ "$(id -u)" = 0 ] || die "needs root (CAP_NET_ADMIN): namespaces, TUN devices, wireguard-go"
for tool in ip wg wireguard-go iperf3 ping curl; do
    command -v "$tool" >/dev/null ||
        die "missing $tool (apt-get install wireguard-go wireguard-tools iperf3 iproute2 iputils-ping curl)"
done

WORK=$(mktemp -d /tmp/codervpn-bench.XXXXXX)
PIDS=()

# Ends what this script started (by pid), then the namespaces. Also run at
# start, so that a run that was killed leaves nothing behind for the next.
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for ns in $NS_A $NS_T; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
    done
    sleep 0.5
    for ns in $NS_A $NS_T; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}
finish() {
    cleanup
    if [ -n "$KEEP" ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap finish EXIT
cleanup

in_a() { ip netns exec $NS_A "$@"; }
in_t() { ip netns exec $NS_T "$@"; }
# wait_for SECONDS DESCRIPTION COMMAND...: retries COMMAND, bounded.
wait_for() {
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what: not within ${limit}s"
        sleep 0.2
    done
}

if [ -n "${CODERVPN_BIN:-}" ]; then
    BIN=$(realpath "$CODERVPN_BIN")
else
    echo "building the release binary..." >&2
    cargo build --release --quiet --bin codervpn
    BIN=$PWD/target/release/codervpn
fi

# Namespaces and the veth between them.
ip netns add $NS_A
ip netns add $NS_T
in_a ip link set lo up
in_t ip link set lo up
ip link add veth-a netns $NS_A type veth peer name veth-t netns $NS_T
in_a ip addr add $IP_A/24 dev veth-a
in_t ip addr add $IP_T/24 dev veth-t
in_a ip link set veth-a up
in_t ip link set veth-t up

# wg_up NS IFACE KEYFILE [listen-port]: a wireguard-go interface, MTU 1280
# like the reference tunnel's.
wg_up() {
    local ns=$1 dev=$2 key=$3
    WG_PROCESS_FOREGROUND=1 ip netns exec "$ns" wireguard-go -f "$dev" >"$WORK/$dev.log" 2>&1 &
    PIDS+=($!)
    wait_for 10 "wireguard-go $dev" ip netns exec "$ns" ip link show "$dev"
    ip netns exec "$ns" wg set "$dev" private-key "$key" ${4:+listen-port $4}
    ip netns exec "$ns" ip link set "$dev" mtu 1280 up
}

(umask 077 && wg genkey >"$WORK/agent.key" && wg genkey >"$WORK/wgc.key")
AGENT_PUB=$(wg pubkey <"$WORK/agent.key")
WGC_PUB=$(wg pubkey <"$WORK/wgc.key")

# The agent: both addresses, replies to either prefix go into wg0.
wg_up $NS_A wg0 "$WORK/agent.key" $WG_PORT
in_a ip -6 addr add $AGENT_CODER/128 dev wg0 nodad
in_a ip -6 addr add $AGENT_TS/128 dev wg0 nodad
in_a ip -6 route add fd60:627a:a42b::/48 dev wg0
in_a ip -6 route add fd7a:115c:a1e0::/48 dev wg0
in_a wg set wg0 peer "$WGC_PUB" allowed-ips $WGC_ADDR/128

# The wireguard-go client in T: the Tailscale prefix goes through it.
wg_up $NS_T wgc "$WORK/wgc.key"
in_t ip -6 addr add $WGC_ADDR/128 dev wgc nodad
in_t wg set wgc peer "$AGENT_PUB" allowed-ips fd7a:115c:a1e0::/48 endpoint $IP_A:$WG_PORT
in_t ip -6 route add fd7a:115c:a1e0::/48 dev wgc

# The control plane: wireguard-go published as the agent.
cat >"$WORK/scenario.json" <<EOF
{
  "user": {"id": "00000000-0000-0000-0000-000000000001", "username": "bench"},
  "workspaces": [
    {"id": "7b2c3d4e-5f60-4a1b-8c2d-000000000001", "name": "wsp", "agents": [
      {"id": "$AGENT_ID", "name": "dev",
       "external_node": {"public_key": "$AGENT_PUB", "endpoint": "$IP_A:$WG_PORT"}}]}
  ]
}
EOF
# Background processes are started with `ip netns exec` itself (not the
# in_t function, which would leave a subshell in between), so that $! is
# the process and a signal reaches it.
ip netns exec $NS_T "$BIN" mock-coder --listen 127.0.0.1:0 --scenario "$WORK/scenario.json" \
    >"$WORK/mock-coder.out" 2>"$WORK/mock-coder.log" &
PIDS+=($!)
wait_for 15 "mock-coder URL" grep -q '^http://' "$WORK/mock-coder.out"
URL=$(head -1 "$WORK/mock-coder.out")

# The reference tunnel on coder0, launched by the mock manager.
ip netns exec $NS_T "$BIN" mock-manager --tun-device coder0 --coder-url "$URL" --hold-secs 3600 \
    --tunnel-cmd "$BIN tunnel --log-level warn" >"$WORK/mock-manager.out" 2>"$WORK/mock-manager.log" &
MANAGER=$!
PIDS+=($MANAGER)
wait_for 60 "mock-manager start" grep -q '^started:' "$WORK/mock-manager.out"

# The tunnel's key, from the node it announced to the control plane.
tunnel_key() {
    in_t curl -sf --max-time 2 "$URL/_mock/nodes" |
        grep -o '"public_key":"[^"]\+"' | head -1 | sed 's/.*"public_key":"//; s/"$//'
}
have_tunnel_key() { [ -n "$(tunnel_key)" ]; }
wait_for 30 "the tunnel's key (GET /_mock/nodes)" have_tunnel_key
TUNNEL_PUB=$(tunnel_key)
in_a wg set wg0 peer "$TUNNEL_PUB" allowed-ips fd60:627a:a42b::/48,fd7a:115c:a1e0::/48

wait_for 30 "ping through the reference tunnel" in_t ping -6 -c 1 -W 1 $AGENT_CODER
wait_for 30 "ping through wireguard-go" in_t ping -6 -c 1 -W 1 $AGENT_TS

ip netns exec $NS_A iperf3 -s >"$WORK/iperf3-server.log" 2>&1 &
PIDS+=($!)
wait_for 10 "iperf3 server" sh -c "ip netns exec $NS_A ss -Htln | grep -q ':5201'"

# tcp_gbps ADDR: receiver throughput in Gbit/s.
tcp_gbps() {
    in_t iperf3 -c "$1" -t "$SECS" -f m --connect-timeout 5000 |
        awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") printf "%.3f", $(i-1) / 1000 }'
}
# udp_pps ADDR: 64-byte datagrams received per second, sender unthrottled.
udp_pps() {
    in_t iperf3 -c "$1" -u -l 64 -b 0 -t "$UDP_SECS" --connect-timeout 5000 |
        awk '/receiver/ { for (i = 1; i <= NF; i++) {
                 if ($i ~ /^[0-9]+\/[0-9]+$/) { split($i, n, "/"); got = n[2] - n[1] }
                 if ($i ~ /^[0-9.]+-[0-9.]+$/) { split($i, t, "-"); secs = t[2] - t[1] } }
             if (secs > 0) printf "%.0f", got / secs }'
}
# rtt_ms ADDR: average of 50 pings, 10 ms apart.
rtt_ms() {
    in_t ping -q -c 50 -i 0.01 -W 2 "$1" | awk -F/ '/^rtt/ { print $5 }'
}

echo "measuring (TCP ${SECS}s, UDP ${UDP_SECS}s per path)..." >&2
REF_TCP=$(tcp_gbps $AGENT_CODER) || die "iperf3 TCP through the reference tunnel failed"
WG_TCP=$(tcp_gbps $AGENT_TS) || die "iperf3 TCP through wireguard-go failed"
REF_PPS=$(udp_pps $AGENT_CODER) || die "iperf3 UDP through the reference tunnel failed"
WG_PPS=$(udp_pps $AGENT_TS) || die "iperf3 UDP through wireguard-go failed"
VETH_RTT=$(rtt_ms $IP_A) || die "ping over the bare veth failed"
REF_RTT=$(rtt_ms $AGENT_CODER) || die "ping through the reference tunnel failed"
WG_RTT=$(rtt_ms $AGENT_TS) || die "ping through wireguard-go failed"
for figure in "$REF_TCP" "$WG_TCP" "$REF_PPS" "$WG_PPS" "$VETH_RTT" "$REF_RTT" "$WG_RTT"; do
    [ -n "$figure" ] || die "a measurement gave no figure"
done

awk -v rt="$REF_TCP" -v wt="$WG_TCP" -v rp="$REF_PPS" -v wp="$WG_PPS" \
    -v vr="$VETH_RTT" -v rr="$REF_RTT" -v wr="$WG_RTT" 'BEGIN {
    printf "%-32s %14s %14s %8s\n", "", "reference", "wireguard-go", "ref/wg"
    printf "%-32s %14.3f %14.3f %8.2f\n", "TCP throughput (Gbit/s)", rt, wt, (wt > 0 ? rt / wt : 0)
    printf "%-32s %14d %14d %8.2f\n", "UDP 64-byte packets/s received", rp, wp, (wp > 0 ? rp / wp : 0)
    printf "%-32s %14.3f %14.3f %8.2f\n", "ping RTT added vs veth (ms)", rr - vr, wr - vr, (wr - vr > 0 ? (rr - vr) / (wr - vr) : 0)
    printf "(bare veth RTT %.3f ms)\n", vr
}'

# A clean Stop through the protocol before the namespaces go.
kill -TERM $MANAGER
for _ in $(seq 50); do kill -0 $MANAGER 2>/dev/null || break; sleep 0.1; done
grep -q stopped "$WORK/mock-manager.out" || {
    echo "warning: the mock manager did not report a clean Stop:" >&2
    tail -5 "$WORK/mock-manager.out" "$WORK/mock-manager.log" >&2
}
