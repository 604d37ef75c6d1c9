"""Acceptance tests of `sds-dump`: see what any SDS server serves, as Envoy would receive it.

Run against an SDS server we did not write (the grpcio + xds-protos reference server, in process, so the tests also
see what sds-dump sent it) and against sds-agent (param `agent`). $SDS_DUMP names the binary (default
.build/release/sds-dump); SDS_DUMP_READY=0 skips the module, for work on the harness alone.

The command-line contract these tests hold sds-dump to:

    sds-dump [--socket PATH|unix:///abs/path] [--sotw|--delta|--fetch] [--json] [--pem-dir DIR]
             [--watch [--count N]] [--nack] [--timeout DURATION] [--node-id ID] [--cluster NAME] [NAME ...]

    NAME ...       secret names; default: `default ROOTCA`
    --socket       default /run/secrets/workload-spiffe-uds/socket
    --sotw         StreamSecrets (default), one stream per name, like Envoy
    --delta        DeltaSecrets, one stream per name, like Envoy
    --fetch        one FetchSecrets call (opens no stream)
    --node-id, --cluster   the Node presented on the streams / the call
    --json         one JSON document per update (JSON Lines); DOCUMENT_SCHEMA below
    --pem-dir DIR  writes <safe>.cert.pem, <safe>.key.pem (0600) for certificates and <safe>.bundle.pem for
                   validation contexts; <safe> = the name with every run of characters outside [A-Za-z0-9._-]
                   replaced by one `_` (spiffe://example.org -> spiffe_example.org)
    --watch        keep the streams open, print every update (the first one holds every name) until SIGINT
                   (exit 0) or --count N updates (exit 0)
    --nack         answer each response with a NACK (error_detail set) instead of an ACK; exit 0
    --timeout      how long to wait for every name, default 10s (e.g. 1, 1s, 500ms)

    Without --watch: waits until every name has arrived, ACKs each response (the ACK reaches the server before
    sds-dump exits), prints one update, exits 0.

    Exit codes: 0 ok; 2 usage (one line on stderr naming the flag); 3 cannot connect (stderr names the socket path);
    4 timeout (stderr names every name that did not arrive); 5 the server answered with an error status (stderr shows
    the status code, by name or number, and the server's message).

Human output (stdout; no ESC byte unless stdout is a TTY):
    - per secret a header line holding its name and its kind (`certificate` or `validation context`);
    - per certificate (chain and bundle): SPIFFE ID (URI SAN, when it has one), every attribute value of subject and
      issuer, serial as `openssl x509 -serial` prints it (case-insensitive), not-after date (YYYY-MM-DD), an
      `expires in 59m` style text (units d/h/m/s, e.g. `23h59m`), key type (`ECDSA P-256`), SHA-256 fingerprint
      (hex, colons optional, case-insensitive);
    - when a certificate and a bundle are both fetched: a line containing `chain: verified` or
      `chain: NOT verified: <reason>`;
    - with --watch every update begins with a line starting with its RFC 3339 timestamp, and no other line starts
      with a timestamp.
    The private key is never printed (neither human nor JSON): only its type.
"""
from __future__ import annotations

import base64
import datetime
import json
import os
import pathlib
import queue
import re
import signal
import stat
import subprocess
import threading
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

import sds_reference_server as ref
from envoy_harness import wait_for
from sds_client import certs_of, pem_of
from sds_servers import TRUST_DOMAIN, InProcessServer, ReferenceFactory, fetch_when_served

DUMP_READY = os.environ.get("SDS_DUMP_READY", "1") == "1"
pytestmark = pytest.mark.skipif(not DUMP_READY, reason="SDS_DUMP_READY=0: sds-dump tests skipped on request")

WORKLOAD_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/dump"
BUNDLE_NAME = f"spiffe://{TRUST_DOMAIN}"
DEFAULT_NAMES = ["default", "ROOTCA"]
DEFAULT_SOCKET = "/run/secrets/workload-spiffe-uds/socket"
RUN_TIMEOUT = 30.0  # a bound on any one sds-dump run; a hang fails the test

# ------------------------------------------------------------------------------------------------------------------
# The --json contract: one document per update (one line each). Key sets are exact; types are listed per key.
# ------------------------------------------------------------------------------------------------------------------

DOCUMENT_SCHEMA = {
    "time": str,  # RFC 3339 with a zone, e.g. 2026-11-23T20:01:40Z: when this update was received
    "mode": str,  # "sotw" | "delta" | "fetch"
    "secrets": list,  # one per name, in the order the names were given (for a --watch push: the pushed ones)
}
CERTIFICATE_SECRET_SCHEMA = {
    "name": str,
    "kind": str,  # "certificate"
    "version": str,  # SotW/Fetch: the response's version_info; Delta: the Resource's version
    "certificates": list,  # the chain, leaf first
    "private_key": dict,  # {"type": "ECDSA P-256"}: never the key bytes
    "chain_verified": (bool, type(None)),  # against every fetched bundle; null when no bundle was fetched
}
VALIDATION_SECRET_SCHEMA = {
    "name": str,
    "kind": str,  # "validation_context"
    "version": str,
    "certificates": list,  # the bundle's CA certificates (trusted_ca)
    "chain_verified": type(None),
}
CERTIFICATE_SCHEMA = {
    "spiffe_id": (str, type(None)),  # the URI SAN with scheme spiffe, null when there is none
    "subject": str,  # RFC 4514 (`openssl x509 -subject -nameopt RFC2253`), "" for an empty name
    "issuer": str,  # RFC 4514
    "serial": str,  # hex as `openssl x509 -serial` prints it, no colons (case-insensitive)
    "not_before": str,  # RFC 3339
    "not_after": str,  # RFC 3339
    "expires_in_seconds": int,  # not_after - time, whole seconds (negative once expired)
    "key_type": str,  # e.g. "ECDSA P-256", "RSA 2048", "Ed25519"
    "sha256": str,  # SHA-256 of the DER, 64 hex digits, no colons (case-insensitive)
}
PRIVATE_KEY_SCHEMA = {"type": str}


def check_keys(obj: dict, schema: dict, where: str) -> None:
    assert isinstance(obj, dict), f"{where}: {obj!r} is not an object"
    assert set(obj) == set(schema), f"{where}: keys {sorted(obj)} != contract {sorted(schema)}"
    for key, types in schema.items():
        # bool is an int in Python: an int field must not be a bool.
        assert isinstance(obj[key], types) and not (types is int and isinstance(obj[key], bool)), \
            f"{where}.{key} = {obj[key]!r} is not {types}"


def parse_time(text: str, where: str) -> datetime.datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", text), \
        f"{where} = {text!r} is not RFC 3339"
    return datetime.datetime.fromisoformat(text)


# ------------------------------------------------------------------------------------------------------------------
# Running sds-dump
# ------------------------------------------------------------------------------------------------------------------




class Run:
    """One finished sds-dump run: exit code, stdout (bytes and text), stderr text."""

    def __init__(self, argv: list[str], proc: subprocess.CompletedProcess):
        self.argv, self.code, self.out_bytes = argv, proc.returncode, proc.stdout
        self.out = proc.stdout.decode(errors="replace")
        self.err = proc.stderr.decode(errors="replace")

    def __repr__(self) -> str:
        return f"sds-dump {' '.join(self.argv)} -> exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"

    def documents(self) -> list[dict]:
        lines = [line for line in self.out.splitlines() if line.strip()]
        try:
            return [json.loads(line) for line in lines]
        except json.JSONDecodeError as e:
            raise AssertionError(f"stdout is not JSON Lines ({e}): {self!r}") from None


def dump(binary: pathlib.Path, *args: str, timeout: float = RUN_TIMEOUT) -> Run:
    """Runs sds-dump to its end, stdout and stderr through pipes (never a TTY); the timeout kills it."""
    argv = [str(a) for a in args]
    proc = subprocess.run([str(binary), *argv], stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    return Run(argv, proc)


class Watch:
    """sds-dump --watch as a child process; lines of stdout arrive on a queue, read with a deadline."""

    def __init__(self, binary: pathlib.Path, *args: str):
        self.argv = [str(binary), *[str(a) for a in args]]
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.process.stdout:
            self.lines.put(raw.decode(errors="replace"))
        self.lines.put(None)

    def next_line(self, timeout: float = RUN_TIMEOUT) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from {self.argv} within {timeout}s; so far:\n{''.join(self.seen)}") \
                from None
        if line is None:
            raise AssertionError(f"{self.argv} ended (exit {self.process.wait()}) after:\n{''.join(self.seen)}"
                                 f"\n--- stderr\n{self.process.stderr.read().decode(errors='replace')}")
        self.seen.append(line)
        return line

    def next_document(self, timeout: float = RUN_TIMEOUT) -> dict:
        while True:
            line = self.next_line(timeout)
            if line.strip():
                return json.loads(line)

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        return self.process.wait(timeout=timeout)

    def rest(self) -> str:
        """Everything still to come on stdout, once the process has ended."""
        self.process.wait(timeout=RUN_TIMEOUT)
        out = []
        while (line := self.lines.get(timeout=RUN_TIMEOUT)) is not None:
            out.append(line)
        self.seen.extend(out)
        return "".join(out)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------------------------
# What the server serves, seen by a client we trust (grpcio FetchSecrets) and by openssl
# ------------------------------------------------------------------------------------------------------------------


def openssl(pem: bytes, *args: str) -> str:
    return subprocess.run(["openssl", "x509", "-noout", *args], input=pem, capture_output=True, check=True,
                          timeout=10).stdout.decode().strip()


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def openssl_serial(cert: x509.Certificate) -> str:
    return openssl(cert_pem(cert), "-serial").split("=", 1)[1].lower()


def openssl_sha256(cert: x509.Certificate) -> str:
    return openssl(cert_pem(cert), "-fingerprint", "-sha256").split("=", 1)[1].replace(":", "").lower()


def spiffe_id_of(cert: x509.Certificate) -> str | None:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    ids = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    return ids[0] if ids else None


def certs_of_secret(secret) -> list[x509.Certificate]:
    if secret.WhichOneof("type") == "tls_certificate":
        return certs_of(secret.tls_certificate.certificate_chain)
    return certs_of(secret.validation_context.trusted_ca)


def kind_of(secret) -> str:
    return {"tls_certificate": "certificate", "validation_context": "validation_context"}[secret.WhichOneof("type")]


def served(target, names: list[str]) -> dict:
    """{name: Secret} as the server serves them now (waits for a server that binds before its first SVID)."""
    return fetch_when_served(target.socket_path, names)


def key_body(secret) -> str:
    """A distinctive piece of the private key's base64, to prove it is never printed."""
    pem = pem_of(secret.tls_certificate.private_key).decode()
    return "".join(line for line in pem.splitlines() if "-----" not in line)[:40]


def expected_reference_version(mode: str, names: list[str], secrets: dict, name: str) -> str:
    """The version the reference server gives `name` in `mode` (one SotW stream per name; Fetch: one call)."""
    if mode == "delta":
        return ref._version(secrets[name])
    if mode == "sotw":
        return ref._combined_version([secrets[name]])
    return ref._combined_version([secrets[n] for n in names])


# ------------------------------------------------------------------------------------------------------------------
# Checks of one JSON document against the server's secrets
# ------------------------------------------------------------------------------------------------------------------


def check_certificate(entry: dict, cert: x509.Certificate, at: datetime.datetime, where: str) -> None:
    check_keys(entry, CERTIFICATE_SCHEMA, where)
    assert entry["spiffe_id"] == spiffe_id_of(cert), where
    assert entry["subject"] == cert.subject.rfc4514_string(), where
    assert entry["issuer"] == cert.issuer.rfc4514_string(), where
    assert entry["serial"].lower() == openssl_serial(cert), f"{where}: serial as openssl prints it"
    assert ":" not in entry["sha256"] and entry["sha256"].lower() == openssl_sha256(cert), where
    not_before = parse_time(entry["not_before"], where + ".not_before")
    not_after = parse_time(entry["not_after"], where + ".not_after")
    assert abs((not_before - cert.not_valid_before_utc).total_seconds()) < 1, where
    assert abs((not_after - cert.not_valid_after_utc).total_seconds()) < 1, where
    expected = (cert.not_valid_after_utc - at).total_seconds()
    assert abs(entry["expires_in_seconds"] - expected) <= 2, f"{where}: expires_in_seconds vs not_after - time"
    assert entry["key_type"] == "ECDSA P-256", where


def check_document(doc: dict, mode: str, names: list[str], secrets: dict, chain_verified: bool | None = True) -> None:
    """`doc` is the one update of a run that asked for `names` in `mode`; `secrets` is what the server serves."""
    check_keys(doc, DOCUMENT_SCHEMA, "document")
    at = parse_time(doc["time"], "time")
    now = datetime.datetime.now(datetime.timezone.utc)
    assert now - datetime.timedelta(seconds=RUN_TIMEOUT) <= at <= now, f"time {doc['time']} is not about now"
    assert doc["mode"] == mode
    assert [s.get("name") for s in doc["secrets"]] == names, "one secret per name, in the order given"
    bundles = any(kind_of(secrets[n]) == "validation_context" for n in names)
    for entry, name in zip(doc["secrets"], names):
        secret, where = secrets[name], f"secrets[{name}]"
        kind = kind_of(secret)
        check_keys(entry, CERTIFICATE_SECRET_SCHEMA if kind == "certificate" else VALIDATION_SECRET_SCHEMA, where)
        assert entry["kind"] == kind, where
        assert entry["version"], f"{where}: empty version"
        certs = certs_of_secret(secret)
        assert len(entry["certificates"]) == len(certs), f"{where}: one entry per certificate"
        for i, (e, c) in enumerate(zip(entry["certificates"], certs)):
            check_certificate(e, c, at, f"{where}.certificates[{i}]")
        if kind == "certificate":
            check_keys(entry["private_key"], PRIVATE_KEY_SCHEMA, where + ".private_key")
            assert entry["private_key"]["type"] == "ECDSA P-256", where
            assert entry["chain_verified"] is (chain_verified if bundles else None), \
                f"{where}.chain_verified (a bundle was {'' if bundles else 'not '}fetched)"
        else:
            assert entry["chain_verified"] is None, where


# ------------------------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def target(sds_factory):
    """The SDS server sds-dump talks to: the reference server (in process) or sds-agent (gated)."""
    return sds_factory.start("target", WORKLOAD_ID)


@pytest.fixture
def reference(short_dir):
    """The reference server alone, for what only it can show: what it received, failures on demand."""
    with ReferenceFactory(short_dir) as factory:
        yield factory.start("ref", WORKLOAD_ID)


@pytest.fixture(params=["sotw", "delta", "fetch"])
def mode(request) -> str:
    return request.param


# ------------------------------------------------------------------------------------------------------------------
# --json
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("names", [DEFAULT_NAMES, [WORKLOAD_ID, BUNDLE_NAME]], ids=["istio", "spire"])
def test_json_document_matches_what_the_server_serves(sds_dump_bin, target, mode, names):
    secrets = served(target, names)
    run = dump(sds_dump_bin, "--socket", target.socket_path, f"--{mode}", "--json", *names)
    assert run.code == 0, run
    [doc] = run.documents()
    check_document(doc, mode, names, secrets)
    if isinstance(target, InProcessServer):
        for entry, name in zip(doc["secrets"], names):
            assert entry["version"] == expected_reference_version(mode, names, secrets, name), name
    cert_name = names[0]
    for text in (run.out, run.err):
        assert "PRIVATE KEY" not in text and key_body(secrets[cert_name]) not in text, "the key was printed"


def test_json_names_default_to_default_and_rootca(sds_dump_bin, target):
    secrets = served(target, DEFAULT_NAMES)
    run = dump(sds_dump_bin, "--socket", target.socket_path, "--json")
    assert run.code == 0, run
    [doc] = run.documents()
    check_document(doc, "sotw", DEFAULT_NAMES, secrets)


def test_json_certificate_alone_has_no_chain_verdict(sds_dump_bin, target):
    secrets = served(target, ["default"])
    run = dump(sds_dump_bin, "--socket", target.socket_path, "--json", "default")
    assert run.code == 0, run
    [doc] = run.documents()
    check_document(doc, "sotw", ["default"], secrets)
    assert doc["secrets"][0]["chain_verified"] is None


def test_socket_accepts_a_unix_url(sds_dump_bin, target):
    secrets = served(target, DEFAULT_NAMES)
    run = dump(sds_dump_bin, "--socket", f"unix://{target.socket_path}", "--json", *DEFAULT_NAMES)
    assert run.code == 0, run
    check_document(run.documents()[0], "sotw", DEFAULT_NAMES, secrets)


def test_json_says_chain_not_verified_against_a_foreign_bundle(sds_dump_bin, reference):
    reference.reference.store.serve_bundle(ref.TinyCA.create("other.org").cert_pem)
    secrets = served(reference, DEFAULT_NAMES)
    run = dump(sds_dump_bin, "--socket", reference.socket_path, "--json", *DEFAULT_NAMES)
    assert run.code == 0, f"a chain that does not verify is reported, not an error: {run!r}"
    check_document(run.documents()[0], "sotw", DEFAULT_NAMES, secrets, chain_verified=False)


# ------------------------------------------------------------------------------------------------------------------
# Human output
# ------------------------------------------------------------------------------------------------------------------

_EXPIRES = re.compile(r"expires in ((?:\d+[dhms])+)")
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def expires_in_values(text: str) -> list[int]:
    return [sum(int(n) * _UNIT[u] for n, u in re.findall(r"(\d+)([dhms])", m)) for m in _EXPIRES.findall(text)]


def check_human(run: Run, names: list[str], secrets: dict, verdict: str | None = "verified") -> None:
    assert run.code == 0, run
    assert b"\x1b" not in run.out_bytes, "colors (ESC) on a pipe"
    assert "\x1b" not in run.err, "colors (ESC) on a pipe"
    lines = run.out.splitlines()
    flat = run.out.replace(":", "").lower()  # fingerprints may be printed with colons
    for name in names:
        kind = kind_of(secrets[name]).replace("_", " ")
        assert any(name in line and kind in line for line in lines), f"no line with {name!r} and {kind!r}\n{run!r}"
        for cert in certs_of_secret(secrets[name]):
            serial = openssl_serial(cert)
            assert serial in run.out.lower(), f"serial {serial} of {name}\n{run!r}"
            assert openssl_sha256(cert) in flat, f"SHA-256 fingerprint of {name}'s {serial}\n{run!r}"
            assert cert.not_valid_after_utc.strftime("%Y-%m-%d") in run.out, f"not-after date of {serial}\n{run!r}"
            for attr in [*cert.subject, *cert.issuer]:
                assert attr.value in run.out, f"{attr.rfc4514_string()} of {serial}\n{run!r}"
            if (spiffe_id := spiffe_id_of(cert)) is not None:
                assert spiffe_id in run.out, f"SPIFFE ID of {serial}\n{run!r}"
    assert "ECDSA P-256" in run.out, run
    leaf = certs_of_secret(secrets[names[0]])[0]
    remaining = (leaf.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    assert any(abs(v - remaining) <= 120 for v in expires_in_values(run.out)), \
        f"an 'expires in ...' text for the leaf ({remaining:.0f}s left)\n{run!r}"
    chain_lines = [line for line in lines if "chain:" in line]
    if verdict is None:
        assert not chain_lines, f"a chain verdict without a bundle\n{run!r}"
    elif verdict == "verified":
        assert any("chain: verified" in line for line in chain_lines), run
        assert not any("NOT verified" in line for line in chain_lines), run
    else:
        assert any(re.search(r"chain: NOT verified: \S", line) for line in chain_lines), run
    assert "PRIVATE KEY" not in run.out and key_body(secrets[names[0]]) not in run.out, "the key was printed"


@pytest.mark.parametrize("names", [DEFAULT_NAMES, [WORKLOAD_ID, BUNDLE_NAME]], ids=["istio", "spire"])
def test_human_output_shows_every_certificate(sds_dump_bin, target, mode, names):
    secrets = served(target, names)
    run = dump(sds_dump_bin, "--socket", target.socket_path, f"--{mode}", *names)
    check_human(run, names, secrets)


def test_human_output_of_a_certificate_alone_has_no_chain_line(sds_dump_bin, target):
    secrets = served(target, ["default"])
    check_human(dump(sds_dump_bin, "--socket", target.socket_path, "default"), ["default"], secrets, verdict=None)


def test_human_output_says_chain_not_verified_and_why(sds_dump_bin, reference):
    reference.reference.store.serve_bundle(ref.TinyCA.create("other.org").cert_pem)
    secrets = served(reference, DEFAULT_NAMES)
    check_human(dump(sds_dump_bin, "--socket", reference.socket_path), DEFAULT_NAMES, secrets, verdict="NOT")


# ------------------------------------------------------------------------------------------------------------------
# --pem-dir
# ------------------------------------------------------------------------------------------------------------------


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def test_safe_name_rule_examples():
    assert safe_name("spiffe://example.org") == "spiffe_example.org"
    assert safe_name("spiffe://example.org/ns/demo/sa/dump") == "spiffe_example.org_ns_demo_sa_dump"
    assert safe_name("default") == "default" and safe_name("ROOTCA") == "ROOTCA"


@pytest.mark.parametrize("names", [DEFAULT_NAMES, [WORKLOAD_ID, BUNDLE_NAME]], ids=["istio", "spire"])
def test_pem_dir_writes_files_openssl_verifies(sds_dump_bin, target, short_dir, mode, names):
    secrets = served(target, names)
    # Missing, parent included: sds-dump creates them 0700 (a new user's first `--pem-dir ./certs` must work).
    out = short_dir / "new" / "pems"
    assert not out.parent.exists()
    run = dump(sds_dump_bin, "--socket", target.socket_path, f"--{mode}", "--pem-dir", out, *names)
    assert run.code == 0, run
    cert_name, bundle_name = names
    cert_file = out / f"{safe_name(cert_name)}.cert.pem"
    key_file = out / f"{safe_name(cert_name)}.key.pem"
    bundle_file = out / f"{safe_name(bundle_name)}.bundle.pem"
    assert sorted(p.name for p in out.iterdir()) == sorted(f.name for f in (cert_file, key_file, bundle_file))
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, "the key file is 0600"
    assert stat.S_IMODE(out.stat().st_mode) == 0o700 and stat.S_IMODE(out.parent.stat().st_mode) == 0o700

    chain = x509.load_pem_x509_certificates(cert_file.read_bytes())
    assert [c.serial_number for c in chain] == [c.serial_number for c in certs_of_secret(secrets[cert_name])]
    bundle = x509.load_pem_x509_certificates(bundle_file.read_bytes())
    assert [c.serial_number for c in bundle] == [c.serial_number for c in certs_of_secret(secrets[bundle_name])]
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
        == chain[0].public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo), "key matches leaf"
    verify = subprocess.run(["openssl", "verify", "-CAfile", bundle_file, "-untrusted", cert_file, cert_file],
                            capture_output=True, text=True, timeout=10)
    assert verify.returncode == 0 and verify.stdout.strip().endswith(": OK"), verify


def test_pem_dir_that_cannot_be_written_exits_1_after_printing(sds_dump_bin, target, short_dir):
    """The secrets arrived and are printed, but a script relying on the files must not see success."""
    served(target, DEFAULT_NAMES)
    not_a_dir = short_dir / "file"
    not_a_dir.write_text("x")
    run = dump(sds_dump_bin, "--socket", target.socket_path, "--pem-dir", not_a_dir)
    assert run.code == 1, run
    assert "--pem-dir" in run.err and "default" in run.out


# ------------------------------------------------------------------------------------------------------------------
# --watch
# ------------------------------------------------------------------------------------------------------------------


def default_entry(doc: dict) -> dict:
    [entry] = [s for s in doc["secrets"] if s["name"] == "default"]
    return entry


@pytest.mark.parametrize("watch_mode", ["sotw", "delta"])
def test_watch_count_2_prints_the_rotation(sds_dump_bin, target, watch_mode):
    served(target, DEFAULT_NAMES)
    with Watch(sds_dump_bin, "--socket", target.socket_path, f"--{watch_mode}", "--watch", "--count", "2",
               "--json") as w:
        first = w.next_document()
        secrets = served(target, DEFAULT_NAMES)
        check_document(first, watch_mode, DEFAULT_NAMES, secrets)
        target.rotate()
        second = w.next_document()
        assert w.wait() == 0, "--count 2: exit 0 after the second update"
        assert not w.rest().strip(), "nothing after the second document"
    check_keys(second, DOCUMENT_SCHEMA, "second document")
    assert second["mode"] == watch_mode
    assert parse_time(second["time"], "time") >= parse_time(first["time"], "time")
    old, new = default_entry(first), default_entry(second)
    check_keys(new, CERTIFICATE_SECRET_SCHEMA, "second document: default")
    assert new["certificates"][0]["serial"].lower() != old["certificates"][0]["serial"].lower(), "a new leaf"
    assert new["version"] != old["version"]
    assert new["certificates"][0]["serial"].lower() == openssl_serial(
        certs_of_secret(served(target, ["default"])["default"])[0]), "the leaf the server serves now"


_TIMESTAMP_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def test_watch_human_output_timestamps_every_update(sds_dump_bin, target):
    served(target, DEFAULT_NAMES)
    with Watch(sds_dump_bin, "--socket", target.socket_path, "--watch", "--count", "2") as w:
        header = w.next_line()
        assert _TIMESTAMP_LINE.match(header), f"the first update begins with its timestamp: {header!r}"
        target.rotate()  # the first update was received (its header is out): the rotation is the second one
        assert w.wait() == 0
        rest = w.rest()
    lines = "".join(w.seen).splitlines()
    stamped = [line for line in lines if _TIMESTAMP_LINE.match(line)]
    assert len(stamped) == 2, f"one timestamp line per update:\n{''.join(w.seen)}"
    assert b"\x1b" not in rest.encode()


def test_watch_stops_on_sigint_with_exit_0(sds_dump_bin, target):
    served(target, DEFAULT_NAMES)
    with Watch(sds_dump_bin, "--socket", target.socket_path, "--watch", "--json") as w:
        w.next_document()
        w.process.send_signal(signal.SIGINT)
        assert w.wait(timeout=10) == 0


# ------------------------------------------------------------------------------------------------------------------
# What the server receives (reference only: it records every stream)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream_mode", ["sotw", "delta"])
def test_one_stream_per_name_each_acked(sds_dump_bin, reference, stream_mode):
    run = dump(sds_dump_bin, "--socket", reference.socket_path, f"--{stream_mode}", "--json", *DEFAULT_NAMES)
    assert run.code == 0, run
    streams = reference.streams
    assert sorted(tuple(s.names) for s in streams) == [("ROOTCA",), ("default",)], "one stream per name"
    assert all(s.kind == stream_mode for s in streams)
    # The ACK is on its way before sds-dump exits; the server's reader thread may record it a moment later.
    wait_for(lambda: all(s.acks >= 1 for s in streams), 5, f"an ACK on every stream: {streams}")
    assert all(s.nacks == 0 for s in streams), streams


@pytest.mark.parametrize("stream_mode", ["sotw", "delta"])
def test_nack_sends_error_detail(sds_dump_bin, reference, stream_mode):
    run = dump(sds_dump_bin, "--socket", reference.socket_path, f"--{stream_mode}", "--nack", "--json", "default")
    assert run.code == 0, run
    [stream] = reference.streams
    wait_for(lambda: stream.nacks >= 1, 5, f"a NACK: {stream}")
    assert stream.acks == 0 and stream.last_error, stream


@pytest.mark.parametrize("stream_mode", ["sotw", "delta"])
def test_node_id_and_cluster_are_presented(sds_dump_bin, reference, stream_mode):
    run = dump(sds_dump_bin, "--socket", reference.socket_path, f"--{stream_mode}", "--node-id", "dump-node",
               "--cluster", "dump-cluster", "--json", *DEFAULT_NAMES)
    assert run.code == 0, run
    assert len(reference.streams) == 2
    for s in reference.streams:
        assert s.node_ids and set(s.node_ids) == {"dump-node"}, s
        assert s.node_clusters and set(s.node_clusters) == {"dump-cluster"}, s


def test_fetch_opens_no_stream(sds_dump_bin, reference):
    run = dump(sds_dump_bin, "--socket", reference.socket_path, "--fetch", "--json", *DEFAULT_NAMES)
    assert run.code == 0, run
    assert reference.streams == [], "--fetch uses FetchSecrets only"


# ------------------------------------------------------------------------------------------------------------------
# Exit codes
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,flag", [
    (["--no-such-flag"], "--no-such-flag"),
    (["--timeout", "soon"], "--timeout"),
    (["--count", "many", "--watch"], "--count"),
], ids=["unknown", "bad-timeout", "bad-count"])
def test_usage_error_exits_2_with_one_line_naming_the_flag(sds_dump_bin, short_dir, args, flag):
    run = dump(sds_dump_bin, "--socket", short_dir / "none.sock", *args)
    assert run.code == 2, run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], run
    assert not run.out, run


def test_missing_socket_exits_3_naming_the_path(sds_dump_bin, short_dir):
    path = short_dir / "no-such-dir" / "sds.sock"
    for given in (str(path), f"unix://{path}"):
        run = dump(sds_dump_bin, "--socket", given, "--timeout", "5")
        assert run.code == 3, run
        assert str(path) in run.err and "Traceback" not in run.err, run


def test_not_a_socket_exits_3_naming_the_path(sds_dump_bin, short_dir):
    path = short_dir / "regular-file"
    path.write_text("not a socket\n")
    run = dump(sds_dump_bin, "--socket", path, "--timeout", "5")
    assert run.code == 3, run
    assert str(path) in run.err, run


def test_nobody_listening_exits_3(sds_dump_bin, reference):
    path = reference.socket_path
    reference.kill()  # grpcio removes the socket on stop; bind a dead socket file (nobody accepts on it)
    import socket as socket_module
    with socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM) as s:
        s.bind(str(path))
    run = dump(sds_dump_bin, "--socket", path, "--timeout", "5")
    assert run.code == 3, run
    assert str(path) in run.err, run


@pytest.mark.skipif(os.path.exists(DEFAULT_SOCKET), reason=f"{DEFAULT_SOCKET} exists on this machine")
def test_default_socket_path(sds_dump_bin):
    run = dump(sds_dump_bin, "--timeout", "5")
    assert run.code == 3, run
    assert DEFAULT_SOCKET in run.err, run


def test_timeout_exits_4_naming_the_missing_name(sds_dump_bin, target):
    """SotW: a server holds a name it does not serve (Delta may answer removed_resources instead: not covered)."""
    served(target, ["default"])
    started = time.monotonic()
    run = dump(sds_dump_bin, "--socket", target.socket_path, "--sotw", "--timeout", "1", "default", "never-served")
    elapsed = time.monotonic() - started
    assert run.code == 4, run
    assert "never-served" in run.err, run
    assert elapsed < 8, f"--timeout 1 took {elapsed:.1f}s"


@pytest.mark.parametrize("rpc_mode", ["sotw", "delta", "fetch"])
def test_error_status_exits_5_with_code_and_message(sds_dump_bin, reference, rpc_mode):
    reference.reference.service.fail_with = (grpc.StatusCode.PERMISSION_DENIED, "reference refuses sds-dump")
    run = dump(sds_dump_bin, "--socket", reference.socket_path, f"--{rpc_mode}", "--timeout", "5")
    assert run.code == 5, run
    assert re.search(r"PERMISSION_DENIED|PermissionDenied|permission denied|\b7\b", run.err, re.I), run
    assert "reference refuses sds-dump" in run.err, run


def test_fetch_of_an_unknown_name_exits_5(sds_dump_bin, reference):
    run = dump(sds_dump_bin, "--socket", reference.socket_path, "--fetch", "never-served")
    assert run.code == 5, run
    assert re.search(r"NOT_FOUND|NotFound|not found|\b5\b", run.err, re.I) and "never-served" in run.err, run
