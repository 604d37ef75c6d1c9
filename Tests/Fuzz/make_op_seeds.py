"""Writes the seed corpora of the structure-aware fuzz targets (agent-ops, issuer-responses, file-names).

    python3 Tests/Fuzz/make_op_seeds.py [corpus dir]

Their inputs are op sequences (Tests/FuzzTargets/FuzzInput.swift): one byte picks the op, the bytes after it are
its arguments, every read past the end yields 0. This script spells out meaningful sequences with the same
encoding, one function per target mirroring the op table in the target's doc comment (AgentOpsTarget.swift,
IssuerResponsesTarget.swift, FileNamesTarget.swift): when an op's arguments change there, change them here and rerun.
Seeds are named after what they do (seed-<what>); a rerun rewrites them, crash-* files are kept.
"""
from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
CORPUS = HERE / "Corpus"


def write(target: str, name: str, data: bytes) -> None:
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"seed-{name}").write_bytes(data)


# ------------------------------------------------------------------------------------------------------------------
# agent-ops (AgentOpsTarget.swift)
# ------------------------------------------------------------------------------------------------------------------

# Method indices (AgentOpsTarget.Method).
STREAM, DELTA, FETCH, HCHECK, HWATCH, X509SVID, X509BUNDLES, JWTSVID, JWTBUNDLES, VALIDATE = range(10)
# Name dictionary indices (AgentOpsTarget.names): a word selector below 0xC0 picks names[selector % count].
DEFAULT, ROOTCA, OWN_ID, OWN_TD, ALL, OTHER_TD, BIG, FILE_ROOT_SYSTEM, FILE_CERT, JWT_NAME, OTHER_ID, UNKNOWN = range(12)
# Type URL dictionary (AgentOpsTarget.typeURLs), reached with a type selector >= 0xC0 then a word selector.
TYPE_EMPTY, TYPE_CLUSTER, TYPE_TRAILING_SPACE, TYPE_NO_PREFIX = range(4)


def words(*selected: int | bytes) -> bytes:
    """FuzzInput.words: a count (below limit + 1), then each word: a dictionary index, or an encoded word."""
    return bytes([len(selected)]) + b"".join(bytes([w]) if isinstance(w, int) else w for w in selected)


def nul_joined(first: int, second: int) -> bytes:
    """FuzzInput.word selector 0xE0..0xEF: two dictionary entries joined by a NUL byte."""
    return bytes([0xE0, first, second])


def invalid_utf8(entry: int) -> bytes:
    """FuzzInput.word selector 0xF0..0xF7: a dictionary entry followed by invalid UTF-8."""
    return bytes([0xF0, entry])


# The request message of each method for op 4 (AgentOpsTarget.Harness.request(for:)).
METHOD_REQUEST = {
    X509SVID: bytes([1]), X509BUNDLES: bytes([1]), JWTBUNDLES: bytes([1]),  # bool: the empty message
    JWTSVID: bytes([1, 0, 0]),  # one audience ("db"), no SPIFFE ID
    VALIDATE: bytes([0, 1]),  # audience "db", token "0"
    HCHECK: bytes([1]), HWATCH: bytes([1]),  # service envoy.service.secret.v3.SecretDiscoveryService
}


def open_conn(config: int = 0) -> bytes:
    return bytes([0, config])


def open_stream(conn: int, method: int, without_header: bool = False, timeout: int | None = None) -> bytes:
    flags = (1 if without_header else 0) | (2 if timeout is not None else 0)
    out = bytes([1, conn, method, flags])
    return out + (bytes([timeout]) if timeout is not None else b"")


def subscribe(conn: int, *names: int, delta: bool = False) -> bytes:
    """Op 14: open SotW (or Delta) and send a well-formed first request for `names`."""
    return bytes([14, conn, 1 if delta else 0]) + words(*names)


def sotw(conn: int, call: int, *names: int | bytes, type_selector: int = 0, wrong_type: int | None = None,
         version: str = "none", nonce: str = "none", node_depth: int | None = None, same_names: bool = False,
         error: bool = False) -> bytes:
    """Op 2: a DiscoveryRequest (flags: version 0-1, node 2, repeat names 3, nonce 4-5, error_detail 6)."""
    flags = {"none": 0, "last": 1, "word": 2}[version]
    flags |= 4 if node_depth is not None else 0
    flags |= 8 if same_names else 0
    flags |= {"none": 0, "last": 1, "word": 2}[nonce] << 4
    flags |= 0x40 if error else 0
    out = bytes([2, conn, call, flags])
    if version == "word":
        out += bytes([1])  # tokens[1] = "0"
    if node_depth is not None:
        out += bytes([0, node_depth])  # node id = nodeIDs[0]; metadata nested node_depth deep (> 240: (d - 240) × 100)
    if not same_names:
        out += words(*names)
    out += bytes([0xC0, wrong_type]) if wrong_type is not None else bytes([type_selector])
    if nonce == "word":
        out += bytes([4])  # tokens[4] = "stale"
    if error:
        out += bytes([3, 0])  # code INVALID_ARGUMENT, message ""
    return out


def delta(conn: int, call: int, subscribe_names: list[int], unsubscribe_names: list[int] = (),
          wrong_type: int | None = None, initial_versions: list[tuple[int, int]] = (), nonce: str = "none",
          error: bool = False) -> bytes:
    """Op 3: a DeltaDiscoveryRequest (flags: node 0, unsubscribe-subscribed 1, initial versions 2, nonce 3-4,
    error_detail 5)."""
    flags = (4 if initial_versions else 0) | ({"none": 0, "last": 1, "word": 2}[nonce] << 3) | (0x20 if error else 0)
    out = bytes([3, conn, call, flags])
    out += bytes([0xC0, wrong_type]) if wrong_type is not None else bytes([0])
    out += words(*subscribe_names)
    out += bytes([len(unsubscribe_names), *unsubscribe_names])
    if initial_versions:
        out += bytes([len(initial_versions)]) + b"".join(bytes([n, v]) for n, v in initial_versions)
    if nonce == "word":
        out += bytes([4])
    if error:
        out += bytes([3, 0])
    return out


def ack(conn: int, call: int, nack: bool = False) -> bytes:
    return bytes([11, conn, call, 1 if nack else 0]) + (bytes([3, 0]) if nack else b"")


def rotate(variant: int = 0) -> bytes:
    return bytes([8, variant])


def agent_ops() -> None:
    t = "agent-ops"
    # SotW as Envoy does it: subscribe, ACK, rotation, ACK, NACK.
    write(t, "sotw-ack-rotate-nack", subscribe(0, DEFAULT, ROOTCA) + ack(0, 0) + rotate() + ack(0, 0)
          + rotate() + ack(0, 0, nack=True))
    # Delta opened with a wrong type URL that subscribes names (the stream must fail, nothing served).
    write(t, "delta-wrong-type-url-subscribes", open_conn() + open_stream(0, DELTA)
          + delta(0, 0, [DEFAULT, ROOTCA, OWN_ID], wrong_type=TYPE_CLUSTER) + rotate())
    # SotW whose second request changes type_url.
    write(t, "sotw-type-url-changes-on-second-request", subscribe(0, DEFAULT) + ack(0, 0)
          + sotw(0, 0, same_names=True, wrong_type=TYPE_TRAILING_SPACE, version="last", nonce="last"))
    # A name whose response is larger than the per-stream send queue (600 B; 64 KiB for the big bundle).
    write(t, "response-larger-than-stream-queue", open_conn(3) + subscribe(0, DEFAULT, ROOTCA) + rotate()
          + open_conn(1) + rotate(2) + subscribe(1, BIG) + rotate(4) + rotate(2))
    # A reader that stops while rotations keep coming, behind a 16-byte window, then resumes.
    write(t, "stalled-reader-rotations", open_conn(0x18) + subscribe(0, DEFAULT, ROOTCA, OWN_ID)
          + bytes([7, 0]) + rotate() + rotate() + rotate() + bytes([7, 0]) + rotate(2) + subscribe(0, BIG) + rotate()
          + bytes([7, 0]) + ack(0, 0))
    # Delta: subscribe, ACK, unsubscribe, initial versions on a second stream, removed names.
    write(t, "delta-subscribe-unsubscribe", subscribe(0, DEFAULT, ROOTCA, delta=True) + ack(0, 0)
          + delta(0, 0, [ALL], [ROOTCA], nonce="last") + rotate(3) + rotate(4)
          + open_stream(0, DELTA) + delta(0, 1, [DEFAULT], initial_versions=[(DEFAULT, 0)]))
    # Every Workload API method, with and without the security header, plus health Check and Watch.
    seq = open_conn()
    for index, method in enumerate([X509SVID, X509BUNDLES, JWTSVID, JWTBUNDLES, VALIDATE, HCHECK, HWATCH]):
        request = METHOD_REQUEST[method]
        seq += open_stream(0, method) + bytes([4, 0, 2 * index]) + request + bytes([5, 0, 2 * index])
        seq += open_stream(0, method, without_header=True) + bytes([4, 0, 2 * index + 1]) + request
        seq += bytes([5, 0, 2 * index + 1])
    write(t, "workload-api-and-health-methods", seq + rotate(5) + rotate(6) + rotate() + bytes([15, 3]))
    # grpc-timeout deadlines that fall due while streams hold names, then a drain.
    write(t, "grpc-timeout-deadlines", open_stream(0, STREAM, timeout=0) + sotw(0, 0, DEFAULT, UNKNOWN)
          + open_stream(0, DELTA, timeout=1) + delta(0, 1, [ROOTCA]) + bytes([9, 4]) + bytes([9, 5]) + rotate())
    # FetchSecrets: served, never served, and unary misuse.
    write(t, "fetch-secrets", open_stream(0, FETCH) + sotw(0, 0, DEFAULT, ROOTCA) + bytes([5, 0, 0])
          + open_stream(0, FETCH) + sotw(0, 1, UNKNOWN) + bytes([5, 0, 1])
          + open_stream(0, FETCH) + sotw(0, 2, DEFAULT) + sotw(0, 2, DEFAULT) + bytes([5, 0, 2]))
    # Names with NUL bytes and invalid UTF-8, and a node whose metadata nests 10,000 deep.
    write(t, "nul-and-invalid-utf8-names", subscribe(0, DEFAULT) + sotw(0, 0, nul_joined(DEFAULT, ROOTCA))
          + subscribe(0, ROOTCA) + sotw(0, 1, invalid_utf8(ROOTCA), DEFAULT, node_depth=250)
          + open_stream(0, DELTA) + delta(0, 2, [DEFAULT]) + delta(0, 2, [ROOTCA]))
    # Several connections at once, ended every way while streams are open.
    seq = b""
    for config in (0, 1, 2, 0x40):
        seq += open_conn(config)
    for conn in range(4):
        seq += subscribe(conn, DEFAULT, ROOTCA, delta=conn % 2 == 1)
    seq += bytes([12]) + rotate() + bytes([12])
    seq += bytes([10, 0, 0]) + bytes([10, 1, 1]) + bytes([10, 2, 3]) + bytes([10, 3, 4]) + rotate()
    write(t, "connections-ended-every-way", seq)
    # Resets and raw (malformed) request bytes in the middle of streams.
    write(t, "resets-and-malformed-messages", subscribe(0, DEFAULT) + bytes([13, 0, 0, 3, 0, 0x0A, 0xFF, 0x01])
          + subscribe(0, ROOTCA, delta=True) + bytes([6, 0, 1]) + rotate() + bytes([15, 0]) + subscribe(0, DEFAULT))


# ------------------------------------------------------------------------------------------------------------------
# issuer-responses (IssuerResponsesTarget.swift)
# ------------------------------------------------------------------------------------------------------------------

# Workload API fixture leaves: valid, 9999-12-31, not yet valid, expired, other workload, other trust domain,
# via an intermediate, leaf is a CA; then 8 = valid leaf + hundreds of intermediates, 9 = garbage, 10 = empty.
VALID, FAR_FUTURE, NOT_YET, EXPIRED, OTHER_WORKLOAD, OTHER_DOMAIN, VIA_INTERMEDIATE, LEAF_CA, LONG_CHAIN = range(9)


def wl_svid(*svids: tuple[int, int], federated: int = 0) -> bytes:
    """Op 0: svids as (chain choice, spiffe ID word); the leaf's own key, the own bundle."""
    out = bytes([0, len(svids)])
    for chain, spiffe_id in svids:
        out += bytes([chain]) + (bytes([255]) if chain == LONG_CHAIN else b"")  # 640 intermediates
        out += bytes([spiffe_id, 0, 0, 0])  # ID word, key: own, bundle: own, no hint
    out += bytes([0, federated])  # no CRL, federated bundles
    if federated:
        out += b"".join(bytes([2, 2]) for _ in range(federated))  # spiffe://other.org → other bundle
    return out


def wl_bundles(*pairs: tuple[int, int]) -> bytes:
    out = bytes([1, 0, 0, len(pairs)])
    for domain, bundle in pairs:
        out += bytes([domain, bundle])
    return out


def workload(wanted: bool = True) -> bytes:
    return bytes([0, 0 if wanted else 1, 128])  # mode even, wanted ID (or any), jitter 0.5


def issuer_responses() -> None:
    t = "issuer-responses"
    write(t, "wl-valid-svid-then-bundles", workload() + wl_svid((VALID, 0)) + wl_bundles((0, 0), (2, 2))
          + bytes([2, 1, 0, 0]))
    write(t, "wl-far-future-notafter", workload() + wl_svid((FAR_FUTURE, 0)) + bytes([5, 1, 1]))
    write(t, "wl-not-yet-valid-then-valid", workload() + wl_svid((NOT_YET, 0)) + wl_svid((VALID, 0))
          + wl_svid((NOT_YET, 0)) + bytes([5, 1, 1]))
    write(t, "wl-hundreds-of-certificates", workload() + wl_svid((LONG_CHAIN, 0)) + wl_svid((VALID, 0))
          + wl_svid((LONG_CHAIN, 0)))
    write(t, "wl-expired-wrong-id-wrong-domain", workload() + wl_svid((VALID, 0)) + wl_svid((EXPIRED, 0))
          + wl_svid((OTHER_WORKLOAD, 1)) + wl_svid((OTHER_DOMAIN, 2)) + wl_svid((LEAF_CA, 0)))
    write(t, "wl-any-id-several-svids", workload(wanted=False) + wl_svid((OTHER_WORKLOAD, 1), (VALID, 0), federated=1)
          + wl_svid((VIA_INTERMEDIATE, 0)))
    # Relayed JWT calls: a token, then claims nested 5,000 deep, then an error and a reset.
    depth = 5000
    write(t, "wl-relay-jwt-nested-claims", workload() + wl_svid((VALID, 0)) + bytes([8, 0, 10, 0, 1, 0, 1])
          + bytes([9, 1, 10, 0, 0, 1, depth & 0xFF, depth >> 8]) + bytes([9, 2, 10, 2, 0, 0, 0])
          + bytes([9, 3, 10, 5, 0, 0, 0]))
    # The connection breaks every way; reconnects (in progress, refused, missing) with time passing.
    write(t, "wl-connection-breaks-and-reconnects", workload() + wl_svid((VALID, 0)) + bytes([3, 0, 14])
          + bytes([5, 0, 0]) + bytes([4, 0]) + bytes([7, 2]) + bytes([5, 0, 2]) + wl_svid((VALID, 0))
          + bytes([4, 2]) + bytes([7, 3]) + bytes([5, 0, 3]) + bytes([7, 4]) + bytes([5, 0, 5]) + bytes([7, 0])
          + bytes([6]) + bytes([5, 0, 1]) + wl_svid((FAR_FUTURE, 0)) + bytes([4, 4, 3, 0xFF, 0xFF, 0xFF])
          + bytes([4, 3, 0]) + bytes([12]))

    # istiod: first byte odd. Every op reads a jitter byte first. Elements (IssuerResponsesTarget fixture):
    # 0 valid leaf, 1 9999-12-31, 2 not yet valid, 3 expired, 4 wrong ID, 5 another key, 6 via intermediate,
    # 7 another root, 8 intermediate, 9 root, 10 other root, 11 intermediate+root; 12 = root × (3 × byte),
    # 13 = raw bytes, 14 = leaf + NUL + root, 15 = leaf + intermediate + root in one element.
    def fire() -> bytes:
        return bytes([5, 128])

    def key_ready() -> bytes:
        return bytes([0, 128, 0])

    def respond(*elements: int, file_roots: bool = False) -> bytes:
        out = bytes([2, 128, len(elements)])
        for element in elements:
            out += bytes([element]) + (bytes([0xF0]) if element == 12 else b"")  # 340 roots
        return out + bytes([1 if file_roots else 0])

    istio = bytes([1])
    write(t, "istio-valid-chain-then-rotation", istio + fire() + key_ready() + respond(0, 9) + fire()
          + key_ready() + respond(6, 8, 9, file_roots=True))
    write(t, "istio-far-future-leaf", istio + fire() + key_ready() + respond(1, 9) + fire() + key_ready()
          + respond(0, 9))
    write(t, "istio-refused-chains-keep-last-good", istio + fire() + key_ready() + respond(0, 9) + bytes([7, 0])
          + fire() + key_ready() + respond(2, 9) + fire() + key_ready() + respond(5, 9) + fire() + key_ready()
          + respond(7, 10) + respond(3, 9) + respond(4, 9))
    write(t, "istio-one-element-hundreds-of-roots", istio + fire() + key_ready() + respond(0, 12)
          + respond(12, 12, 12, 12, 12))
    write(t, "istio-retries-and-stale-answers", istio + fire() + key_ready() + bytes([3, 128, 14]) + fire()
          + bytes([9, 128, 1, 2, 0, 9, 0]) + bytes([3, 128, 16]) + bytes([4, 128]) + fire() + key_ready()
          + respond(14) + respond(15) + bytes([1, 128]) + bytes([8, 128]) + respond(0, 9))


# ------------------------------------------------------------------------------------------------------------------
# file-names (FileNamesTarget.swift)
# ------------------------------------------------------------------------------------------------------------------

ENTRIES = {name: index for index, name in enumerate(["a", "b", "c", "d", "link", "loop", "fifo", "dir", "big"])}
COMPONENTS = {name: index for index, name in enumerate(
    ["a", "b", "c", "d", "link", "loop", "fifo", "dir", "big", "..", ".", "", "ca.key", "ca.pem", "jwt-key.pem"])}
BASE = {"in": 0, "alias": 3, "out": 4, "state": 5, "allowed": 6, "etc": 7, "escape": 8, "relative": 9}
# Inside contents: 0 chain, 1 key, 2 bundle, 3 chain+key, 4 garbage, 5 empty, 6 expired chain, 7 another key, 8 big.
CHAIN, KEY, BUNDLE, CHAIN_AND_KEY, GARBAGE, EMPTY, EXPIRED_CHAIN, OTHER_KEY, BIG_FILE = range(9)
# Symlink targets.
TARGET = {name: index for index, name in enumerate([
    "sibling-a", "inside-b", "outside-a", "outside-dir", "ca.key", "ca.pem", "state-dir", "/etc/passwd",
    "/proc/self/environ", "system-bundle", "dangling", "itself", "loop", "escape", "alias-a", "/dev/zero"])}
IN, ALIAS, OUT = 0, 2, 3


def path(base: str, *components: str) -> bytes:
    assert len(components) <= 2, "a path has at most two components"
    return bytes([BASE[base], len(components), *(COMPONENTS[c] for c in components)])


def cert_name(cert: bytes, key: bytes) -> bytes:
    return bytes([0]) + cert + key


def root_name(p: bytes) -> bytes:
    return bytes([0x80]) + p


def write_file(directory: int, entry: str, content: int) -> bytes:
    return bytes([0, directory, ENTRIES[entry], content])


def link(directory: int, entry: str, target: str) -> bytes:
    return bytes([1, directory, ENTRIES[entry], TARGET[target]])


def flip(entry: str, target: str, storm: int = 0, other: str = "inside-b") -> bytes:
    """Op 2; with storm > 0 the SotW names are sent again and the link flips storm times between both targets."""
    return bytes([2, ENTRIES[entry], TARGET[target], storm]) + (bytes([TARGET[other]]) if storm else b"")


def sotw_names(*names: bytes) -> bytes:
    return bytes([4, len(names) - 1]) + b"".join(names)


def delta_names(*names: bytes) -> bytes:
    return bytes([5, len(names) - 1]) + b"".join(names)


def file_names() -> None:
    t = "file-names"
    pair = write_file(IN, "a", CHAIN) + write_file(IN, "b", KEY)
    write(t, "cert-and-key-served", pair + sotw_names(cert_name(path("in", "a"), path("in", "b")))
          + bytes([10]) + write_file(IN, "a", EXPIRED_CHAIN) + write_file(IN, "a", CHAIN))
    write(t, "key-symlinked-to-ca-key", pair + link(IN, "link", "ca.key")
          + sotw_names(cert_name(path("in", "a"), path("in", "link")), root_name(path("in", "link")))
          + sotw_names(cert_name(path("state", "ca.pem"), path("state", "ca.key"))))
    write(t, "symlink-flips-between-reads", pair + link(IN, "link", "inside-b")
          + sotw_names(cert_name(path("in", "a"), path("in", "link"))) + flip("link", "ca.key") + bytes([8])
          + flip("link", "inside-b") + flip("link", "outside-a") + write_file(OUT, "a", 1) + flip("link", "escape")
          + bytes([10]) + flip("link", "inside-b") + flip("link", "ca.key", storm=31) + flip("link", "escape", storm=20)
          + bytes([8]))
    write(t, "root-from-chain-and-key-file", write_file(IN, "c", CHAIN_AND_KEY)
          + delta_names(root_name(path("in", "c")), cert_name(path("in", "c"), path("in", "c"))) + bytes([10])
          + bytes([6, 1, 1]))
    write(t, "fifo-dir-big-loop-dangling", bytes([3, 0, IN, ENTRIES["fifo"]]) + bytes([3, 1, IN, ENTRIES["dir"]])
          + write_file(IN, "big", BIG_FILE) + link(IN, "loop", "loop") + link(IN, "d", "dangling")
          + sotw_names(root_name(path("in", "fifo")), root_name(path("in", "dir")), root_name(path("in", "big")))
          + delta_names(root_name(path("in", "loop")), root_name(path("in", "d")), root_name(path("in", "c"))))
    write(t, "escapes-and-outside-paths", write_file(OUT, "a", 0) + write_file(OUT, "b", 1)
          + link(IN, "link", "outside-dir") + link(IN, "c", "escape")
          + sotw_names(cert_name(path("escape", "a"), path("escape", "b")), root_name(path("in", "link", "a")),
                       root_name(path("in", "c")))
          + delta_names(root_name(path("state", "ca.pem")), root_name(path("relative", "a")),
                        root_name(path("out", "a"))))
    write(t, "alias-dir-and-system-trust-store", write_file(ALIAS, "a", CHAIN) + write_file(ALIAS, "b", KEY)
          + link(IN, "d", "system-bundle") + link(IN, "c", "alias-a")
          + delta_names(cert_name(path("alias", "a"), path("alias", "b")), bytes([0xFF]), root_name(path("in", "d")))
          + sotw_names(root_name(path("in", "c")), root_name(path("etc", "..", "..")))
          + bytes([7, 0x80]) + path("in", "d"))
    write(t, "raw-names-and-resets", pair + bytes([9, 0, 0]) + bytes([9, 1, 1]) + bytes([9, 0, 2])
          + bytes([11]) + sotw_names(cert_name(path("in", "a"), path("in", "b"))) + bytes([3, 3, IN, 0])
          + bytes([3, 5, IN, 1, 0]) + bytes([10]))


def main() -> None:
    global CORPUS
    if len(sys.argv) > 1:
        CORPUS = pathlib.Path(sys.argv[1])
    for target in ("agent-ops", "issuer-responses", "file-names"):
        directory = CORPUS / target
        if directory.is_dir():
            for old in directory.glob("seed-*"):
                old.unlink()
    agent_ops()
    issuer_responses()
    file_names()


if __name__ == "__main__":
    main()
