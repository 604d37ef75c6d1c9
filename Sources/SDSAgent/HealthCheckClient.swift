import ConnectionDriver
import GRPC
import Glibc
import Servers
import Transport

/// `sds-agent healthcheck`: one `grpc.health.v1.Health/Check` over the SDS socket, for an exec probe that needs no
/// port (like `spire-agent healthcheck`). Exit 0 and one line when SERVING; exit 1 and one line saying why not.
public final class HealthCheckClient {
    /// Why 2 s: a healthy agent answers in well under a millisecond; 2 s leaves room for a loaded node and stays
    /// under a probe's `timeoutSeconds: 3` (the examples'), so the probe reports our one line, not kubelet's kill.
    /// An agent that takes longer is not healthy, and the probe must never hang.
    public static let timeout = 2.0

    /// What the check found, and what the process prints and returns for it.
    public enum Verdict: Equatable, Sendable {
        case serving
        case notServing(HealthWire.ServingStatus)
        case callFailed(GRPCStatus)
        case cannotConnect(String)
        case timedOut

        public var exitCode: Int32 { self == .serving ? 0 : 1 }

        public func line(socket: String) -> String {
            switch self {
            case .serving:
                return "sds-agent healthcheck: SERVING (\(socket))"
            case .notServing(let status):
                let why = status == .notServing ? ": no valid SVID held (not issued yet, or expired)" : ""
                return "sds-agent healthcheck: \(Self.name(status))\(why) (\(socket))"
            case .callFailed(let status):
                return "sds-agent healthcheck: health call failed: \(status) (\(socket))"
            case .cannotConnect(let reason):
                return "sds-agent healthcheck: cannot connect to \(socket): \(reason)"
            case .timedOut:
                return "sds-agent healthcheck: no answer within \(Int(HealthCheckClient.timeout)) s (\(socket))"
            }
        }

        static func name(_ status: HealthWire.ServingStatus) -> String {
            switch status {
            case .unknown: return "UNKNOWN"
            case .serving: return "SERVING"
            case .notServing: return "NOT_SERVING"
            case .serviceUnknown: return "SERVICE_UNKNOWN"
            }
        }
    }

    private let loop: EventLoop
    private let grpc = GRPCClientConnection()
    private var driver: H2ConnectionDriver?
    private var verdict: Verdict?

    public init() throws(SystemError) {
        loop = try EventLoop()
    }

    /// Asks the agent on `socket`; returns when it answered, failed or `timeout` passed.
    public func check(socket path: String) -> Verdict {
        let address: UnixSocketAddress
        do throws(UnixSocketAddress.ParseError) {
            address = try UnixSocketAddress(path)
        } catch {
            return .cannotConnect("\(error)")
        }
        do throws(SystemError) {
            driver = try H2ConnectionDriver.onSocket(try connectUnixSocket(address), loop: loop, session: grpc.session)
        } catch {
            return .cannotConnect(String(cString: strerror(error.errno)))
        }
        driver?.onClosed = { [weak self] loss in
            guard let self, self.verdict == nil else { return }
            let reason =
                switch loss {
                case .closedByPeer, .sessionEnded: "the agent closed the connection"
                case .socket(let error): String(cString: strerror(error.errno))
                default: "\(loss)"
                }
            self.verdict = .callFailed(GRPCStatus(.unavailable, reason))
        }
        driver?.afterClosed = { [grpc] in grpc.connectionLost() }
        let call: GRPCClientCall
        do throws(GRPCStatus) {
            call = try grpc.startCall(path: HealthService.checkPath)
        } catch {
            return .callFailed(error)
        }
        var status: HealthWire.ServingStatus?
        call.onMessage = { bytes in status = HealthWire.status(fromResponse: bytes) }
        call.onFinish = { [weak self] grpcStatus, _ in
            guard let self, self.verdict == nil else { return }
            if grpcStatus.code != .ok {
                self.verdict = .callFailed(grpcStatus)
            } else if let status {
                self.verdict = status == .serving ? .serving : .notServing(status)
            } else {
                self.verdict = .callFailed(GRPCStatus(.internal, "no HealthCheckResponse"))
            }
        }
        call.send(HealthWire.request(service: ""))
        call.closeSend()
        driver?.flush()
        _ = loop.run(until: { self.verdict != nil }, timeout: Self.timeout)
        driver?.close()
        return verdict ?? .timedOut
    }

    /// The whole command: resolves the socket like `run` does (flag, then SDS_SOCKET, then the default), checks,
    /// prints one line (stdout when serving, stderr otherwise) and returns the exit code.
    public static func main(socket flag: String?, environment: [String: String]) -> Int32 {
        var options = RawAgentOptions()
        options.socket = flag
        let path = OptionSource(options: options, environment: environment).text(.socket, else: "")
        let verdict: Verdict
        do {
            verdict = try HealthCheckClient().check(socket: path)
        } catch {
            verdict = .cannotConnect("\(error)")
        }
        let line = verdict.line(socket: path) + "\n"
        _ = line.withCString { write(verdict.exitCode == 0 ? 1 : 2, $0, strlen($0)) }
        return verdict.exitCode
    }
}
