// swift-tools-version:6.2
// libFuzzer executables, one per fuzz target of the root package's FuzzTargets module. A package of its own so
// that the root package's `swift build` never links libFuzzer: `make fuzz` builds this one with
// `--sanitize=fuzzer --sanitize=address`, which also instruments every module of the root package.
import PackageDescription

let targets = [
    "server-request-path", "wire-decoders", "workload-api-responses", "pki-parsing", "text-parsing", "http-request",
    "jwt-svid", "agent-ops", "issuer-responses", "file-names", "bundle-endpoint",
]

let package = Package(
    name: "sds-agent-fuzz",
    dependencies: [.package(name: "sds-agent", path: "../..")],
    targets: targets.map { name in
        .executableTarget(
            name: "fuzz-\(name)",
            dependencies: [.product(name: "FuzzTargets", package: "sds-agent")],
            path: "Targets/fuzz-\(name)",
            // No top-level code: libFuzzer's `main` runs, calling `LLVMFuzzerTestOneInput`.
            swiftSettings: [.unsafeFlags(["-parse-as-library"])])
    }
)
