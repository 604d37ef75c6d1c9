// swift-tools-version:6.2
// sds-agent: an Envoy SDS provider sidecar. Each C library (nghttp2, OpenSSL, protobuf-c) sits behind one
// small Swift module; the protocol logic (gRPC, xDS, rotation) is pure Swift values with no I/O.
import PackageDescription

let package = Package(
    name: "sds-agent",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "sds-agent", targets: ["sds-agent"]),
        .executable(name: "sds-dump", targets: ["sds-dump"]),
        .executable(name: "sds-bench", targets: ["sds-bench"]),
        .executable(name: "sds-floor", targets: ["sds-floor"]),
        // For Tests/Fuzz (its own package, built with libFuzzer by `make fuzz`): the fuzz targets.
        .library(name: "FuzzTargets", targets: ["FuzzTargets"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0")
    ],
    targets: [
        // C libraries, found with pkg-config. Each module map's header also holds `static inline`
        // shims for the macros and variadic functions Swift cannot import.
        .systemLibrary(
            name: "CNGHTTP2", pkgConfig: "libnghttp2",
            providers: [.apt(["libnghttp2-dev"])]),
        .systemLibrary(
            name: "COpenSSL", pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]),
        // Linux interfaces Glibc does not import (epoll, signalfd); Transport's event loop uses them.
        .systemLibrary(name: "CLinux"),
        .systemLibrary(
            name: "CProtobufC", pkgConfig: "libprotobuf-c",
            providers: [.apt(["libprotobuf-c-dev"])]),
        // protoc-c output for Protos/ (committed; `make protos` regenerates it).
        .target(
            name: "CSDSProtos", dependencies: ["CProtobufC"],
            linkerSettings: [.linkedLibrary("protobuf-c")]),

        // Engines wrapped in Swift: no C type crosses these modules' public API.
        .target(name: "H2", dependencies: ["CNGHTTP2"]),
        .target(name: "PKI", dependencies: ["COpenSSL"]),
        .target(name: "Wire", dependencies: ["CSDSProtos"]),

        // HTTP/1.1 request heads for the status listener: a pure parser (unit-tested and fuzzable), no I/O.
        .target(name: "HTTP1"),

        // JSON text without Foundation: sds-agent's JSON logs, sds-dump's --json, the bench report.
        .target(name: "JSONText"),

        // Domain concepts.
        // SPIFFE IDs and trust domains, SVIDs and bundles (X.509 and the SPIFFE bundle JSON).
        .target(name: "SPIFFE", dependencies: ["PKI", "JSONText"]),
        // xDS secret discovery as pure stream machines (SotW, Delta, Fetch) over a secret cache: no I/O.
        .target(name: "XDS", dependencies: ["Wire"]),
        // gRPC calls (framing, status, deadlines) over an H2 session, client and server: no sockets.
        .target(name: "GRPC", dependencies: ["H2"]),
        // What every issuer promises (the Issuer contract, issued identities, rotation policy, clocks): no storage.
        .target(name: "Issuance", dependencies: ["SPIFFE", "PKI", "Transport"]),
        // The embedded CA and its state dir: roots with their rotation schedule, and the issuer that signs SVIDs.
        .target(name: "LocalCA", dependencies: ["Issuance", "SPIFFE", "PKI", "Transport"]),
        // The event loop and what runs on it: timers (`Scheduler`), sockets, listeners and connections, the off-loop
        // worker, the non-blocking log stream, atomic file writes and file watching.
        .target(name: "Transport", dependencies: ["CLinux"]),
        .target(
            // The SPIFFE Workload API client: relays a SPIRE agent (the server half is SDSAgent's
            // WorkloadAPIService).
            name: "WorkloadAPIClient",
            dependencies: ["Issuance", "SPIFFE", "PKI", "Wire", "GRPC", "H2", "Transport", "ConnectionDriver"]),
        // Identities from files (Kubernetes Pod Certificates, cert-manager, Istio's file layout): the pure reading of
        // a chain, key and bundle, and the issuer that watches them.
        .target(name: "FileIdentity", dependencies: ["Issuance", "SPIFFE", "PKI", "Transport"]),
        // Federated trust domains (`--federate-with`): where each bundle comes from, the rules a new one must pass,
        // and the bundles kept current from files.
        .target(
            name: "Federation",
            dependencies: [
                "BundleEndpoint", "SPIFFE", "PKI", "Transport", .product(name: "Logging", package: "swift-log"),
            ]),
        // JWT-SVIDs: ES256 tokens, JWKS, the state dir's rotating signing keys.
        .target(name: "JWT", dependencies: ["PKI", "SPIFFE", "JSONText", "Issuance", "LocalCA", "Transport"]),
        // The one HTTP/2 connection driver, client or server: socket ⇄ optional TLS ⇄ nghttp2 session, with the
        // back-pressure, write-stall, queued-bytes and preface rules every connection shares.
        .target(name: "ConnectionDriver", dependencies: ["H2", "Transport", "PKI"]),
        // SPIFFE federation bundle endpoints, client side: URL, HTTP/1.1 response parser, refresh policy, fetcher.
        .target(name: "BundleEndpoint", dependencies: ["SPIFFE", "PKI", "Transport"]),
        // istiod / istio-csr CSR client: pure state machine + I/O shell.
        .target(
            name: "IstioCA",
            dependencies: ["Issuance", "SPIFFE", "PKI", "Wire", "GRPC", "H2", "Transport", "ConnectionDriver"]),
        // What the agent serves on its sockets: SDS (SotW, Delta, Fetch) and its server, the Workload API, gRPC
        // health, the status listener and its metrics, and the limits every peer runs under.
        .target(
            name: "Servers",
            dependencies: [
                "Wire", "XDS", "GRPC", "H2", "Transport", "ConnectionDriver", "Issuance", "SPIFFE", "HTTP1",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // The composition root: configuration, the issuers wired to the servers, on-demand names, the CLI.
        .target(
            name: "SDSAgent",
            dependencies: [
                "Servers", "Federation", "Wire", "XDS", "GRPC", "H2", "Transport", "ConnectionDriver", "Issuance",
                "SPIFFE", "PKI",
                "JSONText",
                "WorkloadAPIClient",
                "FileIdentity",
                "IstioCA", "HTTP1", "JWT", "LocalCA", .product(name: "Logging", package: "swift-log"),
            ]),

        // Executables: parse arguments, call a library.
        // No swift-argument-parser anywhere: it links FoundationEssentials (+3.6 MB RSS); see AgentCommandLine.
        // sds-agent is also sds-dump when called by that name (the image ships one binary under both names).
        // symbol-order.txt and unnamed-text.lds are inputs of the release link (the Makefile's ORDER_FLAGS).
        .executableTarget(
            name: "sds-agent", dependencies: ["SDSAgent", "SDSDump"],
            exclude: ["symbol-order.txt", "unnamed-text.lds"]),
        // sds-dump: what any SDS server serves, as a table or JSON.
        .target(
            name: "SDSDump", dependencies: ["Wire", "GRPC", "H2", "Transport", "PKI", "JSONText", "ConnectionDriver"]),
        .executableTarget(name: "sds-dump", dependencies: ["SDSDump"]),

        // `make bench`: the load client and issuance benchmark, and the RSS floor (same libraries, no agent).
        .target(name: "Bench", dependencies: ["JSONText"]),
        .executableTarget(
            name: "sds-bench",
            dependencies: [
                "Bench", "Wire", "GRPC", "H2", "Transport", "ConnectionDriver", "Issuance", "LocalCA", "JWT", "PKI",
                "SPIFFE",
            ]),
        // The floor links only the C libraries the agent links, with the static Swift stdlib: what the agent's RSS,
        // per-stream state, push and start-up are measured against (CLinux is headers only: epoll for `fanout`).
        .executableTarget(name: "sds-floor", dependencies: ["CNGHTTP2", "COpenSSL", "CProtobufC", "CLinux"]),

        // Shared test fixtures: a test CA, a fake issuer, an in-memory connection pair, a fake clock.
        .target(
            name: "TestSupport",
            dependencies: ["PKI", "SPIFFE", "Issuance", "LocalCA", "H2", "Transport"],
            path: "Tests/TestSupport"),

        // A TLS server over OpenSSL in memory, for tests of the TLS client and the istiod issuer only (it reaches
        // PKI's internals, so debug builds only).
        .target(name: "TLSTestServer", dependencies: ["PKI", "COpenSSL"], path: "Tests/TLSTestServer"),

        .testTarget(name: "WireTests", dependencies: ["Wire", "TestSupport"]),
        .testTarget(name: "PKITests", dependencies: ["PKI", "TestSupport", "TLSTestServer"]),
        .testTarget(name: "SPIFFETests", dependencies: ["SPIFFE", "PKI", "JSONText", "TestSupport"]),
        .testTarget(
            name: "IssuanceTests", dependencies: ["Issuance", "LocalCA", "SPIFFE", "PKI", "Transport", "TestSupport"]),
        .testTarget(
            name: "ConnectionDriverTests",
            dependencies: ["ConnectionDriver", "H2", "GRPC", "Transport", "TestSupport"]),
        .testTarget(name: "H2Tests", dependencies: ["H2", "TestSupport"]),
        .testTarget(name: "GRPCTests", dependencies: ["GRPC", "H2", "TestSupport"]),
        .testTarget(name: "XDSTests", dependencies: ["XDS", "Wire", "TestSupport"]),
        .testTarget(name: "TransportTests", dependencies: ["Transport"]),
        .testTarget(name: "HTTP1Tests", dependencies: ["HTTP1"]),
        .testTarget(
            name: "BundleEndpointTests",
            dependencies: ["BundleEndpoint", "SPIFFE", "PKI", "Transport", "TestSupport", "TLSTestServer"]),
        .testTarget(
            name: "WorkloadAPIClientTests",
            dependencies: [
                "WorkloadAPIClient", "Issuance", "SPIFFE", "PKI", "Wire", "GRPC", "Transport", "TestSupport",
            ]),
        .testTarget(
            name: "SDSAgentTests",
            dependencies: [
                "SDSAgent", "Servers", "TestSupport", "GRPC", "H2", "Wire", "XDS", "HTTP1", "Transport", "PKI",
                "SPIFFE", "LocalCA", "JWT", "JSONText",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(name: "SDSDumpTests", dependencies: ["SDSDump", "JSONText", "Wire", "GRPC", "PKI", "TestSupport"]),
        .testTarget(name: "BenchTests", dependencies: ["Bench"]),
        .testTarget(
            name: "FederationTests",
            dependencies: [
                "Federation", "SPIFFE", "PKI", "Transport", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "FileIdentityTests", dependencies: ["FileIdentity", "Issuance", "PKI", "SPIFFE", "TestSupport"]),
        .testTarget(
            name: "JWTTests", dependencies: ["JWT", "PKI", "SPIFFE", "JSONText", "Issuance", "LocalCA", "TestSupport"]),
        .testTarget(
            name: "IstioCATests",
            dependencies: [
                "IstioCA", "ConnectionDriver", "Issuance", "SPIFFE", "PKI", "Wire", "GRPC", "H2", "Transport",
                "TestSupport",
            ]),

        // Fuzz targets, one function per attack surface: Tests/Fuzz builds them into libFuzzer executables (`make
        // fuzz`); FuzzTargetsTests replays every committed corpus file through them (part of `make unit`).
        // Test code, so it lives under Tests/ (it drives the agent with TestSupport's fakes), though Tests/Fuzz
        // links it as a library product.
        .target(
            name: "FuzzTargets",
            dependencies: [
                "SDSAgent", "Servers", "HTTP1", "GRPC", "H2", "Wire", "PKI", "SPIFFE", "WorkloadAPIClient",
                "TestSupport", "JWT",
                "LocalCA",
                "JSONText",
                "BundleEndpoint",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/FuzzTargets"),
        .testTarget(name: "FuzzTargetsTests", dependencies: ["FuzzTargets"]),
    ]
)

// Warnings are errors in every target of ours (dependencies keep their own settings).
for target in package.targets where target.type != .system {
    target.swiftSettings = (target.swiftSettings ?? []) + [.treatAllWarnings(as: .error)]
}
