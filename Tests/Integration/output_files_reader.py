"""An application that reads sds-agent's `--output-dir` files when told to (`--output-signal <pidfile>:SIGHUP`).

    python output_files_reader.py <output dir> <istio|spiffe-helper> <pid file> <results file>

It installs its SIGHUP handler, then writes its PID to <pid file> (so the agent's first signal cannot kill it), and
waits. Each SIGHUP reads the three files at once and appends one JSON line to <results file>:

    {"n": 1, "t": <unix time>, "serial": "<leaf serial, hex>", "key_matches": true, "chain_verifies": true,
     "roots": 1, "error": null}

`key_matches`: the private key's public key is the leaf's. `chain_verifies`: the chain file's leaf (with the rest of
the chain as intermediates) verifies against the roots file, now, as a client certificate (cryptography's X.509
path validation). An unreadable or unparsable file is `error` with both checks false. SIGTERM ends it.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification

NAMES = {
    "istio": ("key.pem", "cert-chain.pem", "root-cert.pem"),
    "spiffe-helper": ("svid_key.pem", "svid.pem", "svid_bundle.pem"),
}


def public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check(directory: str, layout: str) -> dict:
    key_name, chain_name, roots_name = NAMES[layout]
    record = {"serial": "", "key_matches": False, "chain_verifies": False, "roots": 0, "error": None}
    try:
        with open(os.path.join(directory, key_name), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        with open(os.path.join(directory, chain_name), "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
        with open(os.path.join(directory, roots_name), "rb") as f:
            roots = x509.load_pem_x509_certificates(f.read())
    except Exception as e:  # noqa: BLE001 - a missing or half-written file is what this reader exists to catch
        record["error"] = f"{type(e).__name__}: {e}"
        return record
    record["serial"] = format(chain[0].serial_number, "x")
    record["roots"] = len(roots)
    record["key_matches"] = public_der(key.public_key()) == public_der(chain[0].public_key())
    try:
        verifier = verification.PolicyBuilder().store(verification.Store(roots)).build_client_verifier()
        verifier.verify(chain[0], chain[1:])
        record["chain_verifies"] = True
    except Exception as e:  # noqa: BLE001
        record["error"] = f"verify: {type(e).__name__}: {e}"
    return record


def main() -> int:
    directory, layout, pid_file, results = sys.argv[1:5]
    pending = 0

    # The handler only counts: reading in it would let a second signal run a second read inside the first (Python
    # handlers interrupt each other), which is not what an application with one reader thread does.
    def on_hup(signum, frame):
        nonlocal pending
        pending += 1

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Every signal also writes a byte here, so one that arrives between the check below and the wait is not missed.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    tmp = pid_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename(tmp, pid_file)
    done = 0
    while True:
        while done < pending:
            done += 1
            record = {"n": done, "t": time.time(), **check(directory, layout)}
            with open(results, "a") as f:
                f.write(json.dumps(record) + "\n")
        select.select([wake_r], [], [])
        os.read(wake_r, 4096)


if __name__ == "__main__":
    sys.exit(main())
