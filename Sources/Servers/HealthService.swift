import GRPC

/// `grpc.health.v1.Health` on the SDS socket: `SERVING` while the agent holds an SVID that has not expired,
/// `NOT_SERVING` otherwise. Same listener, same peer checks as SDS: a probe is one more admitted client.
///
/// Services answered: `""` (the server as a whole) and `envoy.service.secret.v3.SecretDiscoveryService`; any other
/// is `NOT_FOUND` on Check and `SERVICE_UNKNOWN` on Watch, as the health protocol specifies.
///
/// Watch streams get the current status at once and every change after it. A watcher that does not read gets no
/// queue: a status the transport cannot take now is replaced by the next one (only the latest status matters).
public final class HealthService {
    public static let checkPath = "/grpc.health.v1.Health/Check"
    public static let watchPath = "/grpc.health.v1.Health/Watch"
    static let knownServices: Set<String> = ["", "envoy.service.secret.v3.SecretDiscoveryService"]

    public private(set) var isServing = false
    private var watchers: [ObjectIdentifier: GRPCServerCall] = [:]
    /// Watchers whose last status did not fit the transport; they get the current one when it drains.
    private var behind: Set<ObjectIdentifier> = []

    public init() {}

    public var watcherCount: Int { watchers.count }

    public func register(on router: GRPCRouter) {
        router.register(Self.checkPath) { [weak self] call in self?.check(call) }
        router.register(Self.watchPath) { [weak self] call in self?.watch(call) }
    }

    /// Changes the status; every watcher hears it (only when it changed).
    public func setServing(_ serving: Bool) {
        guard serving != isServing else { return }
        isServing = serving
        for (key, call) in watchers { send(currentStatus, on: call, key: key) }
    }

    private var currentStatus: HealthWire.ServingStatus { isServing ? .serving : .notServing }

    private func check(_ call: GRPCServerCall) {
        var answered = false
        call.onMessage = { [weak self, weak call] bytes in
            guard let self, let call else { return }
            guard !answered else {
                call.finish(GRPCStatus(.invalidArgument, "Check is unary: one request"))
                return
            }
            answered = true
            guard let service = HealthWire.service(fromRequest: bytes) else {
                call.finish(GRPCStatus(.invalidArgument, "malformed HealthCheckRequest"))
                return
            }
            guard Self.knownServices.contains(service) else {
                call.finish(GRPCStatus(.notFound, "unknown service '\(service)'"))
                return
            }
            call.send(HealthWire.response(self.currentStatus))
            call.finish(.ok)
        }
        call.onHalfClose = { [weak call] in
            if !answered, let call { call.finish(GRPCStatus(.invalidArgument, "Check needs a HealthCheckRequest")) }
        }
    }

    private func watch(_ call: GRPCServerCall) {
        let key = ObjectIdentifier(call)
        call.onMessage = { [weak self, weak call] bytes in
            guard let self, let call else { return }
            guard self.watchers[key] == nil else {
                call.finish(GRPCStatus(.invalidArgument, "Watch takes one request"))
                self.forget(key)
                return
            }
            guard let service = HealthWire.service(fromRequest: bytes) else {
                call.finish(GRPCStatus(.invalidArgument, "malformed HealthCheckRequest"))
                return
            }
            guard Self.knownServices.contains(service) else {
                // The protocol: an unknown service is reported, and the stream stays open (it may appear later; here
                // it never does, so nothing more is sent).
                call.send(HealthWire.response(.serviceUnknown))
                return
            }
            self.watchers[key] = call
            self.send(self.currentStatus, on: call, key: key)
        }
        call.onWritable = { [weak self, weak call] in
            guard let self, let call else { return }
            if self.behind.remove(key) != nil { self.send(self.currentStatus, on: call, key: key) }
        }
        call.onCancel = { [weak self] in self?.forget(key) }
        call.onHalfClose = {}  // a Watch client may half-close; the stream goes on until it cancels
    }

    private func send(_ status: HealthWire.ServingStatus, on call: GRPCServerCall, key: ObjectIdentifier) {
        guard call.queuedBytes == 0 else {
            behind.insert(key)
            return
        }
        switch call.send(HealthWire.response(status)) {
        case .queued: break
        case .wouldExceed: behind.insert(key)
        case .closed: forget(key)
        }
    }

    private func forget(_ key: ObjectIdentifier) {
        watchers.removeValue(forKey: key)
        behind.remove(key)
    }

    /// Ends every Watch (graceful drain).
    public func finishAll(_ status: GRPCStatus) {
        for call in watchers.values { call.finish(status) }
        watchers.removeAll()
        behind.removeAll()
    }
}

/// The two messages of `grpc/health/v1/health.proto`, encoded by hand: `HealthCheckRequest { string service = 1; }`
/// and `HealthCheckResponse { ServingStatus status = 1; }`. Why not protoc-c like the xDS types: two one-field
/// messages cost less as twenty lines than as a generated module and its Wire bindings.
public enum HealthWire {
    public enum ServingStatus: UInt8, Sendable {
        case unknown = 0
        case serving = 1
        case notServing = 2
        case serviceUnknown = 3
    }

    /// The `service` field of a HealthCheckRequest; nil when the bytes are not a valid message. Unknown fields are
    /// skipped, as protobuf requires.
    public static func service(fromRequest bytes: [UInt8]) -> String? {
        var index = 0
        var service = ""
        func varint() -> UInt64? {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while index < bytes.count, shift < 64 {
                let byte = bytes[index]
                index += 1
                value |= UInt64(byte & 0x7F) << shift
                if byte & 0x80 == 0 { return value }
                shift += 7
            }
            return nil
        }
        while index < bytes.count {
            guard let key = varint() else { return nil }
            switch key & 7 {
            case 0:
                guard varint() != nil else { return nil }
            case 1:
                guard bytes.count - index >= 8 else { return nil }
                index += 8
            case 5:
                guard bytes.count - index >= 4 else { return nil }
                index += 4
            case 2:
                guard let length = varint(), length <= UInt64(bytes.count - index) else { return nil }
                let end = index + Int(length)
                if key >> 3 == 1 {
                    guard let text = String(validating: bytes[index..<end], as: UTF8.self) else { return nil }
                    service = text
                }
                index = end
            default:
                return nil
            }
        }
        return service
    }

    /// A HealthCheckResponse. `UNKNOWN` (0) is the default value: encoded as the empty message.
    public static func response(_ status: ServingStatus) -> [UInt8] {
        status == .unknown ? [] : [0x08, status.rawValue]
    }

    /// A HealthCheckRequest for `service`.
    public static func request(service: String) -> [UInt8] {
        let bytes = Array(service.utf8)
        guard !bytes.isEmpty else { return [] }
        var out: [UInt8] = [0x0A]
        var length = bytes.count
        while length >= 0x80 {
            out.append(UInt8(length & 0x7F) | 0x80)
            length >>= 7
        }
        out.append(UInt8(length))
        return out + bytes
    }

    /// The status in a HealthCheckResponse; nil when malformed.
    public static func status(fromResponse bytes: [UInt8]) -> ServingStatus? {
        if bytes.isEmpty { return .unknown }
        guard bytes.count == 2, bytes[0] == 0x08 else { return nil }
        return ServingStatus(rawValue: bytes[1])
    }
}
