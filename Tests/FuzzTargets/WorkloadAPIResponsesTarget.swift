import GRPC
import PKI
import SPIFFE
import Wire
import WorkloadAPIClient

/// What an upstream Workload API server can make the client's state machine see. The input is
/// `now` (4 bytes, seconds since 2020-01-01, so seeds can hold certificates valid at capture time), then records:
/// one opcode byte, then its operands. Responses are protobuf bytes as the server sent them (decoded here, as
/// the issuer does); the other records are the events the I/O shell feeds (stream ends, lost connections,
/// timers), each for the current attempt or a stale one.
enum WorkloadAPIResponsesTarget {
    static let epoch2020: Int64 = 1_577_836_800
    /// Records per input: enough for reconnect storms, few enough to keep each run short.
    static let maxRecords = 64

    static func run(_ input: UnsafeRawBufferPointer) {
        var reader = InputReader(input)
        let now = Timestamp(secondsSinceEpoch: epoch2020 + Int64(reader.uint32()))
        var machine = WorkloadAPIClientStateMachine(upstream: "unix:///fuzz", wantedID: nil)
        var attempt = 0
        func apply(_ actions: [WorkloadAPIClientStateMachine.Action]) {
            for action in actions {
                if case .connect(let next) = action { attempt = next }
            }
        }
        apply(machine.start())
        apply(machine.retryTimerFired())
        var records = 0
        while !reader.isAtEnd, records < maxRecords {
            records += 1
            let opcode = reader.byte()
            // With the high bit set, the record addresses the previous attempt: the machine must ignore it.
            let target = opcode & 0x80 == 0 ? attempt : attempt - 1
            let randomUnit = Double(reader.byte()) / 255
            switch opcode & 0x7f % 8 {
            case 0:
                let bytes = reader.lengthPrefixed()
                do {
                    apply(machine.received(try X509SVIDResponse(wireBytes: bytes), attempt: target, now: now))
                } catch {
                    apply(
                        machine.malformedMessage(
                            attempt: target, stream: .x509SVID, reason: "\(error)", randomUnit: randomUnit))
                }
            case 1:
                let bytes = reader.lengthPrefixed()
                do {
                    apply(machine.received(try X509BundlesResponse(wireBytes: bytes), attempt: target, now: now))
                } catch {
                    apply(
                        machine.malformedMessage(
                            attempt: target, stream: .x509Bundles, reason: "\(error)", randomUnit: randomUnit))
                }
            case 2:
                let code = GRPCStatus.Code(rawValue: Int(reader.byte() % 17)) ?? .unknown
                let stream: WorkloadAPIStream = reader.byte() & 1 == 0 ? .x509SVID : .x509Bundles
                apply(
                    machine.streamEnded(
                        attempt: target, stream: stream, status: GRPCStatus(code, "fuzz"), randomUnit: randomUnit))
            case 3: apply(machine.retryTimerFired())
            case 4: apply(machine.connectionLost(attempt: target, reason: "fuzz", randomUnit: randomUnit))
            case 5: apply(machine.firstResponseDeadlinePassed(attempt: target, randomUnit: randomUnit))
            case 6: apply(machine.connectFailed(attempt: target, reason: "fuzz", randomUnit: randomUnit))
            default: apply(machine.rotateNow())
            }
        }
        _ = machine.stop()
    }
}
