import GRPC
import Testing

private func openMachine() -> ServerCallStateMachine {
    var machine = ServerCallStateMachine()
    _ = machine.receiveRequestHeaders(
        method: "POST", contentType: "application/grpc+proto", pathIsRegistered: true, path: "/s/M")
    return machine
}

@Test func validHeadersOpenTheCall() {
    var machine = ServerCallStateMachine()
    let action = machine.receiveRequestHeaders(
        method: "POST", contentType: "application/grpc", pathIsRegistered: true, path: "/s/M")
    #expect(action == .accept)
    #expect(machine.state == .open(responseHeadersSent: false))
}

@Test func unknownMethodIsUnimplementedTrailersOnly() {
    var machine = ServerCallStateMachine()
    let action = machine.receiveRequestHeaders(
        method: "POST", contentType: "application/grpc", pathIsRegistered: false, path: "/s/Nope")
    #expect(action == .reject(httpStatus: 200, status: GRPCStatus(.unimplemented, "unknown method /s/Nope")))
    #expect(machine.state == .closed)
}

@Test func nonGRPCContentTypeIsRejectedWith415() {
    var machine = ServerCallStateMachine()
    let action = machine.receiveRequestHeaders(
        method: "POST", contentType: "application/json", pathIsRegistered: true, path: "/s/M")
    guard case .reject(415, let status) = action else {
        Issue.record("got \(action)")
        return
    }
    #expect(status.code == .internal)
}

@Test func getIsRejectedWith405() {
    var machine = ServerCallStateMachine()
    let action = machine.receiveRequestHeaders(
        method: "GET", contentType: "application/grpc", pathIsRegistered: true, path: "/s/M")
    guard case .reject(405, _) = action else {
        Issue.record("got \(action)")
        return
    }
}

@Test func firstSendCarriesHeadersThenOnlyMessages() {
    var machine = openMachine()
    #expect(machine.send() == .sendHeadersAndMessage)
    #expect(machine.send() == .sendMessage)
    #expect(machine.finish(.ok) == .sendTrailers(.ok))
    #expect(machine.send() == .dropClosed)
    #expect(machine.finish(.ok) == FinishAction.none)
}

@Test func finishBeforeAnySendIsTrailersOnly() {
    var machine = openMachine()
    #expect(machine.finish(GRPCStatus(.notFound)) == .sendTrailersOnly(GRPCStatus(.notFound)))
}

@Test func halfCloseKeepsTheResponseSideOpen() {
    var machine = openMachine()
    #expect(machine.receiveMessage() == .deliverMessage)
    #expect(machine.receiveEndOfStream(atMessageBoundary: true) == .deliverHalfClose)
    #expect(machine.state == .halfClosedRemote(responseHeadersSent: false))
    #expect(machine.send() == .sendHeadersAndMessage)
    #expect(machine.state == .halfClosedRemote(responseHeadersSent: true))
    #expect(machine.finish(.ok) == .sendTrailers(.ok))
    #expect(machine.streamClosed() == .none)
}

@Test func endOfStreamInsideAMessageFailsTheCall() {
    var machine = openMachine()
    #expect(
        machine.receiveEndOfStream(atMessageBoundary: false)
            == .fail(.sendTrailersOnly(GRPCStatus(.internal, "request ended inside a message"))))
    #expect(machine.state == .closed)
}

@Test func invalidMessageFailsWithItsStatus() {
    var machine = openMachine()
    _ = machine.send()
    let status = GRPCStatus(.resourceExhausted, "too big")
    #expect(machine.receiveInvalidMessage(status) == .fail(.sendTrailers(status)))
    #expect(machine.receiveMessage() == .ignore)
}

@Test func resetOfAnOpenCallNotifiesCancel() {
    var machine = openMachine()
    #expect(machine.streamClosed() == .notifyCancelled)
    #expect(machine.state == .closed)
    #expect(machine.finish(.ok) == FinishAction.none)
}

private typealias FinishAction = ServerCallStateMachine.FinishAction
