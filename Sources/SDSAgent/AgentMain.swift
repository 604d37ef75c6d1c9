import Glibc
import Logging
import SPIFFE
import Servers
import Transport

/// Entry point of `sds-agent run`: resolves the configuration, then runs the agent until a stop signal.
public enum AgentMain {
    /// Runs the agent; returns the process exit code (0 clean stop, 1 runtime failure, 2 configuration error).
    public static func run(options: RawAgentOptions, environment: [String: String]) -> Int32 {
        let configuration: AgentConfiguration
        do {
            configuration = try AgentConfiguration.resolve(
                options, environment: environment, validateTrustDomain: validateTrustDomain,
                validateSPIFFEID: validateSPIFFEID)
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

    static func validateTrustDomain(_ text: String) -> String? {
        do {
            let domain = try TrustDomain(text)
            return domain.name == text ? nil : "'\(text)' must be a bare trust domain name such as example.org"
        } catch {
            return "'\(text)' is not a valid trust domain: \(error)"
        }
    }

    static func validateSPIFFEID(_ text: String, _ trustDomain: String) -> String? {
        do {
            let id = try SPIFFEID(parsing: text)
            if id.path.isEmpty { return "'\(text)' names a trust domain, not a workload (add a path)" }
            if id.trustDomain.name != trustDomain {
                return "'\(text)' is not in trust domain \(trustDomain) (set --trust-domain to match)"
            }
            return nil
        } catch {
            return "'\(text)' is not a valid SPIFFE ID: \(error)"
        }
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
