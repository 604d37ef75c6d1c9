import Glibc
public import PKI

/// The wall clock, injected wherever certificate validity is compared with "now" so tests can move time.
public protocol WallClock: Sendable {
    func now() -> Timestamp
}

/// The real clock: `clock_gettime(CLOCK_REALTIME)`, truncated to whole seconds (certificates' precision).
public struct SystemWallClock: WallClock {
    public init() {}

    public func now() -> Timestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Timestamp(secondsSinceEpoch: Int64(spec.tv_sec))
    }
}
