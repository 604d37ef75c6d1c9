/// One SPIFFE Workload API server stream (`FetchX509SVID`, `FetchX509Bundles`, `FetchJWTBundles`): every message
/// carries the full current state, and a new one goes out whenever the state changes. The state is named by a
/// generation number the service bumps when the encoded state changes; `nil` while there is nothing to serve yet (the
/// stream waits — the spec's hold-don't-fail rule, like SDS).
///
/// Pull-style, like the SDS streams' `OutboundGate`: at most one message of a stream sits in the transport; changes
/// meanwhile only mark the stream as owing one, and when the transport took the message the stream sends the state
/// current then (one message, whatever the number of changes since). A client that never reads costs one message.
///
/// ```
///                 stateChanged(g) / transportReady(g), g != sent
///   ┌──────────────┐ ─────────────── send(g) ──────────────▶ ┌──────────────────────────────┐
///   │ idle(sent)   │                                         │ busy(sent, owed: a change    │
///   └──────────────┘ ◀──────── transportReady: owed and ──── │   came in meanwhile)         │
///          ▲                   nothing new (or not owed)     └──────────────────────────────┘
///          └── stateChanged(nil) / same generation: nothing to send (waiting)
/// ```
struct LatestStateStream: Sendable, Equatable {
    enum Action: Sendable, Equatable {
        /// Nothing to send: no state yet, the client has it already, or the transport still holds a message.
        case none
        /// Send the state of this generation (the caller encodes it) and then call `responseAwaitsTransport`.
        case send(generation: UInt64)
    }

    /// The generation last handed to the transport.
    private(set) var sentGeneration: UInt64?
    /// The transport still holds the latest message (the peer has not taken it).
    private(set) var busy = false
    /// A change came in while busy.
    private(set) var owed = false

    /// The state is now `generation` (nil: nothing to serve).
    mutating func stateChanged(to generation: UInt64?) -> Action {
        guard let generation, generation != sentGeneration else { return .none }
        if busy {
            owed = true
            return .none
        }
        return .send(generation: generation)
    }

    /// The message of `generation` was queued on the transport.
    mutating func responseAwaitsTransport(generation: UInt64) {
        sentGeneration = generation
        busy = true
        owed = false
    }

    /// The transport took everything queued; `generation` is the state now.
    mutating func transportReady(current generation: UInt64?) -> Action {
        busy = false
        guard owed else { return .none }
        owed = false
        return stateChanged(to: generation)
    }
}
