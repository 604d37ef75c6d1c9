import Issuance
import JWT
import Logging
import PKI
import Transport
import Wire

/// `jwt-svid:<audience>` names, served over SDS as `generic_secret`s holding the raw JWT-SVID (for Envoy's
/// credential_injector): minted when a stream first asks, re-minted and pushed at half-life while any stream holds
/// the name, dropped when the last one releases it.
final class JWTSecretNames {
    private let authority: LocalJWTAuthority
    private let loop: EventLoop
    private let clock: any WallClock
    private let logger: Logger
    /// Held names → their audience.
    private var held: [String: String] = [:]
    private var timer: EventLoop.Timer?
    var publish: (([Secret]) -> Void)?
    var unpublish: (([String]) -> Void)?

    init(authority: LocalJWTAuthority, loop: EventLoop, clock: any WallClock, logger: Logger) {
        self.authority = authority
        self.loop = loop
        self.clock = clock
        self.logger = logger
    }

    /// Names streams now hold (of any kind; only `jwt-svid:` ones are ours).
    func subscribe(_ names: [String]) {
        var fresh = false
        for name in names where held[name] == nil && name.hasPrefix(SecretName.jwtSVIDPrefix) {
            let audience = String(name.dropFirst(SecretName.jwtSVIDPrefix.count))
            guard LocalJWTAuthority.checkAudiences([audience]) == nil else { continue }
            held[name] = audience
            fresh = true
        }
        if fresh { refresh() }
    }

    /// Names no stream holds any more.
    func release(_ names: [String]) {
        let gone = names.filter { held.removeValue(forKey: $0) != nil }
        if !gone.isEmpty { unpublish?(gone) }
        if held.isEmpty {
            timer?.cancel()
            timer = nil
        }
    }

    /// Publishes every held name's current token (the same until its half-life) and arms the next re-mint.
    private func refresh() {
        timer?.cancel()
        timer = nil
        var secrets: [Secret] = []
        var next: Timestamp?
        for (name, audience) in held {
            do {
                let minted = try authority.token(for: [audience])
                secrets.append(Secret(name: name, kind: .genericSecret(.inlineBytes(Array(minted.token.utf8)))))
                let renewAt = JWTSVIDCache.renewAt(issuedAt: minted.issuedAt, expiresAt: minted.expiresAt)
                next = min(next ?? renewAt, renewAt)
            } catch {
                logger.error("cannot mint a JWT-SVID", metadata: ["name": "\(name)", "error": "\(error)"])
            }
        }
        if !secrets.isEmpty { publish?(secrets) }
        guard !held.isEmpty else { return }
        // A failed mint retries in a second; otherwise the earliest half-life.
        let delay = next.map { max(0, Double($0 - clock.now())) } ?? 1
        timer = loop.schedule(after: max(delay, 1)) { [unowned self] in self.refresh() }
    }
}
