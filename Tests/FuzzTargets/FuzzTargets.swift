// Fuzz targets: one function per attack surface, each taking the raw input bytes. Tests/Fuzz builds one libFuzzer
// executable per function; FuzzTargetsTests replays every committed corpus file through the same functions, so
// `make test` re-checks each past finding without a fuzzer build.
//
// Every function must return for any input: a trap, a hang or a leak here is a finding in the library code.

/// The fuzz targets by name (the names of their corpus directories under Tests/Fuzz/Corpus).
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// Bytes from a client into an HTTP/2 server session wired to the real gRPC router and SDS service.
    case serverRequestPath = "server-request-path"
    /// Every protobuf message decoder of the Wire module.
    case wireDecoders = "wire-decoders"
    /// Workload API responses and stream events into the Workload API client's state machine.
    case workloadAPIResponses = "workload-api-responses"
    /// PEM / DER / PKCS#8 parsing and X509-SVID validation.
    case pkiParsing = "pki-parsing"
    /// SPIFFE IDs, trust domains, secret names and durations as text.
    case textParsing = "text-parsing"
    /// HTTP/1.1 request heads, as the status listener (`/live`, `/ready`, `/metrics`) receives them.
    case httpRequest = "http-request"
    /// JWT-SVIDs as `ValidateJWTSVID` receives them: base64url, the bounded JSON parser, the JWT-SVID checks.
    case jwtSVID = "jwt-svid"
    /// Operations on the SDS, health and Workload API services behind several in-memory connections at once.
    case agentOps = "agent-ops"
    /// Upstream responses into the Workload API issuer's shell (over a socket pair) and the istiod client.
    case issuerResponses = "issuer-responses"
    /// File-backed names (`file-cert:`, `file-root:`) against a directory tree the input builds and changes.
    case fileNames = "file-names"
    /// A federation bundle endpoint's HTTP/1.1 response, and `--federate-with` URLs.
    case bundleEndpoint = "bundle-endpoint"

    /// Runs one input through this target.
    public func run(_ input: UnsafeRawBufferPointer) {
        switch self {
        case .serverRequestPath: ServerRequestPathTarget.run(input)
        case .wireDecoders: WireDecodersTarget.run(input)
        case .workloadAPIResponses: WorkloadAPIResponsesTarget.run(input)
        case .pkiParsing: PKIParsingTarget.run(input)
        case .textParsing: TextParsingTarget.run(input)
        case .httpRequest: HTTPRequestTarget.run(input)
        case .jwtSVID: JWTSVIDTarget.run(input)
        case .agentOps: AgentOpsTarget.run(input)
        case .issuerResponses: IssuerResponsesTarget.run(input)
        case .fileNames: FileNamesTarget.run(input)
        case .bundleEndpoint: BundleEndpointTarget.run(input)
        }
    }

    /// Runs one input through this target.
    public func run(_ input: [UInt8]) {
        input.withUnsafeBytes { run($0) }
    }

    /// Called by a fuzzer's entry point: this target owns the process, so checks that look at process-wide state
    /// (descriptors left open) are sound. Replayed among other tests running in parallel, they are not.
    public func ownsProcess() {
        if self == .issuerResponses { IssuerResponsesTarget.checksDescriptors = true }
    }

    /// Ends what the target keeps running between inputs (file-names: the agent under test and its thread), so a
    /// process that replayed a corpus ends with nothing of it alive. No input of this target may run afterwards.
    public func tearDown() {
        if self == .fileNames { FileNamesTarget.stop() }
    }
}

/// Reads a fuzz input front to back; running out yields zeros / empty slices, never a trap.
struct InputReader {
    private let bytes: UnsafeRawBufferPointer
    private var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var isAtEnd: Bool { offset >= bytes.count }

    mutating func byte() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    /// Little-endian.
    mutating func uint16() -> Int { Int(byte()) | Int(byte()) << 8 }

    mutating func uint32() -> UInt32 {
        (0..<4).reduce(UInt32(0)) { value, shift in value | UInt32(byte()) << (8 * UInt32(shift)) }
    }

    /// Up to `count` bytes.
    mutating func bytes(_ count: Int) -> [UInt8] {
        let end = min(bytes.count, offset + max(0, count))
        defer { offset = end }
        return Array(bytes[offset..<end])
    }

    /// A 16-bit length, then that many bytes.
    mutating func lengthPrefixed() -> [UInt8] { bytes(uint16()) }

    mutating func rest() -> [UInt8] { bytes(bytes.count - offset) }
}
