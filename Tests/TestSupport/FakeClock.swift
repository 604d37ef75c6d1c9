public import Issuance
public import PKI
import Synchronization

/// A wall clock that moves only when a test says so.
public final class FakeClock: WallClock, Sendable {
    /// 2026-01-01T00:00:00Z: a fixed, readable starting point.
    public static let defaultStart = Timestamp(secondsSinceEpoch: 1_767_225_600)

    private let current: Mutex<Timestamp>

    public init(_ start: Timestamp = FakeClock.defaultStart) {
        current = Mutex(start)
    }

    public func now() -> Timestamp { current.withLock { $0 } }

    public func set(_ time: Timestamp) { current.withLock { $0 = time } }

    public func advance(by seconds: Int64) { current.withLock { $0 = $0 + seconds } }
}
