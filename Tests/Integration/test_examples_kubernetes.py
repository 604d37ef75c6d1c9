"""Examples/kubernetes/ manifests: no cluster runs them here, so they are held to their invariants instead.

- They parse (PyYAML) and every object has apiVersion, kind and a name.
- sds-agent is a native sidecar (init container, restartPolicy Always, startupProbe): it serves before istio-proxy
  starts, which is when istio-agent decides whether the SDS socket is someone else's.
- The socket is Istio's path (/var/run/secrets/workload-spiffe-uds/socket), on one emptyDir mounted in sds-agent and
  istio-proxy; sds-agent runs under a UID of its own with istio-proxy's group, the socket is 0660 and --allow-uid
  admits istio-proxy's UID 1337; no volume sds-agent keeps secrets on is mounted in istio-proxy, and no CA key is
  handed to any pod.
- TRUST_DOMAIN, POD_NAMESPACE and SERVICE_ACCOUNT reach sds-agent (the last two from the downward API).
- Every flag is one `sds-agent run --help` lists; every probe is `sds-agent healthcheck --socket <the socket>` (gRPC
  health, no port), whose own 2 s limit is shorter than the probe's timeoutSeconds.
- A rehearsal runs each manifest's own command, env and probe against the real binaries, with every volume mapped to
  a scratch directory: the probe passes and the SVID names the pod's namespace and service account.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess

import pytest
import yaml
from cryptography import x509

from envoy_harness import EXAMPLES, START_TIMEOUT, wait_for
from sds_servers import fetch_when_served, socket_accepts

KUBERNETES = EXAMPLES / "kubernetes"
MANIFESTS = {"sds-agent-istio.yaml": "local", "sds-agent-spire.yaml": "workload-api",
             "sds-agent-istiod.yaml": "istiod"}
ISTIO_TOKEN = "/var/run/secrets/tokens/istio-token"
ISTIO_ROOT_CERT = "/var/run/secrets/istio/root-cert.pem"

SOCKET_DIR = "/var/run/secrets/workload-spiffe-uds"  # where Istio's Envoy bootstrap dials SDS
SOCKET = f"{SOCKET_DIR}/socket"
ISTIO_PROXY_UID = 1337
DOWNWARD_API = {"POD_NAMESPACE": "metadata.namespace", "SERVICE_ACCOUNT": "spec.serviceAccountName"}
SPIRE_SOCKET = "unix:///run/spire/sockets/agent.sock"

# The rehearsal's pod: the namespace the downward API would report.
REHEARSAL_NAMESPACE = "shop"

UPSTREAM_READY = os.environ.get("SDS_UPSTREAM_READY", "1") == "1"  # as test_upstream_workload_api.py


# ------------------------------------------------------------------------------------------------------------------
# Reading a manifest
# ------------------------------------------------------------------------------------------------------------------


def load(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc is not None]


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


def test_every_manifest_is_known_and_documented():
    assert sorted(p.name for p in KUBERNETES.glob("*.yaml")) == sorted(MANIFESTS)
    readme = (EXAMPLES / "README.md").read_text()
    for name in MANIFESTS:
        assert f"kubernetes/{name}" in readme, f"Examples/README.md does not mention {name}"


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_parses_into_named_objects(name):
    docs = load(name)
    assert docs
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc


@pytest.mark.parametrize("name", MANIFESTS)
def test_sds_agent_is_a_native_sidecar_started_and_probed_first(name):
    spec = pod_spec(name)
    assert [c["name"] for c in spec.get("initContainers", [])][:1] == ["sds-agent"], "sds-agent: first init container"
    assert "sds-agent" not in [c["name"] for c in spec["containers"]]
    c = sds_agent(name)
    assert c.get("restartPolicy") == "Always", "a native sidecar: restartPolicy Always on the init container"
    assert set(probes(c)) == {"startupProbe", "readinessProbe", "livenessProbe"}


@pytest.mark.parametrize("name", MANIFESTS)
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


@pytest.mark.parametrize("name", MANIFESTS)
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


@pytest.mark.parametrize("name", MANIFESTS)
def test_identity_env_comes_from_the_pod(name):
    env = {e["name"]: e for e in sds_agent(name)["env"]}
    assert env["TRUST_DOMAIN"].get("value"), "TRUST_DOMAIN needs a value"
    for var, field in DOWNWARD_API.items():
        assert env[var].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == field, var


@pytest.mark.parametrize("name", MANIFESTS)
def test_issuer_and_its_volumes(name):
    spec, agent = pod_spec(name), sds_agent(name)
    flags = agent_flags(agent)
    assert flags["--log-format"] == "json"
    if MANIFESTS[name] == "local":
        assert "--issuer" not in flags or flags["--issuer"] == "local"
        assert volume(spec, mount_of(agent, flags["--state-dir"])).get("emptyDir") is not None
        # The state dir is one the agent creates (0700), not the emptyDir's world-writable mount point itself.
        assert flags["--state-dir"] not in mounts(agent)
    elif MANIFESTS[name] == "istiod":
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
        # Neither volume is writable by the agent, and the token is not in istio-proxy's mounts through ours.
        assert all(m.get("readOnly") for m in agent["volumeMounts"] if m["name"] in ("istio-token", "istiod-ca-cert"))
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


@pytest.mark.parametrize("name", MANIFESTS)
def test_flags_and_env_are_sds_agents(name, sds_agent_bin):
    text = help_text(sds_agent_bin, "run")
    for flag in agent_flags(sds_agent(name)):
        assert re.search(rf"^\s+{re.escape(flag)} ", text, re.M), f"sds-agent run has no {flag}"
    for env in sds_agent(name)["env"]:
        assert re.search(rf"\b{env['name']}\b", text), f"sds-agent run --help never mentions {env['name']}"


# HealthCheckClient.timeout: how long `sds-agent healthcheck` waits for an answer before it exits 1.
HEALTHCHECK_TIMEOUT = 2.0


@pytest.mark.parametrize("name", MANIFESTS)
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


def test_istio_manifest_rehearsal(short_dir, sds_agent_bin, sds_dump_bin):
    name = "sds-agent-istio.yaml"
    r = Rehearsal(name, short_dir, sds_agent_bin, sds_dump_bin)
    try:
        r.start()
        assert_serves_the_pod_identity(r)
    finally:
        r.stop()


@pytest.mark.skipif(not UPSTREAM_READY, reason="SDS_UPSTREAM_READY=0: upstream tests skipped on request")
def test_spire_manifest_rehearsal(short_dir, sds_agent_bin, sds_dump_bin):
    from workload_api_server import WorkloadAPIServer

    name = "sds-agent-spire.yaml"
    r = Rehearsal(name, short_dir, sds_agent_bin, sds_dump_bin)
    upstream_path = r.local(agent_flags(r.agent)["--upstream-socket"]).removeprefix("unix://")
    upstream = WorkloadAPIServer(upstream_path, r.expected_spiffe_id(), r.env()["TRUST_DOMAIN"]).start()
    try:
        r.start()
        assert_serves_the_pod_identity(r)
    finally:
        r.stop()
        upstream.stop()


def test_istiod_manifest_rehearsal(short_dir, sds_agent_bin, sds_dump_bin):
    """The manifest's container against the fake istiod: the token and root-cert volumes hold what kubelet would put
    there, CA_ADDR points at the fake (its certificate names istiod.istio-system.svc and 127.0.0.1)."""
    from fake_istiod import FakeIstiod

    name = "sds-agent-istiod.yaml"
    r = Rehearsal(name, short_dir, sds_agent_bin, sds_dump_bin)
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
