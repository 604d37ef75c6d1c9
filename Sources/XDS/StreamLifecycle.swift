internal import Wire

/// What `SotWStream` and `DeltaStream` keep alike: the stream's lifecycle around a protocol-specific payload,
/// its nonces, the client's node and the latest NACK.
///
/// ```
///   ┌──────────────────────┐  admit: type_url ok   ┌──────┐  admit: type_url ok (payload taken out, nil
///   │ awaitingFirstRequest ├──────────────────────▶│ open │◀─┐  until the event puts it back)
///   └──────────┬───────────┘                       └──┬───┘──┘
///              │ admit: bad type_url                  │ admit: bad type_url
///              ▼                                      │
///   ┌──────────────────────┐◀─────────────────────────┘
///   │ failed(error)        │  admit: ignored
///   └──────────────────────┘
/// ```
///
/// The payload is kept beside the state, not in it: an event takes it out (`takePayload`, a move), mutates it with its
/// storage uniquely referenced (copy-on-write does not copy), and puts it back. In the state enum, generic over the
/// payload, every event copied the payload out and destroyed the state's old value through the runtime's value
/// witnesses: ~280 instructions a stream on each push.
struct StreamLifecycle<Payload: Sendable>: Sendable {
    enum State: Sendable {
        case awaitingFirstRequest
        /// `payload` holds the stream's payload (nil only while an event has it out).
        case open
        case failed(XDSProtocolError)
    }

    /// What a request meets on arrival.
    enum Admission {
        /// The stream failed earlier: the service ends the call on that error; anything after it is ignored.
        case ignored
        /// The request breaks the protocol; the stream is now `failed(error)`.
        case rejected(XDSProtocolError)
        /// The first request of the stream; the state is still `awaitingFirstRequest`.
        case first
        /// A follow-up request: the payload, taken out to be mutated and put back (`payload = …`).
        case open(Payload)
    }

    private(set) var state: State = .awaitingFirstRequest
    /// The stream's payload while it is open; nil otherwise, and while an event has taken it out.
    var payload: Payload?
    var nonces: NonceSequence
    /// The client's node, from the first request that carried one (Istio sends it only on the first message).
    var node: Node?
    /// The most recent NACK on the stream.
    var lastRejection: RPCStatus?
    /// Pull-style output, shared by both protocols: see `OutboundGate`.
    var outbound = OutboundGate()

    init(nonces: NonceSequence) {
        self.nonces = nonces
    }

    var isOpen: Bool {
        if case .open = state { return true }
        return false
    }

    /// The error that failed the stream, if one did.
    var failure: XDSProtocolError? {
        if case .failed(let error) = state { return error }
        return nil
    }

    /// Opens the stream with its first payload.
    mutating func open(with payload: Payload) {
        state = .open
        self.payload = payload
    }

    /// The open stream's payload, moved out for an event to mutate and put back (`payload = …`); nil when the stream
    /// is not open.
    mutating func takePayload() -> Payload? {
        guard case .open = state else { return nil }
        guard let taken = payload.take() else {
            preconditionFailure("an SDS stream re-entered while handling an event")
        }
        return taken
    }

    /// The checks every request passes first, in both protocols: the type URL (a bad one fails the stream), then
    /// the node is kept if none was yet.
    mutating func admit(typeURL: String, node requestNode: Node?) -> Admission {
        let isFirstRequest: Bool
        switch state {
        case .failed: return .ignored
        case .awaitingFirstRequest: isFirstRequest = true
        case .open: isFirstRequest = false
        }
        if let error = checkTypeURL(typeURL, isFirstRequest: isFirstRequest) {
            state = .failed(error)
            payload = nil
            return .rejected(error)
        }
        if node == nil { node = requestNode }
        guard let taken = takePayload() else { return .first }
        return .open(taken)
    }
}

/// At most one response of a stream sits in the transport at a time; later changes wait in the stream's own state
/// (what it last sent versus the cache) instead of as queued responses, so a client that stops reading costs one
/// response of memory however often secrets rotate.
///
/// ```
///               send (service: responseAwaitsTransport)
///   ┌──────┐ ─────────────────────────────────────────▶ ┌──────────────────────────────┐
///   │ idle │                                            │ busy(owed: a change came in) │
///   └──────┘ ◀───────────────────────────────────────── └──────────────────────────────┘
///               transportReady: if owed, evaluate now (one response merging every change since)
/// ```
///
/// Nonces stay right: a response that was never built never had a nonce, so the client can only echo nonces of
/// responses it got or will get (the one in the transport).
struct OutboundGate: Sendable {
    /// The transport still holds the latest response (the peer has not taken it).
    var busy = false
    /// A change came in while busy: evaluate when the transport is ready.
    var owed = false

    /// Whether an evaluation may build a response now; records the debt when it may not.
    mutating func mayRespond() -> Bool {
        if busy { owed = true }
        return !busy
    }

    /// The transport took the response; true when a held-back change must be evaluated now.
    mutating func ready() -> Bool {
        busy = false
        defer { owed = false }
        return owed
    }
}
