"""Load for the soak (Tests/Soak/soak.py), run as child processes so that their Python work (protobuf parsing, grpcio's
threads) never holds the orchestrator's GIL while it times requests or reads the agent's log.

Usage: python soak_load.py <watch|churn|hostile> --socket PATH --seconds N [--log FILE]

Every mode writes JSON lines to stdout: `{"event": "ready"}` once it runs, `{"event": "progress", ...counts}` every
PROGRESS_SECONDS, and one `{"event": "done", ...counts}` at the end. It ends by itself after --seconds (or when stdin
reaches EOF, i.e. the orchestrator went away). Every loop is bounded in count and in time; everything talks only to
the agent's Unix socket.

- watch: two long-lived SDS streams for `default` (SotW and Delta) that ACK every response, as Envoy does; one line
  per response: {"event": "push", "api", "t" (time.time() when grpcio handed us the response), "serial"}.
- churn: SDS clients (StreamSecrets / DeltaSecrets / FetchSecrets: open, take one response, close) and Workload API
  clients (py-spiffe X509Source; the raw stub with the `workload.spiffe.io` header), a few per second.
- hostile: the malformed requests of HOSTILE_CASES, in a fixed order, at a steady rate; each request's outcome is
  written to --log (one line each) so that a crash of the agent can be tied to the request that preceded it.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import select
import sys
import threading
import time
from collections import Counter
from typing import Callable

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "Integration"))

import grpc  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402
from envoy.service.secret.v3 import sds_pb2_grpc  # noqa: E402
from spiffe import X509Source  # noqa: E402
from spiffe._proto import workload_pb2, workload_pb2_grpc  # noqa: E402

from hostile_h2 import FETCH_PATH, PREFACE, connect, drain, goaway_in, grpc_headers, h2_client  # noqa: E402
from sds_client import SECRET_TYPE_URL, SecretStream, certs_of, unpack_secrets  # noqa: E402

# One connection per channel. grpcio shares a connection among all channels of a process to the same target (its
# global subchannel pool), so without this every "new" client here would ride one long-lived connection and the
# churn would open and close streams but never connections. Patched process-wide, before any channel exists, so
# that sds_client.SecretStream and py-spiffe's clients get it too.
_plain_insecure_channel = grpc.insecure_channel


def _own_connection_channel(target, options=None, compression=None):
    return _plain_insecure_channel(target, options=[*(options or []), ("grpc.use_local_subchannel_pool", 1)],
                                   compression=compression)


grpc.insecure_channel = _own_connection_channel

PROGRESS_SECONDS = 10.0
SECURITY_HEADER = ("workload.spiffe.io", "true")
CALL_TIMEOUT = 5.0  # any one call of churn or hostile; a hang counts as a failure instead of stalling the loop
SOURCE_TIMEOUT = 10.0  # an X509Source's first SVID

_print_lock = threading.Lock()


class Counts:
    """Counters shared by a mode's threads; `snapshot()` copies them under the lock (a plain Counter copied while
    another thread adds a key can raise "dictionary changed size during iteration")."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: Counter = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def say(**fields) -> None:
    with _print_lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


class Deadline:
    """The run ends at `seconds`, or earlier when stdin reaches EOF (the orchestrator is gone)."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self._stop = threading.Event()
        threading.Thread(target=self._watch_stdin, daemon=True).start()

    def _watch_stdin(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([sys.stdin], [], [], 1.0)
            if ready and not sys.stdin.readline():
                self._stop.set()

    def over(self) -> bool:
        return self._stop.is_set() or time.monotonic() >= self.end

    def pace(self, seconds: float) -> None:
        """Sleep `seconds` to pace a loop (not a wait for anything), cut short at the end of the run."""
        self._stop.wait(max(0.0, min(seconds, self.end - time.monotonic())))


def paced_loop(deadline: Deadline, period: float, body: Callable[[int], None], max_iterations: int) -> int:
    """Runs body(i) every `period` seconds (start to start) until the deadline; returns the iterations run."""
    next_start = time.monotonic()
    for count in range(max_iterations):
        if deadline.over():
            return count
        body(count)
        # After a slow body (a timeout), carry on at the steady rate: no burst to catch up.
        next_start = max(next_start + period, time.monotonic())
        deadline.pace(next_start - time.monotonic())
    return max_iterations


def outcome_of(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return f"status:{error.code().name}"
    return f"error:{type(error).__name__}"


def iterations_for(seconds: float, period: float) -> int:
    return int(seconds / period) + 10


# ------------------------------------------------------------------------------------------------------------------
# watch
# ------------------------------------------------------------------------------------------------------------------


def leaf_serial_of(response) -> str | None:
    secrets = unpack_secrets(response.resources)
    secret = secrets.get("default")
    if secret is None or not secret.HasField("tls_certificate"):
        return None
    return format(certs_of(secret.tls_certificate.certificate_chain)[0].serial_number, "x")


def watch_one(socket_path: str, delta: bool, deadline: Deadline, counts: Counts, answered: threading.Event) -> None:
    """One stream for `default`, ACKing every response; reopened (bounded) if the agent ends it. `answered` is set
    at the first response."""
    api = "delta" if delta else "sotw"
    for _attempt in range(100):
        if deadline.over():
            return
        stream = SecretStream(socket_path, delta=delta)
        try:
            if delta:
                stream.send(resource_names_subscribe=["default"])
            else:
                stream.send(resource_names=["default"])
            counts.add(f"{api}_streams_opened")
            while not deadline.over():
                try:
                    response = stream.recv(timeout=1.0)
                except AssertionError as e:
                    if "no response within" in str(e):
                        continue  # nothing pushed in this second: poll the deadline again
                    raise
                received = time.time()  # first thing: the receipt time is the measurement
                serial = leaf_serial_of(response)
                counts.add(f"{api}_responses")
                say(event="push", api=api, t=received, serial=serial)
                answered.set()
                if delta:
                    stream.send(response_nonce=response.nonce)
                else:
                    stream.send(response_nonce=response.nonce, version_info=response.version_info,
                                resource_names=["default"])
            return
        except AssertionError as e:  # the stream ended or failed: report it, reopen
            counts.add(f"{api}_stream_errors")
            say(event="stream-error", api=api, t=time.time(), error=str(e))
            deadline.pace(0.5)
        finally:
            stream.close()


def watch(args, deadline: Deadline) -> Counts:
    counts = Counts()
    answered = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=watch_one, args=(args.socket, delta, deadline, counts, answered[delta]),
                                daemon=True)
               for delta in (False, True)]
    for t in threads:
        t.start()
    # Ready once both streams hold the current certificate: pushes after this are rotations.
    for event in answered:
        if not event.wait(CALL_TIMEOUT * 4):
            raise SystemExit(f"watch: no first response on both streams within {CALL_TIMEOUT * 4:.0f} s "
                             f"(sotw, delta: {[e.is_set() for e in answered]})")
    say(event="ready")
    progress_loop(deadline, counts)
    for t in threads:
        t.join(timeout=CALL_TIMEOUT)
    return counts


# ------------------------------------------------------------------------------------------------------------------
# churn
# ------------------------------------------------------------------------------------------------------------------

SDS_CHURN_PERIOD = 0.25  # s: 4 SDS clients a second
WORKLOAD_CHURN_PERIOD = 0.5  # s: 2 Workload API clients a second


def sds_client_once(socket_path: str, index: int) -> str:
    kind = ("sotw", "delta", "fetch")[index % 3]
    name = ("default", "ROOTCA")[index % 2]
    if kind == "fetch":
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            response = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).FetchSecrets(
                discovery_pb2.DiscoveryRequest(resource_names=[name], type_url=SECRET_TYPE_URL), timeout=CALL_TIMEOUT)
        ok = name in unpack_secrets(response.resources)
        return f"{kind}:{'ok' if ok else 'wrong'}"
    with SecretStream(socket_path, delta=kind == "delta") as stream:
        if kind == "delta":
            stream.send(resource_names_subscribe=[name])
        else:
            stream.send(resource_names=[name])
        response = stream.recv(timeout=CALL_TIMEOUT)
    ok = name in unpack_secrets(response.resources)
    return f"{kind}:{'ok' if ok else 'wrong'}"


def workload_client_once(socket_path: str, index: int) -> str:
    if index % 2 == 0:
        source = X509Source(socket_path=f"unix:{socket_path}", timeout_in_seconds=SOURCE_TIMEOUT)
        try:
            ok = source.get_x509_context().default_svid is not None
        finally:
            source.close()
        return f"x509source:{'ok' if ok else 'wrong'}"
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        responses = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=[SECURITY_HEADER], timeout=CALL_TIMEOUT)
        try:
            ok = bool(next(responses).svids)
        finally:
            responses.cancel()
    return f"stub:{'ok' if ok else 'wrong'}"


def churn_loop(client: Callable[[str, int], str], socket_path: str, period: float, deadline: Deadline,
               counts: Counts, prefix: str, seconds: float) -> None:
    def body(index: int) -> None:
        counts.add(f"{prefix}_sent")
        try:
            result = client(socket_path, index)
        except Exception as e:  # noqa: BLE001 - any failure is counted, the churn goes on
            result = f"{prefix}:{outcome_of(e) if isinstance(e, grpc.RpcError) else type(e).__name__}"
            counts.add(f"{prefix}_failed")
        else:
            if not result.endswith(":ok"):
                counts.add(f"{prefix}_failed")
        counts.add(f"{prefix}.{result}")

    paced_loop(deadline, period, body, iterations_for(seconds, period))


def churn(args, deadline: Deadline) -> Counts:
    counts = Counts()
    threads = [
        threading.Thread(target=churn_loop, args=(sds_client_once, args.socket, SDS_CHURN_PERIOD, deadline, counts,
                                                  "sds", args.seconds), daemon=True),
        threading.Thread(target=churn_loop, args=(workload_client_once, args.socket, WORKLOAD_CHURN_PERIOD, deadline,
                                                  counts, "workload", args.seconds), daemon=True),
    ]
    for t in threads:
        t.start()
    say(event="ready")
    progress_loop(deadline, counts)
    for t in threads:
        t.join(timeout=SOURCE_TIMEOUT + CALL_TIMEOUT)
    return counts


# ------------------------------------------------------------------------------------------------------------------
# hostile: a fixed list of malformed requests
# ------------------------------------------------------------------------------------------------------------------

HOSTILE_PERIOD = 0.2  # s: 5 malformed requests a second
CLUSTER_TYPE_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
# Fixed "garbage": the same bytes every time, so a crash it causes reproduces. Not a valid frame header: a length
# of 0xfffefd (over any SETTINGS_MAX_FRAME_SIZE), an unknown frame type, then filler.
GARBAGE = bytes([0xFF, 0xFE, 0xFD, 0xEE, 0x00, 0x7F, 0xFF, 0xFF, 0xFF]) + bytes(range(256)) * 2


def stream_answer(stream: SecretStream, timeout: float = 2.0) -> str:
    """What a stream does next: a response, its end with a status, or nothing within `timeout`."""
    try:
        response = stream.recv(timeout=timeout)
    except AssertionError as e:
        text = str(e)
        if "no response within" in text:
            return "no-answer"
        if text.startswith("stream failed: "):
            return "status:" + text.split()[2].removeprefix("StatusCode.")
        return "ended"
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse) and response.removed_resources:
        return "removed"
    return "response"


def delta_wrong_type_url(socket_path: str) -> str:
    with SecretStream(socket_path, delta=True) as stream:
        stream.send(type_url=CLUSTER_TYPE_URL, resource_names_subscribe=["default", "ROOTCA"])
        return stream_answer(stream)


def delta_empty_type_url(socket_path: str) -> str:
    with SecretStream(socket_path, delta=True) as stream:
        stream.send(type_url="", resource_names_subscribe=["default"])
        return stream_answer(stream)


def sotw_type_url_changes(socket_path: str) -> str:
    with SecretStream(socket_path, delta=False) as stream:
        stream.send(resource_names=["default"])
        first = stream.recv(timeout=CALL_TIMEOUT)
        stream.send(type_url=CLUSTER_TYPE_URL, resource_names=["default"], response_nonce=first.nonce,
                    version_info=first.version_info)
        return stream_answer(stream)


def unknown_method(socket_path: str) -> str:
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        call = channel.unary_unary("/envoy.service.secret.v3.SecretDiscoveryService/NoSuchMethod")
        try:
            call(b"\x0a\x07default", timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            return outcome_of(e)
    return "answered"


def recv_some(sock, timeout: float) -> tuple[bytes, bool]:
    """What the peer sends next (as soon as anything arrives, unlike hostile_h2.drain, which reads for the whole
    window), and whether it closed."""
    ready, _, _ = select.select([sock], [], [], max(0.0, timeout))
    if not ready:
        return b"", False
    try:
        data = sock.recv(65536)
    except OSError:
        return b"", True
    return data, not data


def raw_fetch(socket_path: str, body: bytes, end_stream: bool = True) -> str:
    """One FetchSecrets over hand-made HTTP/2 whose DATA is `body` verbatim; the grpc-status it ends with."""
    sock = connect(socket_path, timeout=CALL_TIMEOUT)
    try:
        conn = h2_client()
        conn.send_headers(1, grpc_headers(FETCH_PATH))
        conn.send_data(1, body, end_stream=end_stream)
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            data, closed = recv_some(sock, deadline - time.monotonic())
            try:
                events = conn.receive_data(data) if data else []
            except h2.exceptions.ProtocolError:
                return "protocol-error"
            for event in events:
                if isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)):
                    status = dict(event.headers).get("grpc-status")
                    if status is not None:
                        return f"grpc-status:{status}"
                if isinstance(event, h2.events.StreamReset):
                    return f"reset:{event.error_code}"
                if isinstance(event, h2.events.ConnectionTerminated):
                    return f"goaway:{event.error_code}"
            pending = conn.data_to_send()
            if pending:
                sock.sendall(pending)
            if closed:
                return "closed"
        return "no-answer"
    finally:
        sock.close()


def truncated_grpc_frame(socket_path: str) -> str:
    # The length prefix promises 100 bytes, 10 follow, then END_STREAM: a message cut short.
    return raw_fetch(socket_path, b"\x00" + (100).to_bytes(4, "big") + b"\x0a\x07default"[:10])


def two_megabyte_message(socket_path: str) -> str:
    # 2 MB in one resource name: over --max-request-bytes (1 MiB by default).
    request = discovery_pb2.DiscoveryRequest(resource_names=["x" * (2 << 20)], type_url=SECRET_TYPE_URL)
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        try:
            sds_pb2_grpc.SecretDiscoveryServiceStub(channel).FetchSecrets(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            return outcome_of(e)
    return "answered"


def nul_in_resource_name(socket_path: str) -> str:
    name = "def\x00ault"
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        try:
            sds_pb2_grpc.SecretDiscoveryServiceStub(channel).FetchSecrets(
                discovery_pb2.DiscoveryRequest(resource_names=[name], type_url=SECRET_TYPE_URL), timeout=CALL_TIMEOUT)
            fetch = "answered"
        except grpc.RpcError as e:
            fetch = outcome_of(e)
    with SecretStream(socket_path, delta=True) as stream:
        stream.send(resource_names_subscribe=[name])
        delta = stream_answer(stream)
    return f"fetch={fetch},delta={delta}"


def workload_api_without_header(socket_path: str) -> str:
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        responses = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), timeout=CALL_TIMEOUT)
        try:
            next(responses)
        except grpc.RpcError as e:
            return outcome_of(e)
        finally:
            responses.cancel()
    return "answered"


def garbage_after_preface(socket_path: str) -> str:
    sock = connect(socket_path, timeout=CALL_TIMEOUT)
    try:
        sock.sendall(PREFACE + GARBAGE)
        received, closed = drain(sock, 3.0)
        code = goaway_in(received)
        return f"goaway:{code}" if code is not None else ("closed" if closed else "no-answer")
    except OSError as e:
        return f"error:{type(e).__name__}"
    finally:
        sock.close()


# The fixed list, sent round-robin. Names are what the JSON and the hostile log say.
HOSTILE_CASES: list[tuple[str, Callable[[str], str]]] = [
    ("delta-wrong-type-url", delta_wrong_type_url),
    ("delta-empty-type-url", delta_empty_type_url),
    ("sotw-type-url-changes", sotw_type_url_changes),
    ("unknown-method", unknown_method),
    ("truncated-grpc-frame", truncated_grpc_frame),
    ("two-megabyte-message", two_megabyte_message),
    ("nul-in-resource-name", nul_in_resource_name),
    ("workload-api-without-header", workload_api_without_header),
    ("garbage-after-preface", garbage_after_preface),
]


def hostile(args, deadline: Deadline) -> Counts:
    counts = Counts()
    log = open(args.log, "a", buffering=1) if args.log else open(os.devnull, "w")

    def body(index: int) -> None:
        name, case = HOSTILE_CASES[index % len(HOSTILE_CASES)]
        started = time.time()
        # Written before the request goes out: if the agent dies, the last line names what it was sent.
        log.write(json.dumps({"t": started, "case": name, "phase": "send"}) + "\n")
        try:
            result = case(args.socket)
        except Exception as e:  # noqa: BLE001 - the agent's answer to a hostile request may be anything
            result = outcome_of(e)
        log.write(json.dumps({"t": time.time(), "case": name, "result": result}) + "\n")
        counts.add("sent")
        counts.add(f"{name}.{result}")

    say(event="ready")
    worker = threading.Thread(
        target=paced_loop, args=(deadline, HOSTILE_PERIOD, body, iterations_for(args.seconds, HOSTILE_PERIOD)),
        daemon=True)
    worker.start()
    progress_loop(deadline, counts)
    worker.join(timeout=CALL_TIMEOUT * 3)
    log.close()
    return counts


# ------------------------------------------------------------------------------------------------------------------


def progress_loop(deadline: Deadline, counts: Counts) -> None:
    while not deadline.over():
        deadline.pace(PROGRESS_SECONDS)
        say(event="progress", counts=counts.snapshot())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["watch", "churn", "hostile"])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--log", default="")
    args = parser.parse_args()
    deadline = Deadline(args.seconds)
    counts = {"watch": watch, "churn": churn, "hostile": hostile}[args.mode](args, deadline)
    say(event="done", counts=counts.snapshot())


if __name__ == "__main__":
    main()
