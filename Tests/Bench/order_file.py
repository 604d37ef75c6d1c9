#!/usr/bin/env python3
"""`make order-file`: records which functions a working agent runs and writes the link order that packs them.

Why: the release agent is one static binary with ~11 MB of machine code. The kernel maps file pages 64 KiB at a time
around each fault, so code run once at start-up and code run on every request, scattered over the binary, made
~8.8 MB of `.text` resident in an idle agent that executes a small fraction of it. Linking every function the agent
runs next to each other (lld `--symbol-ordering-file`, with Swift and C code in per-function sections) keeps the
resident text close to what runs.

How: the release agent (debug info stripped, as valgrind 3.19 cannot read Swift's DWARF 5) runs under
`valgrind --tool=callgrind` first as one Envoy's agent (two held streams, a `/metrics` scrape, a rotation, on the
local CA), then once per issuer (local CA, istiod against the fake istiod, a SPIRE-like Workload API upstream against
its fake) while `hot_path_workload.run` drives every served API and a rotation. Every function with a cost in any run
is written, run by run and in first-run order within one, to Sources/sds-agent/symbol-order.txt (one symbol a line):
the Envoy-only agent's code first and together.
A stale file still links (unknown symbols are ignored); regenerate it after large changes and compare `make bench`.
"""
from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Integration"))
sys.path.insert(0, str(ROOT / "Tests" / "Bench"))

import hot_path_workload  # noqa: E402
from fake_istiod import ISTIOD_NAME, FakeIstiod  # noqa: E402
from workload_api_server import WorkloadAPIServer  # noqa: E402

AGENT = ROOT / ".build" / "release" / "sds-agent"
BENCH_CLIENT = ROOT / ".build" / "release" / "sds-bench"
OUT = ROOT / "Sources" / "sds-agent" / "symbol-order.txt"
TRUST_DOMAIN = "example.org"
SPIFFE_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/web"
FN = re.compile(r"^c?fn=\((\d+)\)(?: (.*))?$")  # a function with a cost, or one called


def executed_functions(callgrind_out: Path) -> list[str]:
    """Names of the functions that ran in a callgrind profile, in the order the profile first names them."""
    names: dict[str, str] = {}
    order: dict[str, None] = {}
    for line in callgrind_out.read_text(errors="replace").splitlines():
        match = FN.match(line)
        if not match:
            continue
        ident, name = match.groups()
        if name:
            names[ident] = name
        name = names.get(ident)
        if name:
            name = re.sub(r"'[0-9]+$", "", name)  # callgrind's recursion-depth suffix
        if name:
            order.setdefault(name)
    return list(order)


GLIBC_VARIANT = re.compile(r"^(__[a-z0-9]+)_(?:sse2|ssse3|sse4_1|sse4_2|avx|avx2|evex|evex512|avx512)")


def with_cpu_variants(functions: list[str], definitions: collections.Counter) -> list[str]:
    """`functions` with, after each of glibc's CPU-specific string functions (`__memchr_avx2`), its siblings
    (`__memchr_evex`, `__memchr_sse2`, ...): valgrind's CPU picks one, the machine the agent runs on may pick another."""
    out: list[str] = []
    for function in functions:
        out.append(function)
        match = GLIBC_VARIANT.match(function)
        if match:
            prefix = match.group(1) + "_"
            out.extend(sorted(d for d in definitions if d.startswith(prefix) and d not in out))
    return list(dict.fromkeys(out))


def wait_for_socket(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the agent exited ({process.returncode}) before creating {path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no socket at {path} within {timeout} s")
        time.sleep(0.05)


def profile(label: str, workdir: Path, binary: Path, extra: list[str], rotate_with=None, jwt=True,
            every_api=True) -> list[str]:
    """The functions the agent runs, in first-run order, while a load client holds an Envoy's two streams and then
    (`every_api`) `hot_path_workload` drives every served API; without it, `/metrics` is scraped once and one
    rotation is pushed to the held streams (what `make bench`'s idle figure measures)."""
    socket_path = workdir / f"{label}.sock"
    out = workdir / f"{label}.callgrind"
    with socket_bound_port() as status_port:
        pass
    argv = ["valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={out}", str(binary), "run",
            "--socket", str(socket_path), "--state-dir", str(workdir / f"{label}-state"), "--trust-domain",
            TRUST_DOMAIN, "--status-addr", f"127.0.0.1:{status_port}", *extra]
    log_path = workdir / f"{label}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_for_socket(socket_path, process, 120)
        rotate = rotate_with or (lambda: os.kill(process.pid, signal.SIGHUP))
        # Our own HTTP/2 client too (`make bench`'s load client, ACKing like Envoy), beside grpcio's.
        holder = subprocess.Popen([str(BENCH_CLIENT), "hold", "--socket", str(socket_path), "--streams", "2",
                                   "--connections", "1", "--names", "default,ROOTCA", "--timeout", "120"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if '"ready"' not in (holder.stdout.readline() or ""):
                raise RuntimeError(f"{label}: sds-bench hold did not get its secrets")
            if every_api:
                hot_path_workload.run(str(socket_path), status_port, rotate, jwt=jwt)
            else:
                rotate()
                # The rotation is over once the status listener counts it (its push to the held streams is part of
                # the same event).
                metric = 'sds_agent_rotations_total{reason="signal"} 1'
                deadline = time.monotonic() + 120
                while metric not in urllib.request.urlopen(
                        f"http://127.0.0.1:{status_port}/metrics", timeout=60).read().decode():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{label}: no rotation counted within 120 s")
                    time.sleep(0.1)
        finally:
            holder.stdin.write("quit\n")
            holder.stdin.close()
            holder.wait(timeout=60)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    if not out.exists():
        raise RuntimeError(f"{label}: no profile; see {log_path}")
    functions = executed_functions(out)
    print(f"# {label}: {len(functions)} functions", file=sys.stderr)
    return functions


class socket_bound_port:
    """A free loopback TCP port (bound, then released for the agent)."""

    def __enter__(self) -> int:
        import socket
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return self._socket.getsockname()[1]

    def __exit__(self, *exc):
        self._socket.close()


def main() -> None:
    for binary in (AGENT, BENCH_CLIENT):
        if not binary.exists():
            sys.exit(f"{binary} is missing: run `make order-file` (it builds the release binaries)")
    with tempfile.TemporaryDirectory(prefix="sds-order-", dir="/tmp") as tmp:
        workdir = Path(tmp)
        binary = workdir / "sds-agent"
        subprocess.run(["objcopy", "--strip-debug", str(AGENT), str(binary)], check=True)
        ordered: list[str] = []

        def add(functions: list[str]) -> None:
            seen = set(ordered)
            ordered.extend(f for f in functions if f not in seen)

        # What an agent serving one Envoy runs (start-up, its two streams, a scrape, a rotation) is placed first and
        # together: it is what stays resident in most agents, and what `make bench`'s idle figure measures. After
        # it, run by run, every other API of each issuer. Interleaved in one run's order, the idle figure moved by
        # up to 160 kB between two recordings of the same code (64 KiB fault-around blocks holding code it never
        # runs). (An istiod Envoy-only run placed second made the all-APIs figure 160 kB larger, the istiod idle one
        # no smaller.)
        add(profile("envoy-like", workdir, binary, [], every_api=False))
        add(profile("local-ca", workdir, binary, []))
        istiod = FakeIstiod(workdir, TRUST_DOMAIN).start()
        try:
            token = workdir / "token"
            token.write_text(istiod.token_for(SPIFFE_ID))
            add(profile("istiod", workdir, binary, [
                "--spiffe-id", SPIFFE_ID, "--issuer", "istiod", "--ca-addr", istiod.address, "--ca-root-cert",
                str(istiod.root_cert_path), "--ca-server-name", ISTIOD_NAME, "--token-file", str(token)], jwt=False))
        finally:
            istiod.stop()

        upstream = WorkloadAPIServer(str(workdir / "upstream.sock"), SPIFFE_ID).start()
        try:
            add(profile("workload-api", workdir, binary, [
                "--spiffe-id", SPIFFE_ID, "--issuer", "workload-api", "--upstream-socket",
                f"unix://{upstream.socket_path}"], rotate_with=upstream.rotate))
        finally:
            upstream.stop()

    # Only what the linker can place: names defined in the binary. A name defined in several objects (a local helper
    # such as `objectdestroyTm`) moves every section that holds one; that is harmless, as a page is resident only
    # when code on it (or within the kernel's fault-around window of it) runs, wherever the linker puts it.
    definitions = collections.Counter(subprocess.run(
        ["nm", "--defined-only", "--format=just-symbols", str(AGENT)], capture_output=True, text=True,
        check=True).stdout.split())
    placed = [f for f in with_cpu_variants(ordered, definitions) if definitions[f] > 0]
    OUT.write_text("".join(f + "\n" for f in placed))
    print(f"wrote {OUT.relative_to(ROOT)}: {len(placed)} of {len(ordered)} executed functions", file=sys.stderr)


if __name__ == "__main__":
    main()
