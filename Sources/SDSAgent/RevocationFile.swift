import Issuance
import Logging
import PKI
import SPIFFE
import Servers
import Transport

/// `--crl-file`: PEM CRLs for the own trust domain, served in its validation contexts so Envoy refuses revoked
/// peers (what istio-agent does with `/var/run/secrets/istio/crl/ca-crl.pem`).
///
///     file event / new identity ──▶ read (≤ 1 MiB, non-blocking) ──▶ CertificateRevocationList.validated
///                                       ├─ valid and new ──▶ `onChange(pem)`: the secrets are published again
///                                       └─ refused ──▶ logged once per reason; the last good CRLs stay served
///
/// The CRLs are checked against the current identity's CAs (the bundle's roots and the chain's intermediates), so
/// they are (re)read whenever the identity changes too.
final class RevocationFile {
    static let maxFileBytes = 1 << 20

    private let path: String
    private let clock: any WallClock
    private let logger: Logger
    private var watcher: FileWatcher?
    private var issuers: [Certificate] = []
    private var lastRefusal: String?
    /// The last good CRLs, re-encoded (nothing else from the file is served).
    private(set) var pem: String?
    var onChange: (() -> Void)?

    init(path: String, loop: EventLoop, clock: any WallClock, logger: Logger) {
        self.path = path
        self.clock = clock
        self.logger = logger
        do {
            let watcher = try FileWatcher(loop: loop) { [weak self] _ in self?.load() }
            try watcher.watch(file: path)
            self.watcher = watcher
        } catch {
            logger.warning("cannot watch --crl-file (changes need SIGHUP)", metadata: ["error": "\(error)"])
        }
    }

    /// The identity changed: its CAs are the ones a CRL must be signed by.
    func identityChanged(_ update: IdentityUpdate) {
        let own = update.bundles.first { $0.trustDomain == update.svid.spiffeID.trustDomain }
        let cas = (own?.certificates ?? []) + Array(update.svid.chain.dropFirst())
        // A rotation under the same CAs changes nothing the CRLs are checked against: the file is re-read on its own
        // events, not on every rotation.
        guard cas != issuers else { return }
        issuers = cas
        load()
    }

    func load() {
        guard !issuers.isEmpty else { return }
        let text: String
        do {
            let file = try RegularFile(path: path)
            text = String(decoding: try file.readAll(limit: Self.maxFileBytes), as: UTF8.self)
        } catch {
            return refuse("cannot read it: \(error)")
        }
        let lists: [CertificateRevocationList]
        do throws(CertificateRevocationList.Refusal) {
            lists = try CertificateRevocationList.validated(pem: text, issuers: issuers, now: clock.now())
        } catch {
            return refuse(error.description)
        }
        lastRefusal = nil
        let served = lists.map(\.pem).joined()
        guard served != pem else { return }
        pem = served
        logger.info(
            "CRLs loaded",
            metadata: [
                "file": "\(path)", "crls": "\(lists.count)", "revoked": "\(lists.reduce(0) { $0 + $1.revokedCount })",
                "next_update": "\(lists.compactMap(\.nextUpdate).min().map { "\($0)" } ?? "")",
            ])
        onChange?()
    }

    private func refuse(_ reason: String) {
        guard reason != lastRefusal else { return }
        lastRefusal = reason
        logger.warning(
            "--crl-file refused; the last good CRLs stay served",
            metadata: ["file": "\(path)", "reason": "\(reason)", "serving": "\(pem == nil ? "none" : "previous")"])
    }
}
