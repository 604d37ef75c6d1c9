"""The OCI image `make image` writes (.build/image): its config and layer as a registry would serve them, and the
image running under podman from Debian the way a kubelet would run it (non-root, read-only root filesystem, no
capabilities, no network), with the socket and the state on a host directory.

`make integration` builds the image first; `$SDS_IMAGE_DIR` points at another one.
"""
from __future__ import annotations

import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import tarfile
import tempfile
import time

import grpc
import pytest

from conftest import ROOT
from envoy_harness import START_TIMEOUT, HarnessError, wait_for
from sds_client import SecretStream
from sds_servers import fetch_secrets

IMAGE_DIR = pathlib.Path(os.environ.get("SDS_IMAGE_DIR", ROOT / ".build" / "image"))
IMAGE_UID = 10101  # the Makefile's IMAGE_UID; the Kubernetes examples run the agent under it
ENTRYPOINT = ["/usr/local/bin/sds-agent", "run"]
AGENT = "usr/local/bin/sds-agent"
DUMP = "usr/local/bin/sds-dump"  # a link to sds-agent, which is sds-dump when called by that name
TRUST_STORE = "etc/ssl/certs/ca-certificates.crt"  # what `file-root:system` serves
# Directories the agent writes by default (--state-dir, --socket's directory): the only entries it owns.
AGENT_OWNED = {"var/lib/sds-agent": 0o700, "run/secrets/workload-spiffe-uds": 0o755}
LABELS = ("source", "version", "revision", "licenses", "title", "created")
# podman from Debian on this machine kind: crun fails here and podman's default ulimits exceed what is permitted.
PODMAN_RUNTIME = ["--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                  "--events-backend", "none"]
PODMAN_LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
DRAIN_TIMEOUT = 5.0
# Bounds on podman itself: loading 35 MB into a fresh vfs store and starting a container take ~1 s here.
PODMAN_TIMEOUT = 60


def layout() -> pathlib.Path:
    oci = IMAGE_DIR / "oci"
    if not (oci / "index.json").exists():
        pytest.fail(f"{oci} missing: run `make image` (or `make integration`)")
    return oci


def archive() -> pathlib.Path:
    (path,) = IMAGE_DIR.glob("*.tar") or [None]
    if path is None:
        pytest.fail(f"no docker-archive in {IMAGE_DIR}: run `make image`")
    return path


def skopeo_inspect(*args: str) -> dict:
    result = subprocess.run(["skopeo", "inspect", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def blob(oci: pathlib.Path, digest: str) -> bytes:
    algorithm, hex_digest = digest.split(":")
    return (oci / "blobs" / algorithm / hex_digest).read_bytes()


def manifest() -> dict:
    oci = layout()
    (entry,) = json.loads((oci / "index.json").read_text())["manifests"]
    return json.loads(blob(oci, entry["digest"]))


def layer() -> tarfile.TarFile:
    (only,) = manifest()["layers"]
    return tarfile.open(fileobj=io.BytesIO(blob(layout(), only["digest"])), mode="r:*")


def readelf(path: pathlib.Path, *options: str) -> str:
    return subprocess.run(["readelf", "-W", *options, str(path)], capture_output=True, text=True, check=True,
                          timeout=30).stdout


def build_id(path: pathlib.Path) -> str:
    match = re.search(r"Build ID: ([0-9a-f]+)", readelf(path, "-n"))
    assert match, f"{path} has no build ID"
    return match.group(1)


# ------------------------------------------------------------------------------------------------------------------
# What a registry serves: config and layer
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["oci", "docker-archive"])
def test_config_runs_sds_agent_as_a_non_root_uid_with_oci_labels(transport):
    reference = f"oci:{layout()}" if transport == "oci" else f"docker-archive:{archive()}"
    config = skopeo_inspect("--config", reference)["config"]
    assert config["Entrypoint"] == ENTRYPOINT
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}", "non-root, numeric (runAsNonRoot cannot check a name)"
    assert config.get("StopSignal") == "SIGTERM", "SIGTERM drains"
    labels = skopeo_inspect(reference)["Labels"]
    for label in LABELS:
        assert labels.get(f"org.opencontainers.image.{label}"), f"label org.opencontainers.image.{label} missing"


def test_layer_holds_the_static_binary_the_trust_store_and_nothing_to_run_a_shell_with(tmp_path, sds_agent_bin):
    with layer() as tar:
        members = {m.name.removeprefix("./").rstrip("/"): m for m in tar.getmembers()}
        files = sorted(name for name, m in members.items() if not m.isdir())
        assert files == sorted([AGENT, DUMP, TRUST_STORE, "etc/passwd", "etc/group"])
        assert members[DUMP].issym() and members[DUMP].linkname == "sds-agent", "one binary, two names"
        for name, member in members.items():
            assert not member.mode & 0o6000, f"{name}: setuid/setgid"
            if name in AGENT_OWNED:
                assert (member.uid, member.gid, member.mode & 0o777) == (IMAGE_UID, IMAGE_UID, AGENT_OWNED[name])
            else:
                assert (member.uid, member.gid) == (0, 0), f"{name}: the agent must not own what it runs"
                assert member.issym() or not member.mode & 0o022, f"{name}: writable by group or others"
        assert f"sds-agent:x:{IMAGE_UID}:{IMAGE_UID}:" in tar.extractfile(members["etc/passwd"]).read().decode()
        assert tar.extractfile(members[TRUST_STORE]).read() == pathlib.Path("/", TRUST_STORE).read_bytes()
        extracted = tmp_path / "sds-agent"
        extracted.write_bytes(tar.extractfile(members[AGENT]).read())
        assert "program interpreter" not in readelf(extracted, "-l"), "sds-agent is not static"
        assert ".symtab" not in readelf(extracted, "-S"), "sds-agent is not stripped"
        assert build_id(extracted) == build_id(sds_agent_bin), f"not {sds_agent_bin}: stale image, run `make image`"


def manifest_digest(oci: pathlib.Path) -> str:
    (entry,) = json.loads((oci / "index.json").read_text())["manifests"]
    return entry["digest"]


def test_the_same_binary_and_commit_give_the_same_digest(sds_agent_bin, tmp_path):
    """Rebuilt elsewhere from what the image says about itself (labels, user), the image is the same, byte for byte:
    owners, modes, order and timestamps are fixed, nothing of the build machine's clock or paths gets in."""
    assert sds_agent_bin.name == "sds-agent", "make-image.sh takes RELEASE_DIR/sds-agent"
    labels = skopeo_inspect(f"oci:{layout()}")["Labels"]

    def label(key: str) -> str:
        return labels[f"org.opencontainers.image.{key}"]
    created = subprocess.run(["date", "-u", "-d", label("created"), "+%s"], capture_output=True, text=True,
                             check=True).stdout.strip()
    env = {**os.environ, "RELEASE_DIR": str(sds_agent_bin.parent), "OUT": str(tmp_path / "image"),
           "IMAGE_NAME": label("title"), "IMAGE_VERSION": label("version"), "IMAGE_UID": str(IMAGE_UID),
           "IMAGE_SOURCE": label("source"), "IMAGE_REVISION": label("revision"), "IMAGE_LICENSES": label("licenses"),
           "SOURCE_DATE_EPOCH": created}
    result = subprocess.run([str(ROOT / "Examples" / "image" / "make-image.sh")], env=env, capture_output=True, text=True,
                            timeout=PODMAN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert manifest_digest(tmp_path / "image" / "oci") == manifest_digest(layout())


# ------------------------------------------------------------------------------------------------------------------
# Run under podman
# ------------------------------------------------------------------------------------------------------------------


class Podman:
    """podman with its own storage under /tmp (nothing of the host's images or containers is touched)."""

    def __init__(self):
        self.base = pathlib.Path(tempfile.mkdtemp(prefix="sds-pm-", dir="/tmp"))
        self.argv = ["podman", "--root", str(self.base / "root"), "--runroot", str(self.base / "run"),
                     "--tmpdir", str(self.base / "tmp"), *PODMAN_RUNTIME]

    def __call__(self, *args: str, timeout: float = PODMAN_TIMEOUT) -> str:
        result = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.returncode}\n{result.stderr}"
        return result.stdout

    def close(self):
        subprocess.run([*self.argv, "rm", "--all", "--force"], capture_output=True, timeout=PODMAN_TIMEOUT)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def podman():
    if os.geteuid() != 0:
        pytest.skip("needs root: rootless podman maps UID 10101 to another host UID than the mounted directory's")
    p = Podman()
    yield p
    p.close()


def test_image_serves_the_host_over_a_mounted_socket_and_drains_on_sigterm(podman, short_dir, sds_dump_bin):
    loaded = podman("load", "--quiet", "--input", str(archive()))
    image = loaded.strip().removeprefix("Loaded image: ").split(", ")[0]
    # The container runs as 10101: the mounted directory must be its own. The state dir is one the agent creates
    # below it (0700), as on a Kubernetes emptyDir.
    short_dir.chmod(0o711)  # the host's sds-dump, run as 10101 below, passes through to the socket
    volume = short_dir / "volume"
    volume.mkdir(mode=0o700)
    os.chown(volume, IMAGE_UID, IMAGE_UID)
    socket_path, state_dir = volume / "sds.sock", volume / "state"
    name = f"sds-it-{os.getpid()}"
    log_path = short_dir / "container.log"
    argv = [*podman.argv, "run", "--rm", "--name", name, "--network", "none", *PODMAN_LIMITS,
            "--read-only", "--cap-drop", "all", "--security-opt", "no-new-privileges",
            "--volume", f"{volume}:/run/sds", "--env", "TRUST_DOMAIN=example.org", image,
            # the host's test client runs as root: admitted by UID; sds-dump below runs as the agent's own UID
            "--socket", "/run/sds/sds.sock", "--state-dir", "/run/sds/state", "--allow-uid", "0",
            "--drain-timeout", f"{DRAIN_TIMEOUT:g}s"]
    with open(log_path, "wb") as log:
        container = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    stream = None
    try:
        def log_text():
            return log_path.read_text(errors="replace")

        def served():
            if container.poll() is not None:
                raise HarnessError(f"the container exited with {container.returncode}:\n{log_text()}")
            return fetch_secrets(socket_path, ["default", "ROOTCA"])
        wait_for(served, START_TIMEOUT, f"the container to serve on {socket_path}", log_text)

        # What the agent made, seen from the host: its UID, the modes it promises.
        assert (socket_path.stat().st_uid, socket_path.stat().st_mode & 0o777) == (IMAGE_UID, 0o600)
        assert (state_dir.stat().st_uid, state_dir.stat().st_mode & 0o777) == (IMAGE_UID, 0o700)
        assert (state_dir / "ca.key").stat().st_uid == IMAGE_UID

        # The host's sds-dump under the agent's UID (admitted without --allow-uid) gets what Envoy would.
        dump = subprocess.run(["setpriv", "--reuid", str(IMAGE_UID), "--regid", str(IMAGE_UID), "--clear-groups",
                               str(sds_dump_bin), "--socket", str(socket_path), "--json", "default", "ROOTCA"],
                              capture_output=True, text=True, timeout=30)
        assert dump.returncode == 0, f"{dump.stdout}{dump.stderr}\n{log_text()}"
        kinds = {s["name"]: s["kind"] for line in dump.stdout.splitlines() for s in json.loads(line)["secrets"]}
        assert kinds == {"default": "certificate", "ROOTCA": "validation_context"}, dump.stdout

        # The Kubernetes examples' probe, run inside the container as kubelet would (exec, as the image's user).
        probe = podman("exec", name, "/usr/local/bin/sds-agent", "healthcheck", "--socket", "/run/sds/sds.sock")
        assert "SERVING" in probe, probe
        # And the image's sds-dump, for a look from inside.
        dumped = podman("exec", name, "/usr/local/bin/sds-dump", "--fetch", "--socket", "/run/sds/sds.sock", "default")
        assert "default: certificate" in dumped, dumped

        # A stream open while SIGTERM arrives (through `podman stop`, the image's StopSignal) ends UNAVAILABLE,
        # and the container exits 0 before the drain timeout.
        stream = SecretStream(socket_path, delta=False)
        stream.send(resource_names=["default"])
        assert stream.recv().resources
        started = time.monotonic()
        podman("stop", "--time", str(int(DRAIN_TIMEOUT) + 5), name)
        assert final_status(stream, DRAIN_TIMEOUT) == grpc.StatusCode.UNAVAILABLE
        code = container.wait(timeout=DRAIN_TIMEOUT + 5)
        took = time.monotonic() - started
        assert code == 0, f"exit {code}\n{log_text()}"
        assert took < DRAIN_TIMEOUT, f"stopping took {took:.1f}s: it waited for a timeout, not for its peers"
        assert not socket_path.exists(), "the socket is removed when the agent stops accepting"
    finally:
        if stream is not None:
            stream.close()
        if container.poll() is None:
            container.kill()
            container.wait()


def final_status(stream: SecretStream, timeout: float):
    """The status the stream ended with (its reader thread queues the RpcError), waiting at most `timeout`."""
    def ended():
        item = stream._responses.get(timeout=0.1)
        return item.code() if isinstance(item, grpc.RpcError) else None
    return wait_for(ended, timeout, "the stream to end")
