import Transport

/// Which SDS RPC sds-dump uses.
public enum DumpMode: String, Sendable, CaseIterable {
    /// StreamSecrets (state of the world), one stream per name, like Envoy.
    case sotw
    /// DeltaSecrets, one stream per name, like Envoy.
    case delta
    /// One unary FetchSecrets call for every name.
    case fetch
}

/// Everything the command line decides, already validated.
public struct DumpOptions: Sendable, Equatable {
    /// Where the SDS server listens (istio's and SPIRE's well-known workload socket).
    public static let defaultSocket = "/run/secrets/workload-spiffe-uds/socket"
    /// The names Envoy asks istio's agent for: the workload certificate and the root bundle.
    public static let defaultNames = ["default", "ROOTCA"]
    public static let defaultTimeoutSeconds = 10.0

    public var socket: String
    public var names: [String]
    public var mode: DumpMode
    public var json: Bool
    public var pemDirectory: String?
    public var watch: Bool
    /// With `watch`: stop after this many updates.
    public var count: Int?
    public var nack: Bool
    public var timeoutSeconds: Double
    public var nodeID: String?
    public var cluster: String?

    public init(
        socket: String = DumpOptions.defaultSocket, names: [String] = [], mode: DumpMode = .sotw, json: Bool = false,
        pemDirectory: String? = nil, watch: Bool = false, count: Int? = nil, nack: Bool = false,
        timeoutSeconds: Double = DumpOptions.defaultTimeoutSeconds, nodeID: String? = nil, cluster: String? = nil
    ) {
        self.socket = socket
        self.names = names.isEmpty ? Self.defaultNames : names
        self.mode = mode
        self.json = json
        self.pemDirectory = pemDirectory
        self.watch = watch
        self.count = count
        self.nack = nack
        self.timeoutSeconds = timeoutSeconds
        self.nodeID = nodeID
        self.cluster = cluster
    }
}

/// Parses a duration as the command line takes it: `10` (seconds), `10s`, `500ms`, `2m`, `1h`, `1.5s`.
/// Returns nil for anything else, including zero and negative durations.
public func parseDuration(_ text: String) -> Double? {
    let units: [(suffix: String, seconds: Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
    var number = Substring(text)
    var scale = 1.0
    for unit in units where text.hasSuffix(unit.suffix) {
        number = text.dropLast(unit.suffix.count)
        scale = unit.seconds
        break
    }
    // Double("inf"), Double("nan") and Double("1e3") parse: accept plain decimals only.
    guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
        let value = Double(number), value > 0
    else { return nil }
    return value * scale
}

/// The file-name form of a secret name: every run of characters outside `[A-Za-z0-9._-]` becomes one `_`
/// (`spiffe://example.org` → `spiffe_example.org`), so a name can never climb out of the PEM directory.
public func safeFileName(_ name: String) -> String {
    var out = ""
    var inRun = false
    for scalar in name.unicodeScalars {
        let keep =
            (scalar >= "A" && scalar <= "Z") || (scalar >= "a" && scalar <= "z") || (scalar >= "0" && scalar <= "9")
            || scalar == "." || scalar == "_" || scalar == "-"
        if keep {
            out.unicodeScalars.append(scalar)
            inRun = false
        } else if !inRun {
            out += "_"
            inRun = true
        }
    }
    return out
}

/// Why `text` is not a socket address sds-dump can dial (nil when it is): a usage error, not a connect failure.
public func socketAddressProblem(_ text: String) -> String? {
    do throws(UnixSocketAddress.ParseError) {
        _ = try UnixSocketAddress(text)
        return nil
    } catch {
        return error.description
    }
}
