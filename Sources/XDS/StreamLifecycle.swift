internal import Wire

/// What `SotWStream` and `DeltaStream` keep alike: the stream's lifecycle around a protocol-specific payload,
/// its nonces, the client's node and the latest NACK.
///
/// ```
///   ┌──────────────────────┐  admit: type_url ok   ┌───────────────┐  admit: type_url ok (payload taken out,
///   │ awaitingFirstRequest ├──────────────────────▶│ open(payload) │◀─┐  state `modifying` until put back)
///   └──────────┬───────────┘                       └──────┬────────┘──┘
///              │ admit: bad type_url                      │ admit: bad type_url
///              ▼                                          │
///   ┌──────────────────────┐◀─────────────────────────────┘
///   │ failed(error)        │  admit: ignored
///   └──────────────────────┘
/// ```
struct StreamLifecycle<Payload: Sendable>: Sendable {
    enum State: Sendable {
        case awaitingFirstRequest
        case open(Payload)
        case failed(XDSProtocolError)
        /// Held only while an event mutates the payload taken out of `.open`, so the payload's storage is
        /// uniquely referenced and mutating it does not copy (copy-on-write).
        case modifying
    }

    /// What a request meets on arrival.
    enum Admission {
        /// The stream failed earlier: the service ends the call on that error; anything after it is ignored.
        case ignored
        /// The request breaks the protocol; the stream is now `failed(error)`.
        case rejected(XDSProtocolError)
        /// The first request of the stream; the state is still `awaitingFirstRequest`.
        case first
        /// A follow-up request: the payload, taken out of the state (now `modifying`) to be mutated and put back.
        case open(Payload)
    }

    var state: State = .awaitingFirstRequest
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

    /// The payload while the stream is open.
    var payload: Payload? {
        if case .open(let payload) = state { return payload }
        return nil
    }

    /// The error that failed the stream, if one did.
    var failure: XDSProtocolError? {
        if case .failed(let error) = state { return error }
        return nil
    }

    /// The checks every request passes first, in both protocols: the type URL (a bad one fails the stream), then
    /// the node is kept if none was yet.
    mutating func admit(typeURL: String, node requestNode: Node?) -> Admission {
        let isFirstRequest: Bool
        switch state {
        case .failed: return .ignored
        case .modifying: preconditionFailure("an SDS stream re-entered while handling an event")
        case .awaitingFirstRequest: isFirstRequest = true
        case .open: isFirstRequest = false
        }
        if let error = checkTypeURL(typeURL, isFirstRequest: isFirstRequest) {
            state = .failed(error)
            return .rejected(error)
        }
        if node == nil { node = requestNode }
        guard case .open(let payload) = state else { return .first }
        state = .modifying
        return .open(payload)
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
