"""An application beside Envoy, written the way spiffe-tls users write one: an `X509Source` on the SPIFFE Workload
API socket ($SPIFFE_ENDPOINT_SOCKET style) feeding an mTLS server or client that authorizes its peer by SPIFFE ID.

    python spiffe_tls_peer.py server <workload-api-socket> <authorized-client-id>
        prints `port N`, then serves forever: each connection gets one JSON line naming both sides' serials
    python spiffe_tls_peer.py client <workload-api-socket> <authorized-server-id> <port> <seconds>
        connects every 0.2 s for <seconds>; prints one JSON line per attempt (what the server said, or the error)

Both sides take their SVID and bundle from the socket only; the test rotates the agents and watches the lines.
"""
from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time

from OpenSSL import SSL

from spiffe import SpiffeId, X509Source
from spiffetls import create_ssl_context, dial
from spiffetls.tlsconfig.authorize import authorize_id

CONNECT_INTERVAL = 0.2  # seconds between client connections
SOURCE_TIMEOUT = 20.0  # seconds to wait for the first SVID


def own_serial(source: X509Source) -> str:
    return format(source.svid.leaf.serial_number, "x")


def serve(socket_path: str, client_id: str) -> int:
    source = X509Source(socket_path=f"unix:{socket_path}", timeout_in_seconds=SOURCE_TIMEOUT)
    authorize = authorize_id(SpiffeId(client_id))
    verify = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT

    # spiffe-tls's listen() reloads its one SSL context when the source rotates, which pyOpenSSL >= 25 refuses for
    # a context already in use ("it cannot be mutated again"): its server would keep the first SVID for ever. So this
    # server builds a fresh context with spiffe-tls's create_ssl_context after each rotation instead.
    rotated = threading.Event()
    source.subscribe_for_updates(rotated.set)
    context = create_ssl_context(SSL.TLS_SERVER_METHOD, source, authorize, verify)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(f"port {listener.getsockname()[1]}", flush=True)
    while True:
        raw, _ = listener.accept()
        if rotated.is_set():
            rotated.clear()
            context = create_ssl_context(SSL.TLS_SERVER_METHOD, source, authorize, verify)
        conn = SSL.Connection(context, raw)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            peer = conn.get_peer_certificate()
            reply = {"server_serial": own_serial(source), "client_serial": format(peer.get_serial_number(), "x")}
            conn.sendall((json.dumps(reply) + "\n").encode())
            conn.shutdown()
        except Exception as error:  # a refused peer must not stop the server
            print(json.dumps({"server_error": str(error)}), flush=True)
        finally:
            conn.close()


def connect(socket_path: str, server_id: str, port: int, seconds: float) -> int:
    source = X509Source(socket_path=f"unix:{socket_path}", timeout_in_seconds=SOURCE_TIMEOUT)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn = dial(f"127.0.0.1:{port}", source, authorize_fn=authorize_id(SpiffeId(server_id)))
            try:
                data = b""
                while not data.endswith(b"\n") and len(data) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                reply = json.loads(data)
                reply["seen_server_serial"] = format(conn.get_peer_certificate().get_serial_number(), "x")
                reply["own_serial"] = own_serial(source)
                print(json.dumps(reply), flush=True)
            finally:
                conn.close()
        except Exception as error:
            print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
        time.sleep(CONNECT_INTERVAL)
    source.close()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "server":
        return serve(argv[2], argv[3])
    if len(argv) == 6 and argv[1] == "client":
        return connect(argv[2], argv[3], int(argv[4]), float(argv[5]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    # spiffe-tls logs its failed in-place reloads (see serve); the fresh contexts make them harmless.
    logging.getLogger("spiffetls").setLevel(logging.CRITICAL)
    sys.exit(main(sys.argv))
