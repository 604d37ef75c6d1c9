import Issuance
import JWT
import Logging
import PKI
import Servers
import Transport
import Wire

/// `jwt-svid:<audience>` names, served over SDS as `generic_secret`s holding the raw JWT-SVID (for Envoy's
/// credential_injector): minted when a stream first asks, re-minted and pushed at half-life while any stream holds
/// the name, dropped when the last one releases it.
///
/// Work is proportional to the change: a new name mints that name only, and the timer re-mints only the names
/// whose half-life has come (each name keeps its own renewal time), so a client adding names one by one costs one
/// mint each, not a re-mint of everything held.
final class JWTSecretNames {
    private struct Held {
        let audience: String
        /// When to re-mint; nil after a failed mint (retried on the next timer, in a second).
        var renewAt: Timestamp?
    }

    private let authority: LocalJWTAuthority
    private let loop: EventLoop
    private let clock: any WallClock
    private let logger: Logger
    private var held: [String: Held] = [:]
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
        var fresh: [String] = []
        for name in names where held[name] == nil && name.hasPrefix(SecretName.jwtSVIDPrefix) {
            let audience = String(name.dropFirst(SecretName.jwtSVIDPrefix.count))
            guard LocalJWTAuthority.checkAudiences([audience]) == nil else { continue }
            held[name] = Held(audience: audience, renewAt: nil)
            fresh.append(name)
        }
        if !fresh.isEmpty { mint(fresh) }
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

    /// Mints `names` (held ones), publishes them, and re-arms the timer for the earliest renewal.
    private func mint(_ names: [String]) {
        var secrets: [Secret] = []
        for name in names {
            guard let entry = held[name] else { continue }
            do {
                let minted = try authority.token(for: [entry.audience])
                secrets.append(Secret(name: name, kind: .genericSecret(.inlineBytes(Array(minted.token.utf8)))))
                held[name]?.renewAt = JWTSVIDCache.renewAt(issuedAt: minted.issuedAt, expiresAt: minted.expiresAt)
            } catch {
                held[name]?.renewAt = nil
                logger.error(
                    "cannot mint a JWT-SVID", metadata: ["name": "\(LogSummary.text(name))", "error": "\(error)"])
            }
        }
        if !secrets.isEmpty { publish?(secrets) }
        arm()
    }

    /// The timer for the earliest renewal (a failed mint: in a second).
    private func arm() {
        timer?.cancel()
        timer = nil
        guard !held.isEmpty else { return }
        let now = clock.now()
        var delay = Double.infinity
        for entry in held.values {
            delay = min(delay, entry.renewAt.map { Double(max(0, $0 - now)) } ?? 1)
        }
        timer = loop.schedule(after: max(delay, 1)) { [weak self] in self?.renewDue() }
    }

    private func renewDue() {
        let now = clock.now()
        let due = held.filter { $0.value.renewAt.map { $0 <= now } ?? true }.keys.sorted()
        mint(due)
    }
}
