import Glibc

/// Entry point of `sds-agent run`: resolves the configuration, then runs the agent until a stop signal.
public enum AgentMain {
    /// Runs the agent; returns the process exit code (0 clean stop, 1 runtime failure, 2 configuration error).
    public static func run(options: RawAgentOptions, environment: [String: String]) -> Int32 {
        let configuration: AgentConfiguration
        do {
            configuration = try AgentConfiguration.resolve(
                options, environment: environment, validateTrustDomain: { _ in nil }, validateSPIFFEID: { _, _ in nil })
        } catch {
            printError("sds-agent: \(error)")
            return 2
        }
        printError("sds-agent: not wired yet (socket \(configuration.socket))")
        return 1
    }

    /// The process environment as a dictionary (no Foundation).
    public static func processEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let eq = text.firstIndex(of: "=") {
                result[String(text[..<eq])] = String(text[text.index(after: eq)...])
            }
            pointer += 1
        }
        return result
    }

    static func printError(_ line: String) {
        _ = (line + "\n").withCString { write(2, $0, strlen($0)) }
    }
}
