"""Acceptance tests of the SPIFFE Workload API sds-agent serves on its SDS socket, to the applications beside Envoy,
through clients we did not write: py-spiffe (`X509Source`, `WorkloadApiClient`), spiffe-tls, raw grpcio.

    app (py-spiffe / spiffe-tls) --FetchX509SVID, FetchX509Bundles--> sds-agent (socket S) --issuer--> local CA
                                                                                                    or upstream fake
Every test runs twice: with the local CA (`--issuer local-ca`; SIGHUP rotates) and with `--issuer workload-api`
against the upstream fake (workload_api_server.py; its rotate() rotates): the app must see the same either way.
"""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc
import pytest
from cryptography import x509
from spiffe import TrustDomain, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc

from envoy_harness import wait_for
from sds_servers import HERE, TRUST_DOMAIN, ProcessServer, fetch_when_served, leaf_serial
from workload_api_server import WorkloadAPIServer

APP_ID = f"spiffe://{TRUST_DOMAIN}/ns/apps/sa/app"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/apps/sa/server"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/apps/sa/client"
SOURCE_TIMEOUT = 20.0  # seconds for an X509Source's first SVID
ROTATION_TIMEOUT = 20.0  # seconds for a rotation to reach an app
SECURITY_HEADER = ("workload.spiffe.io", "true")


@dataclass
class Served:
    """One agent serving the Workload API, and how to rotate the identity it serves."""
    agent: ProcessServer
    rotate: Callable[[], object]
    upstream: WorkloadAPIServer | None = None

    @property
    def socket(self) -> str:
        return str(self.agent.socket_path)

    def sds_serial(self) -> str:
        """The leaf serial SDS serves right now (what Envoy beside the app gets)."""
        return leaf_serial(fetch_when_served(self.socket, ["default"])["default"])


@dataclass
class ServedFactory:
    issuer: str
    start: Callable[..., Served]
    upstreams: list[WorkloadAPIServer] = field(default_factory=list)


@pytest.fixture(params=["local-ca", "workload-api"])
def served(request, agent_factory, short_dir):
    """Starts agents (one SPIFFE ID each, one trust domain) with the issuer of this run."""
    upstreams: list[WorkloadAPIServer] = []

    def start(label: str, spiffe_id: str, extra: list[str] | None = None) -> Served:
        if request.param == "local-ca":
            agent = agent_factory.start(label, spiffe_id, extra)
            return Served(agent, agent.rotate)
        # No CA state to share (the upstream issues): an own state dir, not a copy of the first agent's.
        (short_dir / f"{label}.state").mkdir(mode=0o700, exist_ok=True)
        ca = upstreams[0].ca if upstreams else None
        upstream = WorkloadAPIServer(str(short_dir / f"{label}-up.sock"), spiffe_id, ca=ca).start()
        upstreams.append(upstream)
        agent = agent_factory.start(
            label, spiffe_id,
            ["--issuer", "workload-api", "--upstream-socket", f"unix://{upstream.socket_path}", *(extra or [])])
        return Served(agent, upstream.rotate, upstream)

    try:
        yield ServedFactory(request.param, start, upstreams)
    finally:
        agent_factory.stop_all()
        for upstream in upstreams:
            upstream.stop()


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def stub(socket_path: str) -> workload_pb2_grpc.SpiffeWorkloadAPIStub:
    return workload_pb2_grpc.SpiffeWorkloadAPIStub(grpc.insecure_channel(f"unix:{socket_path}"))


# ------------------------------------------------------------------------------------------------------------------
# py-spiffe
# ------------------------------------------------------------------------------------------------------------------


def test_x509_source_gets_svid_and_bundle_and_sees_rotation(served):
    app = served.start("app", APP_ID)
    with X509Source(socket_path=f"unix:{app.socket}", timeout_in_seconds=SOURCE_TIMEOUT) as source:
        svid = source.get_x509_context().default_svid
        assert str(svid.spiffe_id) == APP_ID
        old = serial_of(svid.leaf)
        assert old == app.sds_serial(), "the app and Envoy get the same SVID"
        bundle = source.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
        assert bundle is not None and bundle.x509_authorities, "no bundle for the own trust domain"
        top = svid.cert_chain[-1]
        assert any(_issued_by(top, ca) for ca in bundle.x509_authorities), "the bundle does not anchor the SVID"
        assert svid.private_key.public_key().public_numbers() == svid.leaf.public_key().public_numbers()

        updates = []
        source.subscribe_for_updates(lambda: updates.append(serial_of(source.get_x509_context().default_svid.leaf)))
        app.rotate()
        new = wait_for(lambda: (s := serial_of(source.get_x509_context().default_svid.leaf)) != old and s, ROTATION_TIMEOUT,
                       "the X509Source to see the rotation", app.agent.log_tail)
        assert new == app.sds_serial(), "the app's SVID after rotation is the one Envoy gets"
        assert updates and updates[-1] == new
        assert not source.is_closed()


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not this issuer"
        return False


def test_x509_bundles_stream(served):
    app = served.start("app", APP_ID)
    first = wait_for(lambda: next(stub(app.socket).FetchX509Bundles(
        workload_pb2.X509BundlesRequest(), metadata=[SECURITY_HEADER], timeout=5)), SOURCE_TIMEOUT, "bundles")
    assert set(first.bundles) == {f"spiffe://{TRUST_DOMAIN}"}
    with X509Source(socket_path=f"unix:{app.socket}", timeout_in_seconds=SOURCE_TIMEOUT) as source:
        svid_bundle = source.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
        der = b"".join(c.public_bytes(serialization_der()) for c in svid_bundle.x509_authorities)
        assert first.bundles[f"spiffe://{TRUST_DOMAIN}"] == der, "both streams carry the same bundle"


def serialization_der():
    from cryptography.hazmat.primitives import serialization
    return serialization.Encoding.DER


@pytest.mark.parametrize("method,request_message", [
    ("FetchX509SVID", workload_pb2.X509SVIDRequest()),
    ("FetchX509Bundles", workload_pb2.X509BundlesRequest()),
    ("FetchJWTBundles", workload_pb2.JWTBundlesRequest()),
    ("FetchJWTSVID", workload_pb2.JWTSVIDRequest(audience=["a"])),
    ("ValidateJWTSVID", workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="x.y.z")),
])
def test_call_without_security_header_is_invalid_argument(served, method, request_message):
    app = served.start("app", APP_ID)
    app.sds_serial()  # serving: the refusal is not a wait for the first SVID
    call = getattr(stub(app.socket), method)
    with pytest.raises(grpc.RpcError) as raised:
        response = call(request_message, timeout=5)
        if method.startswith("FetchX509") or method == "FetchJWTBundles":
            next(response)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
    assert "workload.spiffe.io" in raised.value.details()
    # The same call with the header is served (or, for JWT, at least not refused for the header).
    if method == "FetchX509SVID":
        assert next(call(request_message, metadata=[SECURITY_HEADER], timeout=5)).svids


def test_stream_waits_for_the_first_svid(agent_factory, short_dir):
    """Before the first SVID exists the stream is held open, not failed; the SVID goes out when it arrives."""
    upstream = WorkloadAPIServer(str(short_dir / "up.sock"), APP_ID).start()
    try:
        upstream.set_has_identity(False)
        agent = agent_factory.start(
            "app", APP_ID, ["--issuer", "workload-api", "--upstream-socket", f"unix://{upstream.socket_path}"])
        responses = stub(str(agent.socket_path)).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=[SECURITY_HEADER], timeout=60)
        received: queue.Queue = queue.Queue()

        def read():
            try:
                for response in responses:
                    received.put(response)
            except grpc.RpcError as error:
                received.put(error)

        threading.Thread(target=read, daemon=True).start()
        held_for = 2.0  # the upstream refuses for this long: nothing (no error either) may reach the app
        with pytest.raises(queue.Empty):
            received.get(timeout=held_for)
        upstream.set_has_identity(True)
        first = received.get(timeout=ROTATION_TIMEOUT)
        assert not isinstance(first, grpc.RpcError), first
        assert first.svids[0].spiffe_id == APP_ID
        responses.cancel()
    finally:
        upstream.stop()


# ------------------------------------------------------------------------------------------------------------------
# spiffe-tls: two applications, mTLS with SVIDs from our socket
# ------------------------------------------------------------------------------------------------------------------


class Peer:
    """spiffe_tls_peer.py as a child process; its JSON stdout lines are collected by a thread."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen([sys.executable, str(HERE / "spiffe_tls_peer.py"), *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def next_line(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output in {timeout}s; stderr: {self.stderr()}") from None

    def wait_json(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                record = json.loads(self.lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                break
            self.seen.append(record)
            if predicate(record):
                return record
        raise AssertionError(f"timed out waiting for {what}; last lines: {self.seen[-5:]}")

    def stderr(self) -> str:
        if self.process.poll() is None:
            return "(running)"
        return self.process.stderr.read()[-2000:]

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def test_spiffe_tls_mtls_keeps_connecting_after_rotation(served):
    server_agent = served.start("srv", SERVER_ID)
    client_agent = served.start("cli", CLIENT_ID)
    peers: list[Peer] = []
    try:
        server = Peer("server", server_agent.socket, CLIENT_ID)
        peers.append(server)
        line = server.next_line(SOURCE_TIMEOUT)
        assert line.startswith("port "), line
        port = line.split()[1]

        # A client that expects another server ID is refused by its own authorize_id.
        wrong = Peer("client", client_agent.socket, CLIENT_ID, port, "1")
        peers.append(wrong)
        refused = wrong.wait_json(lambda r: True, SOURCE_TIMEOUT, "the wrong-ID client's first attempt")
        assert "error" in refused, refused

        client = Peer("client", client_agent.socket, SERVER_ID, port, "90")
        peers.append(client)
        first = client.wait_json(lambda r: "server_serial" in r, SOURCE_TIMEOUT, "a first mTLS exchange")
        assert first["seen_server_serial"] == first["server_serial"] == server_agent.sds_serial()
        assert first["client_serial"] == first["own_serial"] == client_agent.sds_serial()

        server_agent.rotate()
        client_agent.rotate()
        after = client.wait_json(
            # The server's SSL context follows its X509Source a moment after the source itself changed.
            lambda r: "server_serial" in r and r["seen_server_serial"] == r["server_serial"] != first["server_serial"]
            and r["client_serial"] != first["client_serial"],
            ROTATION_TIMEOUT, "an mTLS exchange with both rotated SVIDs")
        assert after["seen_server_serial"] == after["server_serial"] == server_agent.sds_serial(), after
        assert after["client_serial"] == after["own_serial"] == client_agent.sds_serial()
        # And it keeps connecting.
        client.wait_json(lambda r: "server_serial" in r, 5, "another exchange")
        errors = [r for r in client.seen if "error" in r]
        assert not errors, f"connections failed around the rotation: {errors}"
    finally:
        for peer in peers:
            peer.stop()


# ------------------------------------------------------------------------------------------------------------------
# JWT-SVIDs: minted by the local CA, or relayed from the upstream (which mints its own)
# ------------------------------------------------------------------------------------------------------------------

import pathlib  # noqa: E402 - the JWT section's own imports

import jwt as pyjwt  # noqa: E402 - PyJWT, independent of py-spiffe's use of it
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from spiffe import JwtBundle, WorkloadApiClient  # noqa: E402
from spiffe.svid.jwt_svid import JwtSvid  # noqa: E402

AUDIENCE = "spiffe://example.org/ns/db/sa/postgres"
JWT_TTL = 20  # seconds (--jwt-ttl of the local CA runs)


def jwks_document(socket_path: str) -> bytes:
    """The JWT bundle of our trust domain as FetchJWTBundles streams it (raw JWKS bytes)."""
    response = next(stub(socket_path).FetchJWTBundles(
        workload_pb2.JWTBundlesRequest(), metadata=[SECURITY_HEADER], timeout=5))
    assert set(response.bundles) == {f"spiffe://{TRUST_DOMAIN}"}
    return response.bundles[f"spiffe://{TRUST_DOMAIN}"]


def local_signing_key(state_dir: pathlib.Path) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """The agent's current JWT key from its state dir (kid line, then PEM)."""
    text = (state_dir / "jwt-key.pem").read_text()
    kid = next(line[4:] for line in text.splitlines() if line.startswith("kid="))
    return kid, serialization.load_pem_private_key(text[text.index("-----BEGIN"):].encode(), None)


def issuing_key(app: Served) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """The key whose tokens the app's Workload API accepts: to forge tokens that differ from a real one in one
    claim only."""
    if app.upstream is not None:
        return app.upstream.state.jwt_kid, app.upstream.state.jwt_key
    return local_signing_key(app.agent.state_dir)


def test_jwt_svid_validates_with_the_jwt_bundle(served):
    app = served.start("app", APP_ID, ["--jwt-ttl", f"{JWT_TTL}s"])
    with WorkloadApiClient(f"unix:{app.socket}") as client:
        svid = wait_for(lambda: client.fetch_jwt_svid({AUDIENCE}), SOURCE_TIMEOUT, "a JWT-SVID")
        assert str(svid.spiffe_id) == APP_ID
        # py-spiffe's own verification, with the bundle from FetchJWTBundles.
        bundles = wait_for(client.fetch_jwt_bundles, SOURCE_TIMEOUT, "JWT bundles")
        bundle = bundles.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
        checked = JwtSvid.parse_and_validate(svid.token, bundle, {AUDIENCE})
        assert str(checked.spiffe_id) == APP_ID and checked.audience == {AUDIENCE}
    # Independently, PyJWT with the raw JWKS document.
    document = jwks_document(app.socket)
    jwks = pyjwt.PyJWKSet.from_json(document.decode())
    kid = pyjwt.get_unverified_header(svid.token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = pyjwt.decode(svid.token, key.key, algorithms=["ES256"], audience=AUDIENCE)
    assert claims["sub"] == APP_ID
    assert JwtBundle.parse(TrustDomain(TRUST_DOMAIN), document).jwt_authorities
    if app.upstream is None:
        assert 0 < claims["exp"] - claims["iat"] <= JWT_TTL, "--jwt-ttl"
    else:
        assert kid == app.upstream.state.jwt_kid, "relayed: the upstream's token"


def test_validate_jwt_svid_accepts_ours_and_rejects_forgeries(served):
    app = served.start("app", APP_ID)
    kid, real_key = issuing_key(app)
    now = int(time.time())

    def sign(key, claims, key_id=kid):
        return pyjwt.encode(claims, key, algorithm="ES256", headers={"kid": key_id, "typ": "JWT"})

    good_claims = {"sub": APP_ID, "aud": AUDIENCE, "iat": now, "exp": now + 60}
    with WorkloadApiClient(f"unix:{app.socket}") as client:
        ours = wait_for(lambda: client.fetch_jwt_svid({AUDIENCE}), SOURCE_TIMEOUT, "a JWT-SVID")
        assert str(client.validate_jwt_svid(ours.token, AUDIENCE).spiffe_id) == APP_ID
        # The forging harness is right: a token it signs with the real key and good claims is accepted.
        assert str(client.validate_jwt_svid(sign(real_key, good_claims), AUDIENCE).spiffe_id) == APP_ID

    raw = stub(app.socket)
    if app.upstream is None:
        # The claims come back too (google.protobuf.Struct), as SPIRE returns them.
        validated = raw.ValidateJWTSVID(workload_pb2.ValidateJWTSVIDRequest(audience=AUDIENCE, svid=ours.token),
                                        metadata=[SECURITY_HEADER], timeout=5)
        assert validated.spiffe_id == APP_ID
        assert validated.claims["sub"] == APP_ID and list(validated.claims["aud"]) == [AUDIENCE]
        assert validated.claims["exp"] == pyjwt.decode(ours.token, options={"verify_signature": False})["exp"]
    forgeries = {
        "signed by another key": (sign(ec.generate_private_key(ec.SECP256R1()), good_claims), AUDIENCE),
        "for another audience": (ours.token, "web"),
        "expired": (sign(real_key, {**good_claims, "iat": now - 120, "exp": now - 60}), AUDIENCE),
    }
    for what, (token, audience) in forgeries.items():
        with pytest.raises(grpc.RpcError) as raised:
            raw.ValidateJWTSVID(workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token),
                                metadata=[SECURITY_HEADER], timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {raised.value}"
    if app.upstream is not None:
        with app.upstream.state.cond:
            assert app.upstream.state.jwt_calls >= 2 + len(forgeries), "every JWT call went to the upstream"


def test_jwt_svid_is_cached_and_re_minted_at_half_life(agent_factory):
    agent = agent_factory.start("app", APP_ID, ["--jwt-ttl", f"{JWT_TTL}s"])
    with WorkloadApiClient(f"unix:{agent.socket_path}") as client:
        first = wait_for(lambda: client.fetch_jwt_svid({AUDIENCE}), SOURCE_TIMEOUT, "a JWT-SVID")
        assert client.fetch_jwt_svid({AUDIENCE}).token == first.token, "cached within its first half-life"
        other = client.fetch_jwt_svid({"another-audience"})
        assert other.token != first.token and other.audience == {"another-audience"}
        renewed = wait_for(lambda: (s := client.fetch_jwt_svid({AUDIENCE})).token != first.token and s,
                           JWT_TTL, "a re-minted JWT-SVID after half of --jwt-ttl")
        assert renewed.expiry > first.expiry


def test_relayed_jwt_call_without_upstream_is_unavailable_naming_it(agent_factory, short_dir):
    upstream = WorkloadAPIServer(str(short_dir / "up.sock"), APP_ID).start()
    try:
        agent = agent_factory.start(
            "app", APP_ID, ["--issuer", "workload-api", "--upstream-socket", f"unix://{upstream.socket_path}"])
        fetch = lambda: stub(str(agent.socket_path)).FetchJWTSVID(  # noqa: E731
            workload_pb2.JWTSVIDRequest(audience=["a"]), metadata=[SECURITY_HEADER], timeout=5)
        wait_for(fetch, SOURCE_TIMEOUT, "a relayed JWT-SVID")
        upstream.stop()

        def unavailable():
            try:
                fetch()
                return None
            except grpc.RpcError as error:
                return error if error.code() == grpc.StatusCode.UNAVAILABLE else None

        error = wait_for(unavailable, SOURCE_TIMEOUT, "UNAVAILABLE once the upstream is gone")
        assert upstream.socket_path in error.details() or "upstream" in error.details(), error.details()
    finally:
        upstream.stop()


# ------------------------------------------------------------------------------------------------------------------
# JWT-SVIDs for Envoy over SDS: `jwt-svid:<audience>` as a generic_secret
# ------------------------------------------------------------------------------------------------------------------

from sds_client import SecretStream, unpack_secrets  # noqa: E402
from test_sds_dump import dump  # noqa: E402

JWT_NAME = f"jwt-svid:{AUDIENCE}"  # the audience verbatim after the prefix, its ':' and '/' included


def token_of(secret) -> str:
    assert secret.HasField("generic_secret"), secret
    source = secret.generic_secret.secret
    return (source.inline_bytes or source.inline_string.encode()).decode()


def verify_with_jwks(token: str, socket_path: str) -> dict:
    jwks = pyjwt.PyJWKSet.from_json(jwks_document(socket_path).decode())
    kid = pyjwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    return pyjwt.decode(token, key.key, algorithms=["ES256"], audience=AUDIENCE)


@pytest.mark.parametrize("delta", [False, True], ids=["GRPC", "DELTA_GRPC"])
def test_jwt_svid_served_over_sds_as_generic_secret_and_re_minted(agent_factory, delta):
    agent = agent_factory.start("app", APP_ID, ["--jwt-ttl", "10s"])
    socket_path = str(agent.socket_path)
    with SecretStream(socket_path, delta=delta) as stream:
        if delta:
            stream.send(resource_names_subscribe=[JWT_NAME])
        else:
            stream.send(resource_names=[JWT_NAME])
        first = stream.recv()
        secrets = unpack_secrets(first.resources)
        first_token = token_of(secrets[JWT_NAME])
        claims = verify_with_jwks(first_token, socket_path)
        assert claims["sub"] == APP_ID and claims["aud"] == AUDIENCE
        ack = {"response_nonce": first.nonce}
        if not delta:
            ack.update(version_info=first.version_info, resource_names=[JWT_NAME])
        stream.send(**ack)
        # Pushed again before expiry: re-minted at half-life (5 s of 10 s).
        second = stream.recv(timeout=10)
        second_token = token_of(unpack_secrets(second.resources)[JWT_NAME])
        assert second_token != first_token
        renewed = verify_with_jwks(second_token, socket_path)
        assert renewed["exp"] > claims["exp"] and renewed["iat"] < claims["exp"], "pushed before the old one expired"


def test_sds_dump_shows_a_jwt_svid_without_the_token(agent_factory, sds_dump_bin, short_dir):
    agent = agent_factory.start("app", APP_ID)
    run = dump(sds_dump_bin, "--socket", agent.socket_path, "--json", JWT_NAME)
    assert run.code == 0, run
    [document] = run.documents()
    [report] = [s for s in document["secrets"] if s["name"] == JWT_NAME]
    assert report["kind"] == "generic_secret"
    assert report["jwt"]["sub"] == APP_ID and report["jwt"]["aud"] == [AUDIENCE]
    assert 0 < report["jwt"]["expires_in_seconds"] <= 300
    assert "eyJ" not in run.out, "the token itself is never printed"
    human = dump(sds_dump_bin, "--socket", agent.socket_path, JWT_NAME)
    assert f"JWT sub: {APP_ID}" in human.out and "eyJ" not in human.out
    pem_dir = short_dir / "pems"
    pem_dir.mkdir()
    written = dump(sds_dump_bin, "--socket", agent.socket_path, "--pem-dir", pem_dir, JWT_NAME)
    assert written.code == 0, written
    [path] = list(pem_dir.glob("*.secret"))
    assert (path.stat().st_mode & 0o777) == 0o600
    verify_with_jwks(path.read_text(), str(agent.socket_path))


# ------------------------------------------------------------------------------------------------------------------
# Real Envoys: credential_injector takes the JWT-SVID from SDS, jwt_authn verifies it with our JWT bundle
# ------------------------------------------------------------------------------------------------------------------

import http.server  # noqa: E402

from envoy_harness import EXAMPLES, Envoy, substitute  # noqa: E402


class App:
    """The application behind the server Envoy: records each request's headers, answers 200."""

    def __init__(self):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_envoy_injects_our_jwt_svid_and_the_server_envoy_verifies_it(agent_factory, envoy_bin, short_dir, api_type):
    agent = agent_factory.start("app", APP_ID, ["--jwt-ttl", "10s"])
    socket_path = str(agent.socket_path)
    jwks = jwks_document(socket_path).decode()
    app = App()
    envoys: list[Envoy] = []
    try:
        server = Envoy(envoy_bin, "server", substitute((EXAMPLES / "jwt-svid" / "server-envoy.yaml").read_text(), {
            "ADMIN_PORT": "0", "LISTENER_PORT": "0", "APP_PORT": str(app.port), "AUDIENCE": AUDIENCE,
            "JWKS": jwks}), short_dir / "envoy-server")
        envoys.append(server.start())
        server_port = server.listener_port("http_in")
        client = Envoy(envoy_bin, "client", substitute((EXAMPLES / "jwt-svid" / "client-envoy.yaml").read_text(), {
            "SDS_SOCKET": socket_path, "API_TYPE": api_type, "ADMIN_PORT": "0", "LISTENER_PORT": "0",
            "UPSTREAM_PORT": str(server_port), "AUDIENCE": AUDIENCE}), short_dir / "envoy-client")
        envoys.append(client.start())
        client_port = client.listener_port("http_in")

        # The app sends no credential; the client Envoy adds ours, the server Envoy verifies it.
        response = wait_for(lambda: (r := client.get(client_port, "/hello")).status == 200 and r, SOURCE_TIMEOUT,
                            "a request through both Envoys", client.diagnostics)
        assert response.status == 200
        first = app.seen[-1]
        assert first["x-spiffe-id"] == APP_ID, "the app sees our SPIFFE ID, verified by jwt_authn"
        assert "authorization" not in first, "jwt_authn keeps the token (forward: false)"

        # After a re-mint, Envoy sends the new token: the claims the server Envoy verified are the new token's.
        def current_token():
            return token_of(fetch_when_served(socket_path, [JWT_NAME])[JWT_NAME])

        def verified_claims():
            assert client.get(client_port, "/again").status == 200
            return json.loads(base64url_decode(app.seen[-1]["x-jwt-payload"]))

        old = current_token()
        assert verified_claims() == json.loads(base64url_decode(old.split(".")[1])), "Envoy sent the agent's token"
        renewed = wait_for(lambda: (t := current_token()) != old and t, 15, "a re-minted JWT-SVID")
        renewed_claims = json.loads(base64url_decode(renewed.split(".")[1]))
        wait_for(lambda: verified_claims() == renewed_claims, SOURCE_TIMEOUT, "Envoy to send the re-minted token",
                 client.diagnostics)
        assert app.seen[-1]["x-spiffe-id"] == APP_ID

        # A tampered token straight to the server Envoy is rejected; the real one is accepted.
        header, payload, signature = renewed.split(".")
        claims = json.loads(base64url_decode(payload))
        claims["sub"] = f"spiffe://{TRUST_DOMAIN}/ns/apps/sa/admin"
        forged = ".".join([header, base64url_encode(json.dumps(claims).encode()), signature])
        assert server.get(server_port, "/", {"authorization": f"Bearer {forged}"}).status == 401
        assert server.get(server_port, "/", {"authorization": f"Bearer {renewed}"}).status in (200,)
        assert server.get(server_port, "/").status == 401, "no token, no entry"
    finally:
        for envoy in reversed(envoys):
            envoy.stop()
        app.stop()


def base64url_decode(text: str) -> bytes:
    import base64
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def base64url_encode(data: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ------------------------------------------------------------------------------------------------------------------
# Footprint: the Workload API in use keeps the agent within its idle RSS budget
# ------------------------------------------------------------------------------------------------------------------

IDLE_RSS_BUDGET_KB = 12 * 1024  # the agent's idle RSS goal (docs/performance.md)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_idle_rss_with_the_workload_api_in_use(agent_factory):
    agent = agent_factory.start("app", APP_ID)
    socket_path = str(agent.socket_path)
    with X509Source(socket_path=f"unix:{socket_path}", timeout_in_seconds=SOURCE_TIMEOUT) as source, \
            WorkloadApiClient(f"unix:{socket_path}") as client, \
            SecretStream(socket_path, delta=False) as envoy_like:
        envoy_like.send(resource_names=["default", "ROOTCA", JWT_NAME])
        envoy_like.recv()
        for audience in ("db", "cache", AUDIENCE):
            client.validate_jwt_svid(client.fetch_jwt_svid({audience}).token, audience)
        bundles = stub(socket_path).FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=[SECURITY_HEADER])
        next(bundles)
        assert source.get_x509_context().default_svid
        time.sleep(2)  # idle: nothing to await, the measurement is of the held state
        rss = rss_kb(agent.process.pid)
        bundles.cancel()
    print(f"\nidle RSS with X509Source + JWT bundles stream + SDS stream + 3 cached JWT-SVIDs: {rss / 1024:.1f} MB")
    assert rss <= IDLE_RSS_BUDGET_KB, f"idle RSS {rss} KB over the {IDLE_RSS_BUDGET_KB} KB budget"


# ------------------------------------------------------------------------------------------------------------------
# --issuer istiod: X.509 from istiod on the Workload API too; JWT calls UNAVAILABLE, saying why
# ------------------------------------------------------------------------------------------------------------------

from test_istiod_issuer import agents, istiod  # noqa: E402,F401 - fixtures: the fake istiod and its agents


def test_istiod_issuer_serves_x509_and_refuses_jwt_naming_why(istiod, agents):  # noqa: F811
    agent = agents("app", APP_ID, istiod)
    socket_path = str(agent.socket_path)
    with X509Source(socket_path=f"unix:{socket_path}", timeout_in_seconds=SOURCE_TIMEOUT) as source:
        assert str(source.get_x509_context().default_svid.spiffe_id) == APP_ID
        assert serial_of(source.get_x509_context().default_svid.leaf) == agent.serial()
    for call, request in (("FetchJWTSVID", workload_pb2.JWTSVIDRequest(audience=["db"])),
                          ("ValidateJWTSVID", workload_pb2.ValidateJWTSVIDRequest(audience="db", svid="a.b.c"))):
        with pytest.raises(grpc.RpcError) as raised:
            getattr(stub(socket_path), call)(request, metadata=[SECURITY_HEADER], timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "istiod" in raised.value.details() and "JWT" in raised.value.details()
