"""Hostile HTTP/2 peers for test_abuse_inbound.py, run as a separate process so the test process stays free to time
a well-behaved client meanwhile (a CPU-bound flood in the same interpreter would hold the GIL and skew it).

Usage: python hostile_h2.py <case> --socket PATH [options]. Every case writes JSON lines to stdout: "ready" when the
hostile state is in place, then a final "done" line; cases that hold their state wait for a line on stdin (or EOF)
before letting go. Every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from envoy.service.discovery.v3 import discovery_pb2

STREAM_PATH = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
FETCH_PATH = "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets"
SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def say(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def wait_for_stdin(timeout: float) -> None:
    select.select([sys.stdin], [], [], timeout)


def grpc_headers(path: str = STREAM_PATH) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "sds-grpc"),
            ("content-type", "application/grpc"), ("te", "trailers")]


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def h2_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    return conn


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def goaway_in(data: bytes) -> int | None:
    """The error code of the first GOAWAY frame in `data` (whole frames from the start), if any."""
    offset = 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset:offset + 3], "big")
        if data[offset + 3] == 0x7 and offset + 9 + 8 <= len(data):
            return int.from_bytes(data[offset + 13:offset + 17], "big")
        offset += 9 + length
    return None


def drain(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the peer sends within `seconds`, and whether it closed (EOF or reset)."""
    received = b""
    deadline = time.monotonic() + seconds
    sock.setblocking(False)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                chunk = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
        return received, False
    finally:
        sock.setblocking(True)


# ---------------------------------------------------------------------------------------------------------------------


def hold_silent(args) -> None:
    """Opens `count` connections that never send a byte; closes them all when told."""
    socks = []
    for _ in range(args.count):
        socks.append(connect(args.socket))
    say(event="ready", opened=len(socks))
    wait_for_stdin(args.hold)
    for sock in socks:
        sock.close()
    say(event="done")


def stalled_preface(args) -> None:
    """Opens `count` connections that send half the client preface and stall. Reports how many the agent closed at
    once (over its connection cap) and how many it closed later (preface timeout)."""
    socks = []
    opened_at = time.monotonic()
    for _ in range(args.count):
        sock = connect(args.socket)
        try:
            sock.sendall(PREFACE[:12])
        except OSError:
            pass  # already closed by the agent: counted below
        socks.append(sock)
    open_socks = list(socks)

    def poll_closed(seconds: float) -> int:
        nonlocal open_socks
        deadline = time.monotonic() + seconds
        while open_socks and time.monotonic() < deadline:
            ready, _, _ = select.select(open_socks, [], [], max(0.0, min(0.2, deadline - time.monotonic())))
            for sock in ready:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    open_socks.remove(sock)
        return len(socks) - len(open_socks)

    closed_at_once = poll_closed(1.0)
    say(event="ready", opened=len(socks), closed_at_once=closed_at_once)
    closed_total = poll_closed(args.hold)
    say(event="done", opened=len(socks), closed_at_once=closed_at_once, closed_total=closed_total,
        seconds=round(time.monotonic() - opened_at, 2))
    for sock in socks:
        sock.close()


def reset_flood(args) -> None:
    """Opens and resets `streams` streams on one connection, as fast as it can, until done or the agent says GOAWAY."""
    sock = connect(args.socket)
    conn = h2_client()
    sock.sendall(conn.data_to_send())
    say(event="ready")
    sent = 0
    closed = False
    received = b""  # everything the agent sent, parsed for GOAWAY at the end
    deadline = time.monotonic() + args.seconds
    stream_id = 1
    try:
        while sent < args.streams and time.monotonic() < deadline:
            for _ in range(100):
                conn.send_headers(stream_id, grpc_headers())
                conn.reset_stream(stream_id)
                stream_id += 2
                sent += 1
            sock.sendall(conn.data_to_send())
            data, closed = drain(sock, 0)
            received += data
            if closed or goaway_in(received) is not None:
                break
    except (OSError, h2.exceptions.ProtocolError):
        pass  # the agent closed while we were writing: what it said before is still readable
    if not closed:
        data, closed = drain(sock, 2.0)
        received += data
    say(event="done", sent=sent, goaway=goaway_in(received), closed=closed)
    sock.close()


def continuation_flood(args) -> None:
    """HEADERS without END_HEADERS, then CONTINUATION frames without end, until the agent closes (or the bound)."""
    sock = connect(args.socket)
    sock.sendall(PREFACE + frame(0x4, 0, 0, b""))
    # :method POST, :scheme http, :path / from the static table; then never END_HEADERS.
    sock.sendall(frame(0x1, 0, 1, bytes([0x83, 0x86, 0x84])))
    say(event="ready")
    block = frame(0x9, 0, 1, bytes([0x00, 3]) + b"x-a" + bytes([100]) + b"v" * 100)
    sent = 0
    closed = False
    received = b""
    deadline = time.monotonic() + args.seconds
    while sent < args.frames and time.monotonic() < deadline:
        try:
            sock.sendall(block * 64)
        except OSError:
            break  # the agent closed while we were writing: what it said before is still readable
        sent += 64
        data, closed = drain(sock, 0)
        received += data
        if closed:
            break
    if not closed:
        data, closed = drain(sock, 2.0)
        received += data
    code = goaway_in(received)
    say(event="done", frames=sent, closed=closed, goaway=code)
    sock.close()


def prefix_hold(args) -> None:
    """`connections` × `streams` StreamSecrets calls, each sending only a gRPC prefix announcing `length` bytes."""
    conns = []
    prefix = b"\x00" + args.length.to_bytes(4, "big")
    for _ in range(args.connections):
        sock = connect(args.socket)
        conn = h2_client()
        for index in range(args.streams):
            stream_id = 1 + 2 * index
            conn.send_headers(stream_id, grpc_headers())
            conn.send_data(stream_id, prefix)
        sock.sendall(conn.data_to_send())
        conns.append((sock, conn))
    # Every stream must still be open (held, not answered): read what the agent sent and look for stream ends.
    answered = 0
    for sock, conn in conns:
        data, closed = drain(sock, 0.5)
        if closed:
            answered += args.streams
            continue
        for event in conn.receive_data(data) if data else []:
            if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                answered += 1
        sock.sendall(conn.data_to_send())
    say(event="ready", streams=args.connections * args.streams, answered=answered)
    wait_for_stdin(args.hold)
    for sock, _ in conns:
        sock.close()
    say(event="done")


def partial_flood(args) -> None:
    """`streams` calls on one connection, each announcing `length` bytes and sending `send` of them, never the rest;
    honours flow control (the agent grants more as it processes). Reports how the agent answered each stream."""
    sock = connect(args.socket)
    conn = h2_client()
    sock.sendall(conn.data_to_send())
    prefix = b"\x00" + args.length.to_bytes(4, "big")
    remaining = {}
    for index in range(args.streams):
        stream_id = 1 + 2 * index
        conn.send_headers(stream_id, grpc_headers())
        remaining[stream_id] = prefix + b"\x01" * args.send
    statuses: dict[int, str] = {}
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        progressed = False
        for stream_id, data in list(remaining.items()):
            if stream_id in statuses:
                del remaining[stream_id]
                continue
            try:
                window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                del remaining[stream_id]
                continue
            if window <= 0:
                continue
            chunk, rest = data[:window], data[window:]
            conn.send_data(stream_id, chunk)
            progressed = True
            if rest:
                remaining[stream_id] = rest
            else:
                del remaining[stream_id]
        sock.sendall(conn.data_to_send())
        data, closed = drain(sock, 0 if progressed else 0.2)
        for event in conn.receive_data(data) if data else []:
            if isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)):
                status = dict(event.headers).get("grpc-status")
                if status is not None:
                    statuses[event.stream_id] = status
        sock.sendall(conn.data_to_send())
        if closed or (not remaining and not progressed):
            break
    say(event="ready", sent_streams=args.streams, statuses=sorted(statuses.values()))
    wait_for_stdin(args.hold)
    sock.close()
    say(event="done")


def fetch_request() -> bytes:
    body = discovery_pb2.DiscoveryRequest(resource_names=["ROOTCA"], type_url=SECRET_TYPE_URL).SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def one_fetch(path: str, request: bytes) -> bool:
    sock = connect(path)
    try:
        conn = h2_client()
        conn.send_headers(1, grpc_headers(FETCH_PATH))
        conn.send_data(1, request, end_stream=True)
        sock.sendall(conn.data_to_send())
        status = None
        for _ in range(100):
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.TrailersReceived):
                    status = dict(event.headers).get("grpc-status")
                elif isinstance(event, h2.events.ResponseReceived) and "grpc-status" in dict(event.headers):
                    status = dict(event.headers)["grpc-status"]
            sock.sendall(conn.data_to_send())
            if status is not None:
                break
        return status == "0"
    finally:
        sock.close()


def cycles(args) -> None:
    """`count` connect / FetchSecrets / close cycles; pauses after `pause_at` cycles until told to go on."""
    request = fetch_request()
    ok = 0
    started = time.monotonic()
    for index in range(args.count):
        if index == args.pause_at:
            say(event="ready", cycles=index, ok=ok)
            sys.stdin.readline()
        if time.monotonic() - started > args.seconds:
            break
        ok += one_fetch(args.socket, request)
    say(event="done", cycles=args.count, ok=ok, seconds=round(time.monotonic() - started, 2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=["hold-silent", "stalled-preface", "reset-flood", "continuation-flood",
                                         "prefix-hold", "partial-flood", "cycles"])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--length", type=int, default=4 << 20)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--send", type=int, default=0)
    parser.add_argument("--pause-at", type=int, default=-1)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hold", type=float, default=60.0)
    args = parser.parse_args()
    {
        "hold-silent": hold_silent, "stalled-preface": stalled_preface, "reset-flood": reset_flood,
        "continuation-flood": continuation_flood, "prefix-hold": prefix_hold, "partial-flood": partial_flood,
        "cycles": cycles,
    }[args.case](args)


if __name__ == "__main__":
    main()
