public import Logging
public import SPIFFE
public import Transport

/// The bundles of the trust domains this agent federates with (`--federate-with`), kept current from their sources:
/// files are watched and re-read on every change. A source that fails (missing file, bad document, a bundle for
/// another domain, a lower `spiffe_sequence`) is logged once per reason and its last good bundle stays served.
///
///     file event ──▶ read (≤ 1 MiB) ──▶ SPIFFEBundle.parse ──▶ FederatedBundleAcceptance ──▶ onChange
///                                                   └── refused: logged once; the last good bundle stays
public final class FederatedBundles {
    public let sources: [FederationSource]
    private let logger: Logger
    private var watcher: FileWatcher?
    private var lastRefusal: [TrustDomain: String] = [:]
    /// The bundles served, by trust domain (a domain whose source never delivered is absent).
    public private(set) var bundles: [TrustDomain: SPIFFEBundle] = [:]
    /// A bundle was added or replaced (by different content).
    public var onChange: (() -> Void)?

    /// Starts watching the file sources and reads each once. Endpoint sources are driven by their own fetchers,
    /// which hand results to `deliver`.
    public init(sources: [FederationSource], loop: EventLoop, logger: Logger) {
        self.sources = sources
        self.logger = logger
        let files = sources.compactMap { source -> String? in
            if case .file(let path) = source.location { return path }
            return nil
        }
        guard !files.isEmpty else { return }
        do {
            let watcher = try FileWatcher(loop: loop) { [weak self] paths in self?.filesChanged(paths) }
            for path in files { try watcher.watch(file: path) }
            self.watcher = watcher
        } catch {
            logger.warning(
                "cannot watch the --federate-with files (changes need a restart)", metadata: ["error": "\(error)"])
        }
        for source in sources { read(source) }
    }

    /// The X.509 bundles served, in trust-domain order.
    public var x509Bundles: [X509Bundle] { bundles.keys.sorted().compactMap { bundles[$0]?.x509 } }

    private func filesChanged(_ paths: Set<String>) {
        var changed = false
        for source in sources {
            guard case .file(let path) = source.location, paths.contains(path) else { continue }
            changed = read(source, notify: false) || changed
        }
        if changed { onChange?() }
    }

    /// Reads a file source; returns whether the served bundle changed.
    @discardableResult
    private func read(_ source: FederationSource, notify: Bool = false) -> Bool {
        guard case .file(let path) = source.location else { return false }
        let bytes: [UInt8]
        do {
            let file = try RegularFile(path: path)
            bytes = try file.readAll(limit: SPIFFEBundle.maxDocumentBytes)
        } catch {
            refuse(source, "cannot read it: \(error)")
            return false
        }
        return deliver(bytes, for: source, notify: notify)
    }

    /// A source's document (read from a file or fetched from an endpoint): parsed, checked, and served if accepted.
    /// Returns whether the served bundle changed; `onChange` runs then when `notify` is set.
    @discardableResult
    public func deliver(_ bytes: [UInt8], for source: FederationSource, notify: Bool = true) -> Bool {
        let trustDomain = source.trustDomain
        let bundle: SPIFFEBundle
        do throws(SPIFFEBundle.ParseError) {
            bundle = try SPIFFEBundle.parse(bytes, trustDomain: trustDomain)
        } catch {
            refuse(source, "\(error)")
            return false
        }
        do throws(FederatedBundleAcceptance.Refusal) {
            try FederatedBundleAcceptance.check(bundle, previous: bundles[trustDomain], trustDomain: trustDomain)
        } catch {
            refuse(source, error.description)
            return false
        }
        lastRefusal[trustDomain] = nil
        guard bundles[trustDomain] != bundle else { return false }
        let first = bundles[trustDomain] == nil
        bundles[trustDomain] = bundle
        logger.info(
            first ? "federated bundle loaded" : "federated bundle changed",
            metadata: [
                "trust_domain": "\(trustDomain.name)", "source": "\(source)",
                "x509_authorities": "\(bundle.x509.certificates.count)", "jwt_authorities": "\(bundle.jwtKeys.count)",
                "sequence": "\(bundle.sequence.map { "\($0)" } ?? "none")",
            ])
        if notify { onChange?() }
        return true
    }

    /// Logs a refusal once per source and reason.
    public func refuse(_ source: FederationSource, _ reason: String) {
        guard lastRefusal[source.trustDomain] != reason else { return }
        lastRefusal[source.trustDomain] = reason
        logger.warning(
            "federated bundle refused; the last good one stays served",
            metadata: [
                "trust_domain": "\(source.trustDomain.name)", "source": "\(source)", "reason": "\(reason)",
                "serving": "\(bundles[source.trustDomain] == nil ? "none" : "previous")",
            ])
    }
}
