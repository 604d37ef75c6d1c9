"""Every bootstrap in Examples/ is one Envoy 1.40 accepts (`envoy --mode validate`) once its placeholders are filled,
and keeps the shape ENVOY-SDS-FACTS.md prescribes."""
from __future__ import annotations

import json
import re
import subprocess

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from envoy_harness import EXAMPLES, substitute

STYLES = ("istio", "spire", "spire-all")
# Directories that are not <style>-<sotw|delta>: their name style and api_type. federation/ (two trust domains, see
# test_examples_federation.py) uses Istio's names, ROOTCA being every trust domain's bundle.
VARIANTS = {"federation": ("istio", "GRPC")}
EXPECTED = sorted([f"{style}-{mode}/{role}-envoy.yaml"
                   for style in STYLES for mode in ("sotw", "delta") for role in ("server", "client")]
                  + [f"{directory}/{role}-envoy.yaml" for directory in VARIANTS for role in ("server", "client")])
# Examples/kubernetes/ holds Kubernetes manifests, not Envoy bootstraps: test_examples_kubernetes.py checks them.
# Examples/jwt-svid/ is about JWT-SVIDs (credential_injector, jwt_authn), not SDS TLS contexts: validated below.
JWT_BOOTSTRAPS = ["jwt-svid/client-envoy.yaml", "jwt-svid/server-envoy.yaml"]
BOOTSTRAPS = sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.yaml")
                    if p.relative_to(EXAMPLES).parts[0] not in ("kubernetes", "jwt-svid"))

SAMPLE_VALUES = {
    "SDS_SOCKET": "/run/sds-agent/sds.sock",
    "ADMIN_PORT": "9901",
    "LISTENER_PORT": "10000",
    "UPSTREAM_PORT": "10001",
    "PEER_SPIFFE_ID": "spiffe://example.org/ns/default/sa/peer",
    "SPIFFE_ID": "spiffe://example.org/ns/default/sa/default",
    "TRUST_DOMAIN": "example.org",
    "API_TYPE": "GRPC",
    "APP_PORT": "10002",
    "AUDIENCE": "spiffe://example.org/ns/db/sa/postgres",
    # jwt_authn refuses a JWKS without a usable key: a fresh P-256 public key, as FetchJWTBundles carries one.
    "JWKS": json.dumps({"keys": [{**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(
        ec.generate_private_key(ec.SECP256R1()).public_key())), "kid": "sample", "use": "jwt-svid"}]}),
}


def test_every_variant_exists():
    assert [b for b in EXPECTED if b not in BOOTSTRAPS] == []


def test_every_bootstrap_is_a_known_variant():
    """A new directory must join EXPECTED (and so the name checks below), not slip in unchecked."""
    assert [b for b in BOOTSTRAPS if b not in EXPECTED] == []


@pytest.mark.parametrize("bootstrap", BOOTSTRAPS + JWT_BOOTSTRAPS)
def test_example_passes_envoy_validate(bootstrap, envoy_bin, tmp_path):
    config = tmp_path / "bootstrap.yaml"
    config.write_text(substitute((EXAMPLES / bootstrap).read_text(), SAMPLE_VALUES))
    result = subprocess.run(
        [envoy_bin, "--mode", "validate", "-c", str(config), "--disable-hot-restart", "-l", "warning"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"{bootstrap}:\n{result.stdout}\n{result.stderr}"
    assert "OK" in result.stdout + result.stderr


@pytest.mark.parametrize("bootstrap", BOOTSTRAPS)
def test_example_follows_the_sds_facts(bootstrap):
    text = (EXAMPLES / bootstrap).read_text()
    directory = bootstrap.split("/")[0]
    if directory in VARIANTS:
        style, api_type = VARIANTS[directory]
    else:
        style, mode = directory.rsplit("-", 1)
        api_type = {"sotw": "GRPC", "delta": "DELTA_GRPC"}[mode]
    assert re.findall(r"api_type: (\S+)", text) == [api_type], "one api_type, the variant's"
    # SDS through ADS crashes Envoy 1.40 with static clusters: never offer it.
    assert "ads_config" not in text and "ads: {}" not in text
    for needle in ("transport_api_version: V3", "set_node_on_first_message_only: true",
                   "initial_fetch_timeout: 0s", "cluster_name: sds-grpc", "path: ${SDS_SOCKET}",
                   "http2_protocol_options: {}"):
        assert needle in text, f"{bootstrap} lacks {needle!r}"
    # Only loopback: admin and listeners.
    addresses = re.findall(r"address: ([0-9.:a-z]+),", text)
    assert addresses and set(addresses) == {"127.0.0.1"}, addresses
    validation = re.findall(r"validation_context_sds_secret_config:\n\s+name: (\S+)", text)
    if style == "istio":
        assert '- name: "default"' in text and validation == ['"ROOTCA"']
        assert "${SPIFFE_ID}" not in text and "${TRUST_DOMAIN}" not in text, "Istio's names name no identity"
    elif style == "spire":
        assert '- name: "${SPIFFE_ID}"' in text and validation == ['"spiffe://${TRUST_DOMAIN}"']
    else:
        # ALL carries a custom_validator_config (Envoy's SPIFFE validator), no trusted_ca: it must come through
        # combined_validation_context, whose default_validation_context keeps the exact SAN check.
        assert style == "spire-all", directory
        assert '- name: "${SPIFFE_ID}"' in text and validation == ['"ALL"']
        assert "${TRUST_DOMAIN}" not in text, "ALL names no trust domain"
    assert "combined_validation_context:" in text and "default_validation_context:" in text
    assert re.search(r"match_typed_subject_alt_names:\n\s+- san_type: URI\n\s+matcher:\n\s+exact: "
                     r'"\$\{PEER_SPIFFE_ID\}"', text), "the peer's exact SPIFFE ID is checked"
