#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<target>/ from the repository's
real sessions: the protocol.md §12.1 frames (tests/fixtures/spec-frames.json),
the captured streams of tests/fixtures/captures/, the conformance cases and
a recording of one, and the DNS queries and packets of the DP cases.

Re-run after changing a fixture: python3 fuzz/seed_corpus.py [recording.json]
Each file starts with the target's control byte where it has one (see
conformance/src/fuzz_entries/)."""

import glob
import hashlib
import json
import os
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "fuzz", "corpus")


def write(target, data, name):
    path = os.path.join(OUT, target)
    os.makedirs(path, exist_ok=True)
    assert len(data) < 64 * 1024, (target, name)
    digest = hashlib.sha1(data).hexdigest()[:8]
    with open(os.path.join(path, f"{name}-{digest}"), "wb") as f:
        f.write(data)


spec = {k: bytes.fromhex(v) for k, v in json.load(open(os.path.join(ROOT, "tests/fixtures/spec-frames.json"))).items()}
captures = {
    role: open(os.path.join(ROOT, f"tests/fixtures/captures/spec-{role}.bin"), "rb").read()
    for role in ["manager", "tunnel", "client", "service"]
}

# frame_decoder: control byte (chunk-size count, small-cap bit), sizes, stream.
for name, frame in spec.items():
    write("frame_decoder", b"\x00" + frame, name)
write("frame_decoder", b"\x03\x00\x02\x06" + b"".join(spec[k] for k in ["E1", "E2", "E3"]), "E1-E3-chunked")
write("frame_decoder", b"\x10\x08" + spec["E15"], "E15-small-cap")
write("frame_decoder", b"\x00" + b"\x00\x00\x00\x00" + spec["E5"], "empty-frame")
write("frame_decoder", b"\x00" + b"\x01\x00\x00\x01", "over-cap")
write("frame_decoder", b"\x00" + spec["E8"][:-3], "truncated")
for role, stream in captures.items():
    frames = stream[stream.index(b"\n") + 1:]
    write("frame_decoder", b"\x01\x00" + frames, f"capture-{role}")

# handshake: control byte (chunk size), then a header stream.
headers = [
    b"codervpn manager 1.2\n", b"codervpn tunnel 1.2\n", b"codervpn client 1.0\n",
    b"codervpn service 1.1,2.0\n", b"codervpn 1.0 manager\n", b"codervpn manager 1.2\r\n",
    b"codervpn manager 1.2,1.3\n", b"codervpn tunnel 2.0,1.9\n", b"codervpn manager 0.9\n",
    b"codervpn  manager 1.2\n", b"CODERVPN manager 1.2\n", b"codervpn manager 1.2 extra\n",
    b"codervpn manager 01.02,3.18446744073709551616\n", b"codervpn manager \n",
    b"codervpn manager 1.2|1.1,2.3|\n", b"codervpn manager " + b"1.0," * 60 + b"2.0\n",
    b"codervpn tunnel 1.2\n\x00\x00\x00\x06\x0a\x02\x08\x01\x2a\x00",
]
for i, h in enumerate(headers):
    write("handshake", bytes([i * 7 % 256]) + h, f"header{i}")

# speaker_<role>: control byte (bit 0: prepend the peer's header, bit 1:
# make a call), then the peer's stream. The peer of a tunnel is a manager.
peer_of = {"tunnel": "manager", "manager": "tunnel", "client": "service", "service": "client"}
by_role = {
    "manager": ["E1", "E2", "E4", "E8"],
    "tunnel": ["E3", "E5", "E6", "E7", "E9", "E11", "E12", "E13", "E15", "E16"],
    "client": ["E17"],
    "service": ["E18", "E19", "E20", "E21", "E22"],
}
for role, peer in peer_of.items():
    target = f"speaker_{role}"
    write(target, b"\x00" + captures[peer], f"capture-{peer}")
    write(target, b"\x02" + captures[peer], f"capture-{peer}-call")
    write(target, b"\xfe" + captures[peer], f"capture-{peer}-bigwrites")
    frames = [spec[k] for k in by_role[peer] if k in spec]
    for k in by_role[peer]:
        if k in spec:
            write(target, b"\x03" + spec[k], f"{k}")
    write(target, b"\x01" + b"".join(frames), "all-frames")
    write(target, b"\x01" + b"\x00\x00\x00\x00", "empty-frame")
    write(target, b"\x01" + b"\x7f\xff\xff\xff", "over-cap")
    write(target, b"\x00" + f"codervpn {role} 1.2\n".encode(), "wrong-role")
    write(target, b"\x00" + f"codervpn {peer} 2.0\n".encode(), "incompatible")

# tunnel_requests: manager frames after a valid handshake.
manager_frames = captures["manager"][captures["manager"].index(b"\n") + 1:]
write("tunnel_requests", manager_frames, "capture-manager")
for k in ["E1", "E2", "E4", "E8"]:
    write("tunnel_requests", spec[k], k)
write("tunnel_requests", spec["E2"] + spec["E8"] + spec["E2"] + spec["E1"], "peer-update-start-stop")
write("tunnel_requests", spec["E8"] + spec["E8"], "start-twice")
write("tunnel_requests", b"\x00\x00\x00\x02\x0a\x00" + spec["E2"], "one-way-then-request")
write("tunnel_requests", b"\x00\x00\x00\x04\x0a\x02\x08\x05", "armless-request")


# packet and dns: the DP cases' packets, built here with their checksums.
def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data)//2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF or 0xFFFF


def ip6(src, dst, nxt, payload, hop=64):
    return struct.pack("!IHBB", 6 << 28, len(payload), nxt, hop) + src + dst + payload


def pseudo(src, dst, nxt, body):
    return src + dst + struct.pack("!IxxxB", len(body), nxt) + body


def udp(src, dst, sport, dport, data):
    body = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    c = csum(pseudo(src, dst, 17, body))
    return ip6(src, dst, 17, body[:6] + struct.pack("!H", c) + body[8:])


def icmp(src, dst, typ, code, rest):
    body = struct.pack("!BBH", typ, code, 0) + rest
    c = csum(pseudo(src, dst, 58, body))
    return ip6(src, dst, 58, body[:2] + struct.pack("!H", c) + body[4:])


def echo(src, dst, typ, ident, seq, data):
    return icmp(src, dst, typ, 0, struct.pack("!HH", ident, seq) + data)


def tcp_syn(src, dst, sport, dport):
    body = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    c = csum(pseudo(src, dst, 6, body))
    return ip6(src, dst, 6, body[:16] + struct.pack("!H", c) + body[18:])


def addr(text):
    import ipaddress
    return ipaddress.IPv6Address(text).packed


TUN = addr("fd60:627a:a42b:1:2:3:4:5")
AGENT = addr("fd60:627a:a42b:708:90a:b0c:d0e:f10")
TS = addr("fd7a:115c:a1e0:708:90a:b0c:d0e:f10")
DNS = addr("fd60:627a:a42b::53")


def dns_query(ident, name, qtype=28, flags=0x0100, edns=False):
    q = b"".join(bytes([len(l)]) + l.encode() for l in name.strip(".").split(".")) + b"\0"
    out = struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 1 if edns else 0) + q + struct.pack("!HH", qtype, 1)
    if edns:
        out += b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)
    return out


queries = [
    dns_query(1, "agnt.wrk.me.coder."), dns_query(11, "nosuch.wrk.me.coder"), dns_query(12, "dev.coder"),
    dns_query(2, "agnt.wrk.rootbeer.coder"), dns_query(3, "wrk.coder"), dns_query(31, "AGNT.Wrk.ME.coder"),
    dns_query(4, "main.dev.me.coder"), dns_query(5, "gpu.dev.rootbeer.coder."), dns_query(6, "wrk.coder", qtype=1),
    dns_query(7, "wrk.coder", edns=True), dns_query(8, "wrk.coder", flags=0x8180), dns_query(9, "wrk.coder", flags=0x2100),
    dns_query(10, "wrk.coder", qtype=255),
]
for i, q in enumerate(queries):
    write("dns", q, f"query{i}")
write("dns", b"\x00\x01garbage", "garbage")
write("dns", queries[0][:12] + b"\x00", "truncated")

packets = [
    echo(TUN, AGENT, 128, 101, 1, b"dp agnt 101/1"), echo(TUN, TS, 128, 1001, 2, b"dp agnt 1001/2"),
    echo(AGENT, TUN, 129, 101, 1, b"dp agnt 101/1"), echo(TUN, AGENT, 128, 1101, 1, bytes(1232)),
    udp(TUN, AGENT, 4000, 7, b"echo"), udp(TUN, AGENT, 4000, 8, b"spoof"), udp(TUN, AGENT, 4000, 9, b"discard"),
    udp(TUN, AGENT, 4000, 10, b"x"), udp(TUN, DNS, 40053, 53, queries[0]), udp(DNS, TUN, 53, 40053, queries[0]),
    tcp_syn(TUN, AGENT, 40000, 7), tcp_syn(TUN, AGENT, 40000, 22),
    icmp(AGENT, TUN, 2, 0, struct.pack("!I", 1280) + echo(TUN, AGENT, 128, 1, 1, b"x")[:48]),
    bytes.fromhex("4500001c0000400040110000c0a80001c0a8000200070007000800000000"),
    ip6(TUN, AGENT, 0, b"\x11\x00\x01\x04\x00\x00\x00\x00" + udp(TUN, AGENT, 1, 7, b"hbh")[40:]),
    ip6(TUN, AGENT, 44, b"\x11\x00\x00\x01\x00\x00\x00\x01" + b"frag"),
]
for i, p in enumerate(packets):
    write("packet", bytes([i * 37 % 256]) + p, f"packet{i}")
write("packet", b"\xa0" + packets[0][:30], "truncated")

# transcript: the cases (small ones), a recording, matcher pairs.
cases = sorted(glob.glob(os.path.join(ROOT, "conformance/cases/*.json")))
picked = [c for c in cases if os.path.getsize(c) < 8 * 1024]
for path in picked[::4][:30]:
    write("transcript", open(path, "rb").read(), os.path.basename(path)[:-5])
for path in [c for c in cases if os.path.basename(c).startswith("DP-")][:4]:
    write("transcript", open(path, "rb").read(), os.path.basename(path)[:-5])
if len(sys.argv) > 1:
    write("transcript", open(sys.argv[1], "rb").read(), "recording")
pairs = [
    [{"rpc": {"responseTo": "$start"}, "start": {"success": True}}, {"rpc": {"responseTo": "1"}, "start": {"success": True}}],
    [{"upsertedAgents": {"$includes": [{"name": "main", "ipAddrs": ["$main"]}]}},
     {"upsertedAgents": [{"name": "agnt", "ipAddrs": ["fd60::1"]}, {"name": "main", "ipAddrs": ["fd60::2"]}]}],
    [{"start": {"errorMessage": "$prefix:parse url"}}, {"start": {"errorMessage": "parse url \"::\": bad"}}],
    [{"n": "$not:5", "m": None, "k": "$any"}, {"n": 4, "k": [1, 2]}],
    {"literal": [1, "two", {"three": 3.5}], "flag": False},
]
for i, p in enumerate(pairs):
    write("transcript", json.dumps(p).encode(), f"match{i}")

# control_updates: control-plane messages, one per line, as the mock
# control plane sends them (snapshot, upserts, deletions, renames).
def uid(n):
    return f"00000000-0000-4000-8000-{n:012x}"


def ws(n, name, status="running"):
    return {"id": uid(n), "name": name, "status": status}


def agent(n, name, w, key=None):
    a = {"id": uid(n), "name": name, "workspace_id": uid(w)}
    if key is not None:
        a["node"] = {"public_key": key, "endpoint": f"127.0.0.1:{51820 + n}"}
    return a


def update(**fields):
    return {"type": "update", **fields}


KEY = "q0Pfx3sLyDdV8pkDbKZ5oC1aaXDYgUHJq4Ljr8dQHAE="
timelines = {
    "snapshot": [update(snapshot=True, upserted_workspaces=[ws(1, "dev"), ws(2, "Ops", "stopped")],
                        upserted_agents=[agent(11, "main", 1, KEY), agent(21, "db", 2)])],
    "second-agent": [update(snapshot=True, upserted_workspaces=[ws(1, "dev")], upserted_agents=[agent(11, "main", 1, KEY)]),
                     update(upserted_agents=[agent(12, "side", 1)]),
                     update(deleted_agents=[uid(11)])],
    "move-and-delete": [update(snapshot=True, upserted_workspaces=[ws(1, "dev"), ws(2, "web")],
                               upserted_agents=[agent(11, "main", 1), agent(21, "main", 2)]),
                        update(upserted_agents=[agent(11, "main", 2)]),
                        update(deleted_workspaces=[uid(1)], deleted_agents=[uid(21)]),
                        update(snapshot=True)],
    "same-update-delete-and-upsert": [update(upserted_workspaces=[ws(1, "Dev")], upserted_agents=[agent(11, "A", 1)]),
                                      update(deleted_agents=[uid(11)], upserted_agents=[agent(11, "b", 1)])],
    "agent-without-workspace": [update(upserted_agents=[agent(11, "orphan", 9)]),
                                update(upserted_workspaces=[ws(9, "late")])],
    "duplicate-names": [update(snapshot=True, upserted_workspaces=[ws(1, "dev"), ws(2, "DEV")],
                               upserted_agents=[agent(11, "main", 1), agent(21, "main", 2), agent(11, "main", 2)])],
}
for name, lines in timelines.items():
    write("control_updates", "\n".join(json.dumps(m) for m in lines).encode() + b"\n", name)
write("control_updates", b'{"type":"update","snapshot":true}\n{"type":"node"}\nnot json\n', "unknown-and-garbage")
