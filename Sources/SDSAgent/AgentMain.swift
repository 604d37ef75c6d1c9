import Glibc
import Logging
import PKI
import SPIFFE
import Servers
import Transport

/// Entry point of `sds-agent run`: resolves the configuration, then runs the agent until a stop signal.
public enum AgentMain {
    /// Runs the agent; returns the process exit code (0 clean stop, 1 runtime failure, 2 configuration error).
    public static func run(options: RawAgentOptions, environment: [String: String]) -> Int32 {
        OpenSSLLibrary.initialize(environment: environment)
        ProcessMemory.useOneArena()
        let configuration: AgentConfiguration
        do {
            configuration = try AgentConfiguration.resolve(options, environment: environment)
            // Start-up's first touch of the file system: still a usage error (exit 2) when the socket's directory
            // cannot be made or written, before anything else is created.
            try prepareSocketDirectory(configuration.socket.path)
        } catch {
            printError("sds-agent: \(error)")
            return 2
        }
        let level = configuration.logLevel
        let format = configuration.logFormat
        LogOutput.bootstrap(format: format)
        LoggingSystem.bootstrap { label in LogOutput(label: label, format: format, level: level) }
        let logger = Logger(label: "sds-agent")
        let agent: Agent
        do {
            agent = try Agent(configuration: configuration, logger: logger)
        } catch {
            printError("sds-agent: \(error)")
            return 1
        }
        let code = agent.run { agent in
            switch agent.configuration.issuer {
            case .local: return try agent.makeLocalCAIssuer()
            case .workloadAPI: return try agent.makeWorkloadAPIIssuer()
            case .istiod: return try agent.makeIstiodIssuer()
            case .files: return try agent.makeFilesIssuer()
            }
        }
        // The last lines (why it stopped) matter most; wait for stderr a bounded time, the loop is done by now.
        LogSink.standardError.flush(timeout: 1)
        return code
    }

    /// The socket's directory must exist (or be creatable) and be writable, or bind would fail later with less
    /// context. Refusals name `--socket`, as a bad value of it would.
    static func prepareSocketDirectory(_ path: String) throws(ConfigurationError) {
        let directory: String
        if let slash = path.lastIndex(of: "/") {
            directory = slash == path.startIndex ? "/" : String(path[..<slash])
        } else {
            directory = "."
        }
        if access(directory, F_OK) != 0 {
            // Istio mounts an emptyDir here; outside Kubernetes create it (0755: the socket itself stays 0600).
            var built = directory.hasPrefix("/") ? "" : "."
            for component in directory.split(separator: "/") {
                built += "/" + component
                if access(built, F_OK) != 0 && mkdir(built, 0o755) != 0 && errno != EEXIST {
                    throw AgentOption.socket.refusal(
                        "cannot create directory \(built): \(String(cString: strerror(errno)))")
                }
            }
        }
        guard access(directory, W_OK | X_OK) == 0 else {
            throw AgentOption.socket.refusal(
                "directory \(directory) is not writable: \(String(cString: strerror(errno)))")
        }
    }

    /// The process environment as a dictionary (no Foundation).
    public static func processEnvironment() -> [String: String] { environment(environ) }

    /// `entries` (`NAME=value` C strings, nil-terminated, as `environ`) as a table; a later duplicate wins.
    static func environment(_ entries: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> [String: String] {
        // Split at the first "=" of each entry's bytes, in a table sized once: `String.firstIndex(of:)` walks
        // Characters (grapheme breaking) and the table grew by rehashing, ~11,000 instructions a variable at
        // start-up. Invalid UTF-8 is repaired as `String(cString:)` does.
        var count = 0
        while entries[count] != nil { count += 1 }
        var result = [String: String](minimumCapacity: count)
        for index in 0..<count {
            guard let entry = entries[index], let equals = strchr(entry, 0x3D) else { continue }
            let name = UnsafeRawBufferPointer(start: entry, count: entry.distance(to: equals))
            result[String(decoding: name, as: UTF8.self)] = String(cString: equals + 1)
        }
        return result
    }

    static func printError(_ line: String) {
        _ = (line + "\n").withCString { write(2, $0, strlen($0)) }
    }
}
