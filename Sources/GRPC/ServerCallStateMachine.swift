/// The lifecycle of one server-side gRPC call on one HTTP/2 stream, as a pure value: events in, actions out.
///
/// ```
///            request headers ok                 client END_STREAM
///   ┌──────┐ ───────────────────► ┌──────────┐ ──────────────────► ┌──────────────────┐
///   │ idle │                      │   open   │                     │ halfClosedRemote │
///   └──────┘                      └──────────┘                     └──────────────────┘
///      │ bad headers /               │  finish(status) / RST /           │ finish(status) / RST
///      │ unknown method              │  bad message                      │
///      │ (trailers-only)             ▼                                   ▼
///      └───────────────────────► ┌────────────────────────────────────────────┐
///                                │                  closed                     │
///                                └────────────────────────────────────────────┘
/// ```
///
/// `open` and `halfClosedRemote` also remember whether response headers went out, which decides whether a
/// status is sent as trailers or as a trailers-only response.
public struct ServerCallStateMachine: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        case idle
        case open(responseHeadersSent: Bool)
        case halfClosedRemote(responseHeadersSent: Bool)
        case closed
    }

    public enum HeadersAction: Sendable, Equatable {
        /// Start the handler.
        case accept
        /// Answer with a trailers-only response (HTTP `:status`, then the gRPC status) and forget the stream.
        case reject(httpStatus: Int, status: GRPCStatus)
    }

    public enum SendAction: Sendable, Equatable {
        case sendHeadersAndMessage
        case sendMessage
        /// The call is over (finished or cancelled); drop the message.
        case dropClosed
    }

    public enum FinishAction: Sendable, Equatable {
        case sendTrailers(GRPCStatus)
        case sendTrailersOnly(GRPCStatus)
        case none
    }

    public enum InboundAction: Sendable, Equatable {
        case deliverMessage
        case deliverHalfClose
        /// The request stream is broken (bad frame, oversize, ended mid-message): finish with this status.
        case fail(FinishAction)
        case ignore
    }

    public enum CloseAction: Sendable, Equatable {
        /// The stream died before the handler finished: tell it (`onCancel`).
        case notifyCancelled
        case none
    }

    public private(set) var state: State = .idle

    public init() {}

    public mutating func receiveRequestHeaders(
        method: String?, contentType: String?, pathIsRegistered: Bool, path: String?
    ) -> HeadersAction {
        guard case .idle = state else {
            return .reject(httpStatus: 200, status: GRPCStatus(.internal, "duplicate headers"))
        }
        guard method == "POST" else {
            state = .closed
            return .reject(httpStatus: 405, status: GRPCStatus(.internal, "method must be POST"))
        }
        guard let contentType, contentType.hasPrefix("application/grpc") else {
            state = .closed
            return .reject(
                httpStatus: 415, status: GRPCStatus(.internal, "invalid content-type \(contentType ?? "(none)")"))
        }
        guard pathIsRegistered else {
            state = .closed
            return .reject(httpStatus: 200, status: GRPCStatus(.unimplemented, "unknown method \(path ?? "(none)")"))
        }
        state = .open(responseHeadersSent: false)
        return .accept
    }

    public mutating func receiveMessage() -> InboundAction {
        switch state {
        case .open, .halfClosedRemote: .deliverMessage
        case .idle, .closed: .ignore
        }
    }

    public mutating func receiveEndOfStream(atMessageBoundary: Bool) -> InboundAction {
        switch state {
        case .open(let sent):
            guard atMessageBoundary else {
                return .fail(finish(GRPCStatus(.internal, "request ended inside a message")))
            }
            state = .halfClosedRemote(responseHeadersSent: sent)
            return .deliverHalfClose
        case .idle, .halfClosedRemote, .closed:
            return .ignore
        }
    }

    public mutating func receiveInvalidMessage(_ status: GRPCStatus) -> InboundAction {
        switch state {
        case .open, .halfClosedRemote: .fail(finish(status))
        case .idle, .closed: .ignore
        }
    }

    public mutating func send() -> SendAction {
        switch state {
        case .open(false):
            state = .open(responseHeadersSent: true)
            return .sendHeadersAndMessage
        case .halfClosedRemote(false):
            state = .halfClosedRemote(responseHeadersSent: true)
            return .sendHeadersAndMessage
        case .open(true), .halfClosedRemote(true):
            return .sendMessage
        case .idle, .closed:
            return .dropClosed
        }
    }

    public mutating func finish(_ status: GRPCStatus) -> FinishAction {
        switch state {
        case .open(let sent), .halfClosedRemote(let sent):
            state = .closed
            return sent ? .sendTrailers(status) : .sendTrailersOnly(status)
        case .idle, .closed:
            return .none
        }
    }

    /// The H2 stream closed (RST from the peer, connection loss, or the normal end after our trailers).
    public mutating func streamClosed() -> CloseAction {
        switch state {
        case .open, .halfClosedRemote:
            state = .closed
            return .notifyCancelled
        case .idle, .closed:
            state = .closed
            return .none
        }
    }
}
