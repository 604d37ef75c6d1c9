public import Issuance

/// An `Issuer` the test drives by hand: `push` an update or `fail` with an error; it records calls.
public final class FakeIssuer: Issuer {
    public private(set) var isStarted = false
    public private(set) var isStopped = false
    public private(set) var rotateNowCount = 0
    /// Called on `rotateNow()` (e.g. to push a new update from the test).
    public var onRotateNow: (() -> Void)?
    private var onUpdate: ((IdentityUpdate) -> Void)?
    private var onError: ((IssuerError) -> Void)?

    public init() {}

    public func start(onUpdate: @escaping (IdentityUpdate) -> Void, onError: @escaping (IssuerError) -> Void) {
        isStarted = true
        self.onUpdate = onUpdate
        self.onError = onError
    }

    public func rotateNow() {
        rotateNowCount += 1
        onRotateNow?()
    }

    public func stop() {
        isStopped = true
        onUpdate = nil
        onError = nil
    }

    /// Delivers `update` to the consumer (ignored before `start` and after `stop`, like a real issuer).
    public func push(_ update: IdentityUpdate) { onUpdate?(update) }

    /// Reports `error` to the consumer.
    public func fail(_ error: IssuerError) { onError?(error) }
}
