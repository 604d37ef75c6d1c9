"""A test-side SDS client (grpcio + xds-protos) that drives one StreamSecrets or DeltaSecrets stream by hand."""
from __future__ import annotations

import queue
import threading

import grpc
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
NODE = base_pb2.Node(id="sds-it-client", cluster="sds-it")

_END = object()


class SecretStream:
    """One bidi stream: `send()` requests, `recv()` responses with a deadline, `silent()` checks nothing came."""

    def __init__(self, socket_path, delta: bool):
        self.delta = delta
        self._channel = grpc.insecure_channel(f"unix:{socket_path}")
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(self._channel)
        self._requests: queue.Queue = queue.Queue()
        self._responses: queue.Queue = queue.Queue()
        method = stub.DeltaSecrets if delta else stub.StreamSecrets
        self._call = method(self._request_iter())
        threading.Thread(target=self._read, daemon=True).start()
        self._first = True

    def _request_iter(self):
        while True:
            item = self._requests.get()
            if item is _END:
                return
            yield item

    def _read(self):
        try:
            for response in self._call:
                self._responses.put(response)
        except grpc.RpcError as e:
            self._responses.put(e)
        self._responses.put(_END)

    def send(self, **fields):
        """A request; the node goes on the first message only (as Envoy does with set_node_on_first_message_only)."""
        cls = discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest
        if self._first:
            fields.setdefault("node", NODE)
            self._first = False
        fields.setdefault("type_url", SECRET_TYPE_URL)
        if "error_detail" in fields and isinstance(fields["error_detail"], str):
            fields["error_detail"] = status_pb2.Status(code=13, message=fields["error_detail"])
        self._requests.put(cls(**fields))

    def recv(self, timeout: float = 10.0):
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no response within {timeout}s") from None
        if item is _END:
            raise AssertionError("stream ended")
        if isinstance(item, grpc.RpcError):
            raise AssertionError(f"stream failed: {item.code()} {item.details()}")
        return item

    def silent(self, window: float = 0.5) -> bool:
        """Nothing arrives within `window` seconds (absence cannot be awaited: this is the one bounded wait)."""
        try:
            item = self._responses.get(timeout=window)
        except queue.Empty:
            return True
        self._responses.put(item)
        return False

    def close(self):
        self._requests.put(_END)
        self._call.cancel()
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def unpack_secrets(resources) -> dict[str, secret_pb2.Secret]:
    """SotW: Any(Secret)s; Delta: Resource{name, version, resource: Any(Secret)}."""
    out = {}
    for r in resources:
        any_secret = r.resource if isinstance(r, discovery_pb2.Resource) else r
        s = secret_pb2.Secret()
        assert any_secret.Unpack(s), f"not a Secret: {any_secret.type_url}"
        out[s.name] = s
    return out


def pem_of(data_source) -> bytes:
    return data_source.inline_bytes or data_source.inline_string.encode()


def certs_of(data_source) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem_of(data_source))
