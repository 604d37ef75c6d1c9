"""Run a real Envoy from a bootstrap and look at it through its admin API.

Everything binds 127.0.0.1 with port 0: Envoy picks free ports, we read them back (admin address file, /listeners),
so parallel runs never race for a port. Waits are polls with a deadline; a timeout fails with Envoy's log tail.
"""
from __future__ import annotations

import http.client
import json
import os
import pathlib
import re
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field

from cryptography import x509

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "Examples"

# Envoy takes ~0.5-1 s to start here; these bound the waits, they are not sleeps.
START_TIMEOUT = 30.0
SECRET_TIMEOUT = 45.0  # covers Envoy's xDS reconnect backoff after an SDS server outage
POLL_INTERVAL = 0.05


class HarnessError(AssertionError):
    pass


def wait_for(predicate, timeout: float, what: str, on_timeout=lambda: ""):
    """Poll `predicate` until it returns a truthy value (returned) or the deadline passes (HarnessError)."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except HarnessError:
            raise
        except Exception as e:  # noqa: BLE001 - a poll may hit a half-started peer; keep the last error
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}{detail}\n{on_timeout()}")
        time.sleep(POLL_INTERVAL)


def substitute(template: str, values: dict[str, str]) -> str:
    """`${NAME}` -> value (what `envsubst` does); fails on a placeholder left unfilled."""
    text = template
    for key, value in values.items():
        text = text.replace("${" + key + "}", str(value))
    left = sorted(set(re.findall(r"\$\{([A-Z_]+)\}", text)))
    if left:
        raise HarnessError(f"placeholders left unfilled: {left}")
    return text


def example(style: str, api_type: str, role: str) -> pathlib.Path:
    """Examples/<style>-<sotw|delta>/<role>-envoy.yaml."""
    mode = {"GRPC": "sotw", "DELTA_GRPC": "delta"}[api_type]
    return EXAMPLES / f"{style}-{mode}" / f"{role}-envoy.yaml"


# ------------------------------------------------------------------------------------------------------------------
# Admin API views
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertView:
    """One certificate as /certs shows it."""

    serial: str  # lowercase hex, no leading zeros
    uri_sans: tuple[str, ...]
    days_until_expiration: int


@dataclass(frozen=True)
class TlsContextView:
    ca_certs: tuple[CertView, ...]
    cert_chain: tuple[CertView, ...]


def _norm_serial(serial: str) -> str:
    return serial.lower().lstrip("0") or "0"


def _cert_view(entry: dict) -> CertView:
    sans = tuple(s["uri"] for s in entry.get("subject_alt_names", []) if "uri" in s)
    return CertView(_norm_serial(entry["serial_number"]), sans, int(entry.get("days_until_expiration", 0)))


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lowercase names
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


def serial_of_pem(pem: str | bytes) -> str:
    if isinstance(pem, str):
        pem = pem.encode()
    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")


@dataclass
class Envoy:
    """One Envoy process. Use `start()` then the views; `stop()` always (the fixture does it)."""

    envoy_bin: str
    name: str
    bootstrap: str  # YAML, placeholders already filled
    workdir: pathlib.Path
    process: subprocess.Popen | None = None
    admin_port: int = 0
    log_path: pathlib.Path = field(init=False)

    def __post_init__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.config_path = self.workdir / f"{self.name}.yaml"
        self.admin_path = self.workdir / f"{self.name}.admin"

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def start(self, wait_ready: bool = True) -> "Envoy":
        self.config_path.write_text(self.bootstrap)
        self.admin_path.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                self.envoy_bin, "-c", str(self.config_path),
                # No shared memory between instances: several Envoys run side by side.
                "--disable-hot-restart", "--use-dynamic-base-id",
                "--admin-address-path", str(self.admin_path),
                "--concurrency", "1",
                "-l", os.environ.get("ENVOY_LOG_LEVEL", "info"),
                # SDS and TLS decisions are what we test: log them in detail.
                "--component-log-level", "config:debug,secret:debug,connection:debug",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        self.admin_port = wait_for(self._admin_port, START_TIMEOUT, f"{self.name} admin address", self.log_tail)
        if wait_ready:
            self.wait_ready()
        return self

    def _admin_port(self) -> int:
        self.check_alive()
        text = self.admin_path.read_text().strip() if self.admin_path.exists() else ""
        return int(text.rsplit(":", 1)[1]) if text else 0

    def wait_ready(self, timeout: float = SECRET_TIMEOUT) -> None:
        """Envoy is LIVE: its init (which waits for every SDS secret, initial_fetch_timeout 0s) is done."""
        wait_for(lambda: self.admin_get("/ready")[0] == 200, timeout, f"{self.name} /ready", self.diagnostics)

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise HarnessError(f"envoy {self.name} exited with {self.process.returncode}\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"({self.log_path} missing)"
        return f"--- last {lines} lines of {self.log_path} ---\n" + "\n".join(text[-lines:])

    def diagnostics(self) -> str:
        parts = []
        try:
            parts.append("sds stats: " + json.dumps(self.sds_stats(), sort_keys=True))
        except Exception as e:  # noqa: BLE001
            parts.append(f"sds stats unavailable: {e!r}")
        parts.append(self.log_tail())
        return "\n".join(parts)

    # ---- admin API ----------------------------------------------------------------------------------------

    def admin_get(self, path: str) -> tuple[int, bytes]:
        self.check_alive()
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def admin_json(self, path: str):
        status, body = self.admin_get(path)
        if status != 200:
            raise HarnessError(f"{self.name} GET {path}: {status} {body[:200]!r}")
        return json.loads(body)

    def listener_port(self, name: str) -> int:
        """The port Envoy bound for listener `name` (the bootstrap says port 0)."""
        def port():
            for entry in self.admin_json("/listeners?format=json").get("listener_statuses", []):
                if entry["name"] == name:
                    return int(entry["local_address"]["socket_address"].get("port_value", 0))
            return 0
        return wait_for(port, START_TIMEOUT, f"{self.name} listener {name}", self.diagnostics)

    def certs(self) -> list[TlsContextView]:
        """/certs: one entry per TLS context that holds certificates."""
        views = []
        for ctx in self.admin_json("/certs").get("certificates", []):
            views.append(
                TlsContextView(
                    tuple(_cert_view(c) for c in ctx.get("ca_cert", [])),
                    tuple(_cert_view(c) for c in ctx.get("cert_chain", [])),
                )
            )
        return views

    def leaf_serials(self) -> set[str]:
        """Serials of the leaf certificates of every TLS context (one per context that has a chain)."""
        return {ctx.cert_chain[0].serial for ctx in self.certs() if ctx.cert_chain}

    def leaf_uri_sans(self) -> set[str]:
        return {san for ctx in self.certs() if ctx.cert_chain for san in ctx.cert_chain[0].uri_sans}

    def ca_serials(self) -> set[str]:
        return {c.serial for ctx in self.certs() for c in ctx.ca_certs}

    def wait_leaf_serial(self, serial: str, timeout: float = SECRET_TIMEOUT) -> None:
        """Every TLS context of this Envoy holds the leaf `serial` (e.g. after a rotation)."""
        serial = _norm_serial(serial)
        wait_for(
            lambda: self.leaf_serials() == {serial}, timeout,
            f"{self.name} /certs to show leaf serial {serial} (now {self._safe(self.leaf_serials)})",
            self.diagnostics,
        )

    @staticmethod
    def _safe(fn):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            return repr(e)

    def stats(self, filter_regex: str) -> dict[str, int]:
        data = self.admin_json("/stats?format=json&filter=" + urllib.parse.quote(filter_regex))
        return {s["name"]: s["value"] for s in data.get("stats", []) if "value" in s}

    def sds_stats(self) -> dict[str, int]:
        """Counters of Envoy's SDS subscriptions: sds.<secret name>.update_success / update_rejected / ..."""
        return self.stats(r"^sds\.")

    def sds_counter(self, suffix: str) -> dict[str, int]:
        """{secret stat prefix: value} of one SDS counter, e.g. sds_counter("update_rejected")."""
        return {k[len("sds."):-len(suffix) - 1]: v for k, v in self.sds_stats().items() if k.endswith("." + suffix)}

    # ---- traffic ------------------------------------------------------------------------------------------

    def get(self, port: int, path: str = "/", headers: dict[str, str] | None = None) -> Response:
        """One HTTP/1.1 request on a fresh connection to 127.0.0.1:port."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()


# ------------------------------------------------------------------------------------------------------------------
# A client Envoy and a server Envoy speaking mTLS with SVIDs from SDS
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What one request through client Envoy -> server Envoy showed each side."""

    status: int
    server_saw_peer_id: str  # the client's SPIFFE ID, as the server Envoy saw it
    server_saw_peer_serial: str  # serial of the client's certificate in that handshake
    server_own_id: str
    client_saw_peer_id: str  # the server's SPIFFE ID, as the client Envoy saw it
    client_saw_peer_serial: str  # serial of the server's certificate in that handshake
    body: bytes


@dataclass
class MtlsPair:
    """Server-side Envoy (mTLS listener) and client-side Envoy (HTTP in, mTLS out), each with its own SDS socket."""

    server: Envoy
    client: Envoy
    client_port: int

    def request(self, path: str = "/") -> Seen:
        r = self.client.get(self.client_port, path)
        cert = urllib.parse.unquote(r.header("x-client-saw-peer-cert"))
        return Seen(
            status=r.status,
            server_saw_peer_id=r.header("x-server-saw-peer-id"),
            server_saw_peer_serial=_norm_serial(r.header("x-server-saw-peer-serial") or "0"),
            server_own_id=r.header("x-server-own-id"),
            client_saw_peer_id=r.header("x-client-saw-peer-id"),
            client_saw_peer_serial=serial_of_pem(cert) if cert else "",
            body=r.body,
        )

    def envoys(self) -> tuple[Envoy, Envoy]:
        return self.server, self.client

    def stop(self) -> None:
        self.client.stop()
        self.server.stop()


def start_mtls_pair(
    envoy_bin: str,
    workdir: pathlib.Path,
    style: str,
    api_type: str,
    trust_domain: str,
    server_socket: str,
    server_id: str,
    client_socket: str,
    client_id: str,
    stack: list,
    client_expects: str | None = None,
    client_trust_domain: str | None = None,
    client_bootstrap_edit=lambda text: text,
) -> MtlsPair:
    """Start the server Envoy, read its mTLS port, start the client Envoy pointed at it; both wait for SDS.

    Each Envoy is appended to `stack` as soon as it runs, so the caller's teardown stops it even if a wait fails.
    `client_expects`: the SPIFFE ID the client Envoy demands of the server (default `server_id`; another one makes
    every handshake fail, for tests of the SAN check). `client_bootstrap_edit`: a change to the client's bootstrap
    (e.g. node metadata). `client_trust_domain`: the client's own trust domain, if it
    is not the server's (default `trust_domain`).
    """
    server = Envoy(envoy_bin, "server-envoy", substitute(example(style, api_type, "server").read_text(), {
        "SDS_SOCKET": server_socket, "ADMIN_PORT": 0, "LISTENER_PORT": 0, "PEER_SPIFFE_ID": client_id,
        "SPIFFE_ID": server_id, "TRUST_DOMAIN": trust_domain,
    }), workdir)
    stack.append(server)
    server.start(wait_ready=False)
    # Static listeners bind before SDS arrives, so the port is known while Envoy still waits for its secrets.
    server_port = server.listener_port("mtls_in")
    client = Envoy(envoy_bin, "client-envoy", client_bootstrap_edit(substitute(example(style, api_type, "client").read_text(), {
        "SDS_SOCKET": client_socket, "ADMIN_PORT": 0, "LISTENER_PORT": 0, "UPSTREAM_PORT": server_port,
        "PEER_SPIFFE_ID": client_expects or server_id, "SPIFFE_ID": client_id,
        "TRUST_DOMAIN": client_trust_domain or trust_domain,
    })), workdir)
    stack.append(client)
    client.start(wait_ready=False)
    server.wait_ready()
    client.wait_ready()
    client_port = client.listener_port("http_in")
    return MtlsPair(server, client, client_port)
