#!/usr/bin/env python3
"""An independent manager, written without this repository's code: it
launches `codervpn tunnel` the way Coder Desktop launches `coder vpn-daemon
run` (two inherited pipe descriptors, protocol.md §2.2), speaks the protocol
with hand-rolled protobuf, and checks Start, the full state, a timeline diff
and a clean Stop. Usage: independent_manager.py CODERVPN_BIN CODER_URL TOKEN
"""
import os
import subprocess
import sys


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, payload):  # length-delimited field
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def vfield(num, value):  # varint field
    return varint(num << 3) + varint(value)


def parse(buf):
    """Top-level fields of a protobuf message: {number: [values]}."""
    fields, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(buf, i)
        elif wire == 2:
            size, i = read_varint(buf, i)
            value, i = buf[i:i + size], i + size
        else:
            raise ValueError(f"unexpected wire type {wire}")
        fields.setdefault(num, []).append(value)
    return fields


def read_varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def read_exact(r, n):
    data = b""
    while len(data) < n:
        chunk = r.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(r):
    prefix = read_exact(r, 4)
    if prefix is None:
        return None
    return read_exact(r, int.from_bytes(prefix, "big"))


def rpc(msg_id=0, response_to=0):
    body = (vfield(1, msg_id) if msg_id else b"") + (vfield(2, response_to) if response_to else b"")
    return field(1, body)


def send(w, payload):
    w.write(len(payload).to_bytes(4, "big") + payload)


def main():
    binary, url, token = sys.argv[1:4]
    m2t_r, m2t_w = os.pipe()
    t2m_r, t2m_w = os.pipe()
    tunnel = subprocess.Popen(
        [binary, "tunnel", "--rpc-read-fd", str(m2t_r), "--rpc-write-fd", str(t2m_w), "--log-level", "error"],
        pass_fds=(m2t_r, t2m_w),
    )
    os.close(m2t_r)  # protocol.md §2.1 item 5
    os.close(t2m_w)
    w = os.fdopen(m2t_w, "wb", buffering=0)
    r = os.fdopen(t2m_r, "rb", buffering=0)

    w.write(b"codervpn manager 1.2\n")
    header = b""
    while not header.endswith(b"\n"):
        header += r.read(1)
    assert header == b"codervpn tunnel 1.2\n", header

    start = field(2, url.encode()) + field(3, token.encode())
    send(w, rpc(msg_id=1) + field(4, start))

    def answer_until(want):
        """Reads frames, answering NetworkSettings requests, until `want`."""
        diffs = []
        while True:
            frame = read_frame(r)
            assert frame is not None, "EOF while waiting"
            msg = parse(frame)
            ids = parse(msg[1][0]) if 1 in msg else {}
            if 4 in msg and 1 in ids:  # NetworkSettingsRequest
                send(w, rpc(response_to=ids[1][0]) + field(3, vfield(1, 1)))
                continue
            if 3 in msg and 1 not in msg:  # one-way PeerUpdate
                diffs.append(parse(msg[3][0]))
            found = want(msg, ids, diffs)
            if found is not None:
                return found

    start_reply = answer_until(lambda m, ids, d: parse(m[5][0]) if 5 in m and ids.get(2) == [1] else None)
    assert start_reply.get(1) == [1], f"Start failed: {start_reply}"

    send(w, rpc(msg_id=2) + field(2, b""))
    state = answer_until(lambda m, ids, d: parse(m[3][0]) if 3 in m and ids.get(2) == [2] else None)
    workspaces, agents = len(state.get(1, [])), len(state.get(2, []))
    assert (workspaces, agents) == (3, 4), (workspaces, agents)
    print(f"full state: {workspaces} workspaces, {agents} agents")

    def timeline_agent(m, ids, diffs):
        for diff in diffs:
            for agent in diff.get(2, []):
                if parse(agent)[2] == [b"timeline-agent"]:
                    return agent
        return None

    answer_until(timeline_agent)
    print("timeline diff: timeline-agent upserted")

    send(w, rpc(msg_id=3) + field(5, b""))
    stop = answer_until(lambda m, ids, d: parse(m[6][0]) if 6 in m and ids.get(2) == [3] else None)
    assert stop.get(1) == [1], f"Stop failed: {stop}"
    assert read_frame(r) is None, "a frame after StopResponse"
    print("stop: StopResponse was the last frame, then EOF")
    w.close()
    assert tunnel.wait(timeout=10) == 0
    print("tunnel exited 0")


if __name__ == "__main__":
    main()
