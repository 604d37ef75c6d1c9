"""Measures how long sds-agent's event loop goes without answering: HTTP/2 PINGs over its SDS socket, back to back.

The agent answers a PING inside nghttp2 on its one event-loop thread, so a PING's round trip is bounded below by any
stall of that loop (work that blocks it: RSA key generation would be ~200 ms for 2048 bits). The probe's own jitter
(Python, a shared machine) is part of each figure: it is an upper bound of the loop's stall, not the stall itself.
"""
from __future__ import annotations

import socket
import struct
import threading
import time

import h2.config
import h2.connection
import h2.events


class LoopProbe:
    """PINGs the agent on `socket_path` in a thread until `stop()`; `rtts` holds every round trip in seconds."""

    def __init__(self, socket_path, interval: float = 0.0005):
        self.socket_path, self.interval = str(socket_path), interval
        self.rtts: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: Exception | None = None

    def __enter__(self) -> "LoopProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def mark(self) -> int:
        """The index of the next measurement (to split the series into phases)."""
        return len(self.rtts)

    def _run(self) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(self.socket_path)
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                s.sendall(conn.data_to_send())
                counter = 0
                while not self._stop.is_set():
                    counter += 1
                    conn.ping(struct.pack(">Q", counter))
                    started = time.perf_counter()
                    s.sendall(conn.data_to_send())
                    acked = False
                    while not acked:
                        data = s.recv(65536)
                        if not data:
                            raise ConnectionError("the agent closed the probe's connection")
                        for event in conn.receive_data(data):
                            if isinstance(event, h2.events.PingAckReceived) and \
                                    struct.unpack(">Q", event.ping_data)[0] == counter:
                                acked = True
                        pending = conn.data_to_send()
                        if pending:
                            s.sendall(pending)
                    self.rtts.append(time.perf_counter() - started)
                    time.sleep(self.interval)
        except Exception as e:  # noqa: BLE001 - reported to the caller through .error
            self.error = e


class ProcessLoopProbe:
    """A LoopProbe in a process of its own: PING round trips measured free of the caller's own Python work (a bench
    polling the agent over gRPC and parsing certificates holds the interpreter lock for milliseconds, which a probe
    thread in the same process would count as the agent's stall). Same interface: `mark()`, `rtts` after `stop()`."""

    def __init__(self, socket_path, interval: float = 0.0005):
        import multiprocessing
        context = multiprocessing.get_context("spawn")
        self._control, child = context.Pipe()
        self._process = context.Process(target=_probe_process, args=(str(socket_path), interval, child), daemon=True)
        self.rtts: list[float] = []
        self.error: Exception | None = None

    def __enter__(self) -> "ProcessLoopProbe":
        self._process.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def count(self) -> int:
        """How many round trips were measured so far."""
        self._control.send("count")
        return self._control.recv()

    def mark(self) -> int:
        return self.count()

    def stop(self) -> None:
        if not self._process.is_alive():
            return
        self._control.send("stop")
        self.rtts, error = self._control.recv()
        self.error = RuntimeError(error) if error else None
        self._process.join(timeout=10)


def _probe_process(socket_path: str, interval: float, control) -> None:
    probe = LoopProbe(socket_path, interval)
    probe._thread.start()
    while True:
        command = control.recv()
        if command == "count":
            control.send(len(probe.rtts))
        elif command == "stop":
            probe.stop()
            control.send((probe.rtts, repr(probe.error) if probe.error else None))
            return
