"""Identities as files, against the release agent and real Envoys: `--issuer files`, `--crl-file`, `--output-dir`.

    client Envoy --mTLS--> server Envoy          each Envoy has its own sds-agent (`--issuer files`), each agent
         |                      |                serves what one kubelet-style volume holds; both identities come
    client agent           server agent          from one test CA (spiffe_test_ca.SpiffeRoot), which the test owns
         |                      |
    client volume          server volume  (+ a CRL volume for the server agent in the CRL test)

Volumes are laid out as the kubelet's AtomicWriter keeps a projected volume (and cert-manager's csi-lib its CSI
volumes): a timestamped directory per version, `..data` -> that directory, the visible names -> `..data/<name>`;
every update is a new version directory and a rename of `..data_tmp` over `..data` (`KubeletVolume`).

Two layouts (`layout` fixture):
- pod-certificates: a Kubernetes Pod Certificates credential bundle (ONE file: PKCS#8 key first, then the chain) and
  a ClusterTrustBundle projection (PEM, two roots); no `--spiffe-id`: the agent takes the leaf's.
- csi-driver-spiffe: `tls.crt`, `tls.key` (SEC1, `EC PRIVATE KEY`), `ca.crt`; with `--spiffe-id`.

`--output-dir` runs the local CA at `--svid-ttl 10s` with `output_files_reader.py` as the application that
`--output-signal` tells about each update.
"""
from __future__ import annotations

import base64
import datetime
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from envoy_harness import Envoy, MtlsPair, start_mtls_pair, wait_for
from sds_client import pem_of
from sds_servers import TRUST_DOMAIN, ProcessServer, fetch_secrets, fetch_when_served, leaf_serial
from spiffe_test_ca import SpiffeRoot, now_utc, organization, pem_cert

HERE = pathlib.Path(__file__).resolve().parent
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/server"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/client"
MINUTE = datetime.timedelta(minutes=1)
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)

# A new set of files must reach Envoy's /certs this fast (a poll of /certs every 50 ms).
SWAP_DEADLINE = 5.0
# Bounds the wait for the agent to log its verdict on a file it must refuse (an inotify event and a read: ~ms).
VERDICT_TIMEOUT = 10.0


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# ------------------------------------------------------------------------------------------------------------------
# A volume the way the kubelet writes it
# ------------------------------------------------------------------------------------------------------------------


class KubeletVolume:
    """`path/..<timestamp>.<random>/<files>`, `path/..data -> ..<timestamp>.<random>`, `path/<name> -> ..data/<name>`.

    `write()` is one AtomicWriter update: the new version directory is filled, `..data_tmp` is pointed at it and
    renamed over `..data` (the one atomic step), missing visible links are created, the old version is removed.
    """

    def __init__(self, path: pathlib.Path):
        self.path = path
        path.mkdir()
        self.version: str | None = None

    def write(self, files: dict[str, bytes], modes: dict[str, int] | None = None) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("..%Y_%m_%d_%H_%M_%S.")
        version = pathlib.Path(tempfile.mkdtemp(prefix=stamp, dir=self.path))
        for name, data in files.items():
            (version / name).write_bytes(data)
            (version / name).chmod((modes or {}).get(name, 0o644))
        version.chmod(0o755)
        tmp = self.path / "..data_tmp"
        os.symlink(version.name, tmp)
        os.rename(tmp, self.path / "..data")
        for name in files:
            link = self.path / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        if self.version is not None:
            shutil.rmtree(self.path / self.version)
        self.version = version.name

    def __truediv__(self, name: str) -> pathlib.Path:
        return self.path / name


# ------------------------------------------------------------------------------------------------------------------
# Credential file layouts and the workloads that use them
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    name: str
    api_type: str  # the Envoy pair's SDS api_type (both ask for `default` and `ROOTCA`)
    svid_name: str  # the file --svid-file names: the chain, or the credential bundle (key first, then the chain)
    key_name: str | None  # the file --svid-key-file names; None: the key is in the svid file
    bundle_name: str
    key_format: serialization.PrivateFormat
    id_from_leaf: bool  # no --spiffe-id/--trust-domain: the agent serves the identity the leaf names
    extra_root: bool  # the roots file holds a second root (a ClusterTrustBundle projection of two bundles)

    def files(self, chain_pem: bytes, key_pem: bytes, roots_pem: bytes) -> dict[str, bytes]:
        if self.key_name is None:
            return {self.svid_name: key_pem + chain_pem, self.bundle_name: roots_pem}
        return {self.svid_name: chain_pem, self.key_name: key_pem, self.bundle_name: roots_pem}

    def modes(self) -> dict[str, int]:
        return {self.key_name or self.svid_name: 0o600}

    def agent_args(self, volume: KubeletVolume, spiffe_id: str) -> list[str]:
        args = ["--issuer", "files", "--svid-file", str(volume / self.svid_name),
                "--bundle-file", str(volume / self.bundle_name)]
        if self.key_name is not None:
            args += ["--svid-key-file", str(volume / self.key_name)]
        if not self.id_from_leaf:
            args += ["--trust-domain", TRUST_DOMAIN, "--spiffe-id", spiffe_id]
        return args


POD_CERTIFICATES = Layout("pod-certificates", "GRPC", "credentialbundle.pem", None, "trust-bundle.pem",
                          serialization.PrivateFormat.PKCS8, id_from_leaf=True, extra_root=True)
CSI_DRIVER_SPIFFE = Layout("csi-driver-spiffe", "DELTA_GRPC", "tls.crt", "tls.key", "ca.crt",
                           serialization.PrivateFormat.TraditionalOpenSSL, id_from_leaf=False, extra_root=False)


class FilesAgent(ProcessServer):
    """sds-agent with exactly the flags given (ProcessServer always adds --trust-domain and --spiffe-id)."""

    def command(self) -> list[str]:
        return [*self.argv0, "run", "--socket", str(self.socket_path), "--state-dir", str(self.state_dir),
                "--log-level", "debug", *self.extra_args]

    def log_lines(self, *fragments: str) -> list[str]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if all(f in line for f in fragments)]


def start_agent(factory, label: str, spiffe_id: str, args: list[str]) -> FilesAgent:
    """An agent the factory stops at teardown (its own empty state dir: `--issuer files` keeps no state)."""
    state = factory.workdir / f"{label}.state"
    state.mkdir(mode=0o700)
    agent = FilesAgent(factory.argv0, factory.workdir / f"{label}.sock", state, spiffe_id,
                       factory.workdir / f"{label}.log", args)
    factory.servers.append(agent)
    return agent.start()


class FilesWorkload:
    """One identity kept in a kubelet volume by the test (in the kubelet's or the CSI driver's role), its agent and,
    once the pair runs, its Envoy."""

    def __init__(self, label: str, spiffe_id: str, ca: SpiffeRoot, roots_pem: bytes, layout: Layout,
                 workdir: pathlib.Path):
        self.label, self.spiffe_id, self.ca, self.roots_pem, self.layout = label, spiffe_id, ca, roots_pem, layout
        self.volume = KubeletVolume(workdir / f"{label}-identity")
        self.agent: FilesAgent | None = None
        self.envoy: Envoy | None = None
        self.serial = ""  # the serial of the last good set written

    def issue(self, not_after: datetime.datetime | None = None, backdate: datetime.timedelta = MINUTE):
        return self.ca.issue(self.spiffe_id, organization(self.label), HOUR, backdate, not_after=not_after)

    def key_pem(self, key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, self.layout.key_format, serialization.NoEncryption())

    def write(self, cert, key, truncate: bool = False) -> None:
        files = self.layout.files(pem_cert(cert), self.key_pem(key), self.roots_pem)
        if truncate:
            data = files[self.layout.svid_name]
            files[self.layout.svid_name] = data[: len(data) // 2]
        self.volume.write(files, self.layout.modes())

    def write_good(self) -> str:
        cert, key = self.issue()
        self.write(cert, key)
        self.serial = serial_hex(cert)
        return self.serial

    def write_bad(self, kind: str) -> str:
        """An inconsistent set whose leaf is new (so taking it would show); returns that leaf's serial."""
        if kind == "mismatched key":
            cert, _ = self.issue()
            _, other_key = self.issue()
            self.write(cert, other_key)
        elif kind == "expired certificate":
            cert, key = self.issue(not_after=now_utc() - HOUR, backdate=2 * HOUR)
            self.write(cert, key)
        elif kind == "truncated file":
            cert, key = self.issue()
            self.write(cert, key, truncate=True)
        else:
            raise ValueError(kind)
        return serial_hex(cert)

    def start_agent(self, factory, extra: list[str] | None = None) -> FilesAgent:
        self.agent = start_agent(factory, f"{self.label}-agent", self.spiffe_id,
                                 self.layout.agent_args(self.volume, self.spiffe_id) + (extra or []))
        return self.agent

    def served_serial(self) -> str:
        return leaf_serial(fetch_secrets(self.agent.socket_path, ["default"])["default"])

    def refusals(self) -> list[str]:
        """The agent's log lines refusing the credential files (one per distinct reason)."""
        return self.agent.log_lines("issuance failed", "credential files:")

    def wait_envoy_serial(self, serial: str, since: float) -> float:
        """Envoy's /certs shows `serial` in every TLS context within SWAP_DEADLINE of `since`; returns the delay."""
        left = SWAP_DEADLINE - (time.monotonic() - since)
        wait_for(lambda: self.envoy.leaf_serials() == {serial}, max(left, 0.0),
                 f"{self.envoy.name} /certs to show {serial} within {SWAP_DEADLINE:.0f}s of the swap "
                 f"(now {self.envoy.leaf_serials()}, agent serves {self.served_serial()})",
                 lambda: self.envoy.diagnostics() + "\n" + self.agent.log_tail())
        return time.monotonic() - since


@dataclass
class FilesTopology:
    pair: MtlsPair
    server: FilesWorkload
    client: FilesWorkload
    root_serials: set[str]
    layout: Layout

    def workloads(self) -> tuple[FilesWorkload, FilesWorkload]:
        return self.server, self.client


class Traffic:
    """Requests through the pair in a thread, one after another, each on a new connection (the client bootstrap's
    max_requests_per_connection: 1), so each is a new mTLS handshake with whatever Envoy holds at that moment.
    A failure is anything but 200 with both peers' SPIFFE IDs."""

    def __init__(self, pair: MtlsPair):
        self.pair = pair
        self.ok = 0
        self.failures: list[str] = []
        self.seen: list[tuple[str, str]] = []  # (server's serial as the client saw it, client's as the server saw)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                seen = self.pair.request()
                if seen.status == 200 and (seen.server_saw_peer_id, seen.client_saw_peer_id) == (CLIENT_ID, SERVER_ID):
                    self.ok += 1
                    self.seen.append((seen.client_saw_peer_serial, seen.server_saw_peer_serial))
                else:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {seen!r}"[:400])
            except Exception as e:  # noqa: BLE001 - a refused or reset connection is a failure to count
                self.failures.append(f"{time.strftime('%H:%M:%S')} {e!r}")
            self._stop.wait(0.02)  # pacing (~40 handshakes/s), not a wait for anything

    def wait_handshake(self, server_serial: str, client_serial: str, what: str, count: int = 1) -> None:
        """`count` requests after now complete with these two certificates (new handshakes use them)."""
        start = len(self.seen)
        wait_for(lambda: self.seen[start:].count((server_serial, client_serial)) >= count, SWAP_DEADLINE,
                 f"{count} handshakes with server {server_serial} / client {client_serial} ({what}); last seen "
                 f"{self.seen[-1:]}, failures {self.failures[-3:]}")

    def __enter__(self) -> "Traffic":
        self._thread.start()
        wait_for(lambda: self.ok >= 3 or self.failures, 30, "the first requests")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=20)


def make_roots(layout: Layout) -> tuple[SpiffeRoot, bytes, set[str]]:
    """The test CA, the roots file's bytes and the serials of the roots in it."""
    ca = SpiffeRoot.create(TRUST_DOMAIN, organization("identity files test CA"), DAY, MINUTE)
    roots = [ca.cert]
    if layout.extra_root:
        # A ClusterTrustBundle projection concatenates every bundle its selector matches: here also a previous root.
        roots.append(SpiffeRoot.create(TRUST_DOMAIN, organization("previous root"), DAY, MINUTE).cert)
    return ca, b"".join(pem_cert(c) for c in roots), {serial_hex(c) for c in roots}


def start_files_pair(agent_factory, envoy_bin, short_dir, layout: Layout, stack: list[Envoy]) -> FilesTopology:
    ca, roots_pem, root_serials = make_roots(layout)
    server = FilesWorkload("server", SERVER_ID, ca, roots_pem, layout, short_dir)
    client = FilesWorkload("client", CLIENT_ID, ca, roots_pem, layout, short_dir)
    for w in (server, client):
        w.write_good()
        w.start_agent(agent_factory)
    pair = start_mtls_pair(envoy_bin, short_dir, "istio", layout.api_type, TRUST_DOMAIN,
                           str(server.agent.socket_path), SERVER_ID, str(client.agent.socket_path), CLIENT_ID, stack)
    server.envoy, client.envoy = pair.server, pair.client
    return FilesTopology(pair, server, client, root_serials, layout)


@pytest.fixture(params=[POD_CERTIFICATES, CSI_DRIVER_SPIFFE], ids=lambda layout: layout.name)
def layout(request) -> Layout:
    return request.param


@pytest.fixture
def files_pair(agent_factory, envoy_bin, short_dir, layout):
    stack: list[Envoy] = []
    try:
        yield start_files_pair(agent_factory, envoy_bin, short_dir, layout, stack)
    finally:
        for envoy in reversed(stack):
            envoy.stop()


def assert_sds_healthy(envoy: Envoy) -> None:
    success = envoy.sds_counter("update_success")
    rejected = envoy.sds_counter("update_rejected")
    assert sorted(success) == ["ROOTCA", "default"] and all(v >= 1 for v in success.values()), success
    assert all(v == 0 for v in rejected.values()), f"{envoy.name} rejected an SDS update: {rejected}"


# ------------------------------------------------------------------------------------------------------------------
# 1-3: --issuer files under real Envoys
# ------------------------------------------------------------------------------------------------------------------


def test_envoys_do_mtls_on_identities_from_kubelet_volumes(files_pair):
    """Both Envoys hold what the files hold (leaf, SPIFFE ID, every root of the roots file) and see each other's
    SPIFFE ID and certificate in the handshake."""
    t = files_pair
    for w in t.workloads():
        assert (w.volume / "..data").is_symlink() and (w.volume / t.layout.svid_name).is_symlink()
        assert w.served_serial() == w.serial
        assert w.envoy.leaf_serials() == {w.serial}
        assert w.envoy.leaf_uri_sans() == {w.spiffe_id}
        assert w.envoy.ca_serials() == t.root_serials, "ROOTCA is the roots file, every root of it"
        if t.layout.id_from_leaf:
            # No --spiffe-id: the identity is the leaf's URI SAN, and the log says so.
            assert w.agent.log_lines("identity taken from the credential files", f"spiffe_id={w.spiffe_id}")
    seen = t.pair.request()
    assert seen.status == 200, seen
    assert (seen.server_saw_peer_id, seen.client_saw_peer_id, seen.server_own_id) == (CLIENT_ID, SERVER_ID,
                                                                                       SERVER_ID)
    assert (seen.client_saw_peer_serial, seen.server_saw_peer_serial) == (t.server.serial, t.client.serial)
    for w in t.workloads():
        assert_sds_healthy(w.envoy)
        assert w.refusals() == [], "a consistent set was refused"


def test_kubelet_swap_to_a_new_certificate_reaches_envoy_with_traffic_flowing(files_pair):
    """A `..data` swap to a new certificate (new key, new serial) on both sides: each Envoy's /certs shows it within
    5 s, the next handshakes use it, and no request fails meanwhile."""
    t = files_pair
    pids = [w.envoy.process.pid for w in t.workloads()]
    with Traffic(t.pair) as traffic:
        traffic.wait_handshake(t.server.serial, t.client.serial, "before the swap", count=5)
        old = {w.label: w.serial for w in t.workloads()}
        swapped = {}
        for w in t.workloads():
            w.write_good()
            swapped[w.label] = time.monotonic()
        delays = {w.label: w.wait_envoy_serial(w.serial, swapped[w.label]) for w in t.workloads()}
        traffic.wait_handshake(t.server.serial, t.client.serial, "after the swap", count=5)
    print(f"\n{t.layout.name}: /certs showed the new serial {delays['server']:.2f}s (server) and "
          f"{delays['client']:.2f}s (client) after the swap; {traffic.ok} requests, {len(traffic.failures)} failed")
    assert traffic.failures == [], traffic.failures[:5]
    assert all(old[w.label] != w.serial for w in t.workloads())
    assert [w.envoy.process.pid for w in t.workloads()] == pids, "Envoy restarted"
    for w in t.workloads():
        assert_sds_healthy(w.envoy)


BAD_SETS = {
    # kind: a fragment of the refusal's reason
    "mismatched key": "does not match",
    "expired certificate": "expired",
    "truncated file": "no complete certificate chain",
}


# Absence cannot be awaited: the agent reacts to a file event within milliseconds, a repeated line would be here by
# then.
REPEAT_WINDOW = 0.5


def refusal_repeats(workloads) -> list[str]:
    """A set that stays broken is one log line, not one per file event. Once the clock is in a later second (a reason
    that names the time would differ then), the version directory's mtime is touched (IN_ATTRIB in the watched
    directory: the agent reads the same set again); no new refusal line may follow within REPEAT_WINDOW."""
    boundary = int(time.time()) + 1
    wait_for(lambda: time.time() >= boundary + 0.05, 2, "the next second of the clock")
    before = {w.label: len(w.refusals()) for w in workloads}
    for w in workloads:
        os.utime(w.volume / w.volume.version)
    deadline = time.monotonic() + REPEAT_WINDOW
    repeated: list[str] = []
    while time.monotonic() < deadline and not repeated:
        repeated = [line for w in workloads for line in w.refusals()[before[w.label]:]]
        time.sleep(0.05)
    return repeated


def test_inconsistent_sets_are_held_back_and_a_good_set_is_taken_again(files_pair):
    """A mismatched key, an expired certificate and a truncated file, each written with a `..data` swap on both
    sides: the agent refuses each with one log line (also when the directory sees another event a second later) and
    keeps serving the previous identity (Envoy's /certs keeps the previous serial, new handshakes use it, no request
    fails); then a good set is taken within 5 s."""
    t = files_pair
    kept = {w.label: w.serial for w in t.workloads()}
    reasons: dict[str, str] = {}
    repeats: dict[str, list[str]] = {}
    with Traffic(t.pair) as traffic:
        for kind, fragment in BAD_SETS.items():
            before = {w.label: len(w.refusals()) for w in t.workloads()}
            refused = {w.label: w.write_bad(kind) for w in t.workloads()}
            for w in t.workloads():
                # The verdict is awaited (the agent logs it), so what follows checks the agent's decision.
                lines = wait_for(lambda w=w: [x for x in w.refusals()[before[w.label]:] if fragment in x],
                                 VERDICT_TIMEOUT, f"{w.label} agent to refuse the {kind}", w.agent.log_tail)
                reasons[f"{w.label}: {kind}"] = lines[0]
                w.agent.check_alive()
                assert w.served_serial() == kept[w.label] != refused[w.label]
                assert w.envoy.leaf_serials() == {kept[w.label]}, f"{w.envoy.name} after the {kind}"
            traffic.wait_handshake(kept["server"], kept["client"], f"after the {kind}", count=5)
            repeats[kind] = refusal_repeats(t.workloads())
        swapped = {}
        for w in t.workloads():
            w.write_good()
            swapped[w.label] = time.monotonic()
        delays = {w.label: w.wait_envoy_serial(w.serial, swapped[w.label]) for w in t.workloads()}
        traffic.wait_handshake(t.server.serial, t.client.serial, "the good set after the refusals", count=5)
    print(f"\n{t.layout.name}: good set taken after {delays['server']:.2f}s / {delays['client']:.2f}s; "
          f"{traffic.ok} requests, {len(traffic.failures)} failed; refusals:")
    for what, line in reasons.items():
        print(f"  {what}: {line[:220]}")
    assert traffic.failures == [], traffic.failures[:5]
    repeats = {kind: lines for kind, lines in repeats.items() if lines}
    assert repeats == {}, "logged again after a file event that changed nothing (the set was still the same): " + \
        json.dumps(repeats, indent=1)
    for w in t.workloads():
        lines = w.refusals()
        per_kind = {kind: [x for x in lines if fragment in x] for kind, fragment in BAD_SETS.items()}
        assert all(len(v) == 1 for v in per_kind.values()) and len(lines) == len(BAD_SETS), \
            f"{w.label}: one log line per refused set, none for the good ones: " + json.dumps(per_kind, indent=1)
        assert_sds_healthy(w.envoy)


# ------------------------------------------------------------------------------------------------------------------
# 5: --crl-file
# ------------------------------------------------------------------------------------------------------------------


def make_crl(signer: SpiffeRoot, issuer: x509.Name, revoked: list[int], this_update: datetime.datetime,
             next_update: datetime.datetime, number: int) -> bytes:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer)
               .last_update(this_update).next_update(next_update)
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
                              critical=False))
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update).build())
    return builder.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def served_crls(agent: FilesAgent) -> dict[str, tuple[int, bool]]:
    """{validation context name: (CRL number of the CRL it carries, only_verify_leaf_cert_crl)}."""
    names = ["ROOTCA", f"spiffe://{TRUST_DOMAIN}"]
    out = {}
    for name, secret in fetch_secrets(agent.socket_path, names).items():
        context = secret.validation_context
        pem = pem_of(context.crl)
        number = x509.load_pem_x509_crl(pem).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number \
            if pem else 0
        out[name] = (number, context.only_verify_leaf_cert_crl)
    return out


def test_crl_file_refuses_a_revoked_client_until_a_new_crl_and_keeps_the_last_good_one(
        agent_factory, envoy_bin, short_dir):
    """The server's agent serves a CRL (a kubelet volume, as Istio mounts its CRL ConfigMap) that revokes the
    client's certificate: the server Envoy refuses the client's handshakes. A CRL signed by another CA (same issuer
    name, other key) and an expired one are refused by the agent, which keeps serving the revoking CRL (Envoy still
    refuses the client). A current CRL without the client's serial reaches Envoy, and the very next request succeeds:
    no restart of anything."""
    layout = POD_CERTIFICATES
    ca, roots_pem, _ = make_roots(layout)
    crl_volume = KubeletVolume(short_dir / "crl")
    t0 = now_utc()
    # The client's serial is not known before its set is written: write the identities first, then the CRL.
    stack: list[Envoy] = []
    try:
        server = FilesWorkload("server", SERVER_ID, ca, roots_pem, layout, short_dir)
        client = FilesWorkload("client", CLIENT_ID, ca, roots_pem, layout, short_dir)
        server.write_good()
        client.write_good()
        client_serial = int(client.serial, 16)
        someone_else = x509.random_serial_number()
        crl_volume.write({"ca-crl.pem": make_crl(ca, ca.cert.subject, [client_serial, someone_else],
                                                 t0 - MINUTE, t0 + HOUR, 1)})
        server.start_agent(agent_factory, ["--crl-file", str(crl_volume / "ca-crl.pem")])
        client.start_agent(agent_factory)
        pair = start_mtls_pair(envoy_bin, short_dir, "istio", layout.api_type, TRUST_DOMAIN,
                               str(server.agent.socket_path), SERVER_ID, str(client.agent.socket_path), CLIENT_ID,
                               stack)
        pids = [pair.server.process.pid, pair.client.process.pid, server.agent.process.pid, client.agent.process.pid]
        assert served_crls(server.agent) == {"ROOTCA": (1, True), f"spiffe://{TRUST_DOMAIN}": (1, True)}
        assert pem_of(fetch_secrets(client.agent.socket_path, ["ROOTCA"])["ROOTCA"].validation_context.crl) == b""

        def fail_verify() -> int:
            return sum(v for k, v in pair.server.stats(r"ssl\.fail_verify_error$").items() if k.startswith("listener"))

        def revoked_lines() -> int:
            return pair.server.log_path.read_text(errors="replace").count("certificate revoked")

        def assert_client_refused(what: str) -> None:
            """A request fails, and the server Envoy says why: it verified the client's certificate against the CRL."""
            failed, revoked = fail_verify(), revoked_lines()
            seen = pair.request()
            assert seen.status == 503 and seen.server_saw_peer_id == "", f"{what}: the revoked client got through"
            wait_for(lambda: fail_verify() > failed and revoked_lines() > revoked, 10,
                     f"the server Envoy to refuse the handshake as 'certificate revoked' ({what})",
                     pair.server.diagnostics)

        assert_client_refused("the revoking CRL")

        # Invalid CRLs, each newer than the served one and revoking nobody: taking either would let the client in.
        other_ca = SpiffeRoot.create(TRUST_DOMAIN, ca.cert.subject, DAY, MINUTE)  # same name, another key
        invalid = {
            "signed by another CA": make_crl(other_ca, ca.cert.subject, [], now_utc() - MINUTE / 2, t0 + HOUR, 2),
            "expired": make_crl(ca, ca.cert.subject, [], now_utc() - 2 * HOUR, now_utc() - HOUR, 3),
        }
        refusals = []
        for what, pem in invalid.items():
            before = len(server.agent.log_lines("--crl-file refused"))
            root_updates = pair.server.sds_counter("update_success")["ROOTCA"]
            crl_volume.write({"ca-crl.pem": pem})
            lines = wait_for(lambda: server.agent.log_lines("--crl-file refused")[before:], VERDICT_TIMEOUT,
                             f"the agent to refuse the CRL {what}", server.agent.log_tail)
            refusals.append(lines[0])
            assert "serving=previous" in lines[0], lines[0]
            assert served_crls(server.agent) == {"ROOTCA": (1, True), f"spiffe://{TRUST_DOMAIN}": (1, True)}, what
            assert_client_refused(f"after the CRL {what}")
            assert pair.server.sds_counter("update_success")["ROOTCA"] == root_updates, "ROOTCA was pushed again"

        # A current CRL without the client's serial (later thisUpdate, revoking only someone else).
        root_updates = pair.server.sds_counter("update_success")["ROOTCA"]
        crl_volume.write({"ca-crl.pem": make_crl(ca, ca.cert.subject, [someone_else], now_utc() - datetime.timedelta(
            seconds=1), now_utc() + HOUR, 4)})
        replaced = time.monotonic()
        wait_for(lambda: pair.server.sds_counter("update_success")["ROOTCA"] > root_updates, SWAP_DEADLINE,
                 "the server Envoy to take ROOTCA with the new CRL", lambda: server.agent.log_tail())
        applied = time.monotonic() - replaced
        seen = pair.request()
        assert seen.status == 200, f"the next request after the new CRL reached Envoy: {seen}"
        assert (seen.server_saw_peer_id, seen.server_saw_peer_serial) == (CLIENT_ID, client.serial)
        assert served_crls(server.agent) == {"ROOTCA": (4, True), f"spiffe://{TRUST_DOMAIN}": (4, True)}
        assert [pair.server.process.pid, pair.client.process.pid, server.agent.process.pid,
                client.agent.process.pid] == pids, "something restarted"
        for envoy in pair.envoys():
            assert_sds_healthy(envoy)
        print(f"\nCRL: revoked client refused ({fail_verify()} failed verifications on the server Envoy); "
              f"new CRL in Envoy {applied * 1000:.0f} ms after the swap; refusals:\n  "
              + "\n  ".join(r[:240] for r in refusals))
    finally:
        for envoy in reversed(stack):
            envoy.stop()


# ------------------------------------------------------------------------------------------------------------------
# 4: --output-dir and --output-signal
# ------------------------------------------------------------------------------------------------------------------


OUTPUT_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/file-reader"
OUTPUT_SVID_TTL = 10  # seconds: rotation at half-life, every ~5 s
OUTPUT_ROTATIONS = 20


def check_output_files(directory: pathlib.Path, names: tuple[str, str, str]) -> str:
    """The test's own look at one set, right after a signal: openssl verifies the chain against the roots, the key
    is the leaf's, the key file is 0600. Returns the leaf's serial."""
    key_name, chain_name, roots_name = names
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(directory / roots_name), str(directory / chain_name)],
                            capture_output=True, text=True, timeout=10)
    assert verify.returncode == 0, f"openssl verify: {verify.stdout} {verify.stderr}"
    chain = x509.load_pem_x509_certificates((directory / chain_name).read_bytes())
    key = serialization.load_pem_private_key((directory / key_name).read_bytes(), password=None)
    assert public_der(key.public_key()) == public_der(chain[0].public_key()), f"{key_name} is not the leaf's key"
    assert stat.S_IMODE(os.stat(directory / key_name).st_mode) == 0o600
    sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [OUTPUT_ID]
    return serial_hex(chain[0])


def start_reader(short_dir: pathlib.Path, out: pathlib.Path, layout: str) -> tuple[subprocess.Popen, pathlib.Path,
                                                                                    pathlib.Path]:
    pid_file, results = short_dir / "reader.pid", short_dir / "reader.jsonl"
    with open(short_dir / "reader.log", "wb") as log:
        reader = subprocess.Popen([sys.executable, str(HERE / "output_files_reader.py"), str(out), layout,
                                   str(pid_file), str(results)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    # Its handler is installed before the pid file exists: the agent's first signal finds a process ready for it.
    wait_for(lambda: pid_file.exists() or reader.poll() is not None, 30, "the reader's pid file")
    assert reader.poll() is None, (short_dir / "reader.log").read_text()
    return reader, pid_file, results


def reader_records(results: pathlib.Path) -> list[dict]:
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines(keepends=True) if line.endswith("\n")]


def test_output_dir_stays_a_consistent_set_for_a_signalled_reader_over_20_rotations(agent_factory, short_dir):
    """The local CA at --svid-ttl 10s rotates every ~5 s. After start and after every rotation the reader, signalled
    by --output-signal, finds the three files consistent (key = leaf, chain verifies against the roots), and so does
    the test (openssl verify, key compared, key.pem 0600), 21 times (the first set and 20 rotations)."""
    out = short_dir / "out"
    reader, pid_file, results = start_reader(short_dir, out, "istio")
    try:
        agent = agent_factory.start("output", OUTPUT_ID, [
            "--svid-ttl", f"{OUTPUT_SVID_TTL}s", "--output-dir", str(out), "--output-signal", f"{pid_file}:SIGHUP"])
        names = ("key.pem", "cert-chain.pem", "root-cert.pem")
        checked: list[str] = []
        deadline = (OUTPUT_ROTATIONS + 1) * OUTPUT_SVID_TTL / 2 + 30
        started = time.monotonic()
        while len(checked) < OUTPUT_ROTATIONS + 1:
            # Await the reader's next record (one per signal), then look at the files in the quiet ~5 s after it.
            records = wait_for(lambda: (r := reader_records(results)) and len(r) > len(checked) and r,
                               max(deadline - (time.monotonic() - started), 0.0),
                               f"signal {len(checked) + 1} to the reader", agent.log_tail)
            record = records[len(checked)]
            serial = check_output_files(out, names)
            assert serial == record["serial"], f"the files changed under the test ({record})"
            checked.append(serial)
            agent.check_alive()
        elapsed = time.monotonic() - started
        # The files are what the agent serves over SDS too.
        assert leaf_serial(fetch_when_served(agent.socket_path, ["default"])["default"]) == checked[-1]
    finally:
        reader.terminate()
        reader.wait(timeout=10)
    records = reader_records(results)
    bad = [r for r in records if not (r["key_matches"] and r["chain_verifies"] and r["error"] is None)]
    times = [r["t"] for r in records]
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    print(f"\noutput-dir: {len(records)} signals in {elapsed:.1f}s, {len(set(r['serial'] for r in records))} "
          f"serials, gaps between signals {gaps[0]:.2f}..{gaps[-1]:.2f}s (median {gaps[len(gaps) // 2]:.2f}s), "
          f"{len(bad)} inconsistent")
    assert bad == [], bad[:3]
    assert len(records) >= OUTPUT_ROTATIONS + 1
    assert len({r["serial"] for r in records}) == len(records), "one signal per update, each a new leaf"
    problems = [line for line in agent.log_path.read_text().splitlines() if "identity files" in line
                and "WARNING" in line]
    assert problems == [], f"a write or a signal failed: {problems[:3]}"


def test_output_dir_spiffe_helper_layout(agent_factory, short_dir):
    """--output-layout spiffe-helper writes svid_key.pem (0600), svid.pem and svid_bundle.pem, and none of Istio's
    names; the signalled reader finds them consistent, and they are what the agent serves over SDS."""
    out = short_dir / "out"
    reader, pid_file, results = start_reader(short_dir, out, "spiffe-helper")
    try:
        agent = agent_factory.start("output", OUTPUT_ID, [
            "--output-dir", str(out), "--output-layout", "spiffe-helper", "--output-signal", f"{pid_file}:SIGHUP"])
        records = wait_for(lambda: reader_records(results), 30, "the first signal to the reader", agent.log_tail)
        serial = check_output_files(out, ("svid_key.pem", "svid.pem", "svid_bundle.pem"))
    finally:
        reader.terminate()
        reader.wait(timeout=10)
    assert records[0]["key_matches"] and records[0]["chain_verifies"], records[0]
    assert records[0]["serial"] == serial == leaf_serial(fetch_secrets(agent.socket_path, ["default"])["default"])
    assert sorted(p.name for p in out.iterdir()) == ["svid.pem", "svid_bundle.pem", "svid_key.pem"]


def test_output_jwt_file_and_the_signal_it_sends(agent_factory, short_dir):
    """--output-jwt keeps a JWT-SVID for the audience (0600, our SPIFFE ID, that audience). The JWT file's write
    sends --output-signal too: the application it wakes must find the identity files complete and consistent then,
    as after any other signal ("once every file of an update is in place")."""
    out = short_dir / "out"
    audience = f"spiffe://{TRUST_DOMAIN}/ns/db/sa/postgres"
    reader, pid_file, results = start_reader(short_dir, out, "istio")
    try:
        agent = agent_factory.start("output", OUTPUT_ID, [
            "--output-dir", str(out), "--output-signal", f"{pid_file}:SIGHUP",
            "--output-jwt", f"{audience}={out}/db.jwt"])
        # Two signals: one after the identity files, one after the JWT file.
        records = wait_for(lambda: len(r := reader_records(results)) >= 2 and r, 30, "two signals to the reader",
                           agent.log_tail)
        check_output_files(out, ("key.pem", "cert-chain.pem", "root-cert.pem"))
    finally:
        reader.terminate()
        reader.wait(timeout=10)
    assert sorted(p.name for p in out.iterdir()) == ["cert-chain.pem", "db.jwt", "key.pem", "root-cert.pem"]
    token = (out / "db.jwt").read_text().strip()
    assert stat.S_IMODE(os.stat(out / "db.jwt").st_mode) == 0o600
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == OUTPUT_ID
    assert claims["aud"] in (audience, [audience]), claims
    assert claims["exp"] > time.time()
    bad = [r for r in records if not (r["key_matches"] and r["chain_verifies"] and r["error"] is None)]
    assert bad == [], f"signalled while the identity files were incomplete: {bad}"
