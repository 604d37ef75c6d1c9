import BundleEndpoint
import Glibc
public import Logging
public import PKI
public import SPIFFE
public import Transport

/// The bundles of the trust domains this agent federates with (`--federate-with`), kept current from their sources:
/// files are watched and re-read on every change; bundle endpoints are fetched at once, then again after the
/// bundle's `spiffe_refresh_hint` (clamped to 10 s – 1 h), with back-off while they fail. A source that fails
/// (missing file, unreachable endpoint, bad document, a bundle for another domain, a lower `spiffe_sequence`) is logged
/// once per reason and its last good bundle stays served.
///
///     file event / fetch ──▶ ≤ 1 MiB ──▶ SPIFFEBundle.parse ──▶ BundleRefreshPolicy.refusal ──▶ onChange
///                                                     └── refused: logged once; the last good bundle stays
///
/// An endpoint's document is parsed on the worker: OpenSSL 3.0 spends ~0.1 ms on each certificate, and a bundle may
/// hold 512, ~60 ms in which the loop would answer no one, at every refresh. A file's is parsed on the loop: the
/// operator writes it, and it is read when it changes.
public final class FederatedBundles {
    public let sources: [FederationSource]
    private let logger: Logger
    private var watcher: FileWatcher?
    private var lastRefusal: [TrustDomain: String] = [:]
    /// The bundles served, by trust domain (a domain whose source never delivered is absent).
    public private(set) var bundles: [TrustDomain: SPIFFEBundle] = [:]
    /// Why 256: a refusal names its cause in a sentence; more is content the other side chose.
    static let maxReasonBytes = 256
    /// A bundle was added or replaced (by different content).
    public var onChange: (() -> Void)?

    /// Starts watching the file sources and reads each once. Endpoint sources are driven by their own fetchers,
    /// which hand results to `deliver`.
    private let loop: EventLoop
    private let worker: OffLoopWorker?
    private let policy = BundleRefreshPolicy()
    /// https_spiffe: the roots that verify a domain's endpoint until its first bundle is served.
    private let bootstrap: [TrustDomain: [Certificate]]
    /// One fetch in flight per endpoint source, its next-fetch timer, and its failures in a row.
    private var fetchers: [TrustDomain: BundleEndpointFetcher] = [:]
    private var timers: [TrustDomain: EventLoop.Timer] = [:]
    private var failures: [TrustDomain: Int] = [:]
    /// Set by `stop()`: a parse still on the worker then hands back nothing.
    private var stopped = false

    /// `worker` resolves endpoint host names off the loop (needed only with endpoint sources); `bootstrap` holds the
    /// roots an https_spiffe endpoint is first verified with.
    public init(
        sources: [FederationSource], loop: EventLoop, logger: Logger, worker: OffLoopWorker? = nil,
        bootstrap: [TrustDomain: [Certificate]] = [:]
    ) {
        self.sources = sources
        self.logger = logger
        self.loop = loop
        self.worker = worker
        self.bootstrap = bootstrap
        for source in sources {
            if case .endpoint = source.location { scheduleFetch(source, after: 0) }
        }
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
    func deliver(_ bytes: [UInt8], for source: FederationSource, notify: Bool = true) -> Bool {
        accept(Self.parse(bytes, for: source.trustDomain), for: source, notify: notify)
    }

    private static func parse(_ bytes: [UInt8], for trustDomain: TrustDomain) -> Result<
        SPIFFEBundle, SPIFFEBundle.ParseError
    > {
        do throws(SPIFFEBundle.ParseError) {
            return .success(try SPIFFEBundle.parse(bytes, trustDomain: trustDomain))
        } catch {
            return .failure(error)
        }
    }

    /// A source's document, parsed (or why it does not parse): checked, and served if accepted. Returns whether the
    /// served bundle changed; `onChange` runs then when `notify` is set.
    @discardableResult
    private func accept(
        _ parsed: Result<SPIFFEBundle, SPIFFEBundle.ParseError>, for source: FederationSource, notify: Bool = true
    ) -> Bool {
        let trustDomain = source.trustDomain
        let bundle: SPIFFEBundle
        switch parsed {
        case .success(let parsed): bundle = parsed
        case .failure(let error):
            refuse(source, "\(error)")
            return false
        }
        if let refusal = policy.refusal(new: bundle, previous: bundles[trustDomain], trustDomain: trustDomain) {
            refuse(source, refusal)
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
    func refuse(_ source: FederationSource, _ text: String) {
        // The endpoint chooses part of the text (an HTTP reason phrase, a parser's excerpt): bounded before it is
        // kept or logged.
        let reason =
            text.utf8.count <= Self.maxReasonBytes
            ? text : String(decoding: text.utf8.prefix(Self.maxReasonBytes), as: UTF8.self) + "…"
        guard lastRefusal[source.trustDomain] != reason else { return }
        lastRefusal[source.trustDomain] = reason
        logger.warning(
            "federated bundle refused; the last good one stays served",
            metadata: [
                "trust_domain": "\(source.trustDomain.name)", "source": "\(source)", "reason": "\(reason)",
                "serving": "\(bundles[source.trustDomain] == nil ? "none" : "previous")",
            ])
    }

    // MARK: Bundle endpoints

    private func scheduleFetch(_ source: FederationSource, after seconds: Double) {
        timers[source.trustDomain]?.cancel()
        timers[source.trustDomain] = loop.schedule(after: seconds) { [weak self] in self?.fetch(source) }
    }

    private func fetch(_ source: FederationSource) {
        guard case .endpoint(let url) = source.location, let worker else { return }
        let domain = source.trustDomain
        let profile: BundleEndpointProfile
        if let endpointID = url.endpointID {
            // The domain's own current bundle verifies its endpoint; the bootstrap one only until there is one.
            profile = .httpsSPIFFE(
                endpointID: endpointID, roots: bundles[domain]?.x509.certificates ?? bootstrap[domain] ?? [])
        } else {
            profile = .httpsWeb
        }
        fetchers[domain] = BundleEndpointFetcher(url: url, profile: profile, loop: loop, worker: worker) {
            [weak self] result in
            guard let self else { return }
            self.fetchers[domain] = nil
            self.fetched(result, for: source)
        }
    }

    private func fetched(_ result: Result<[UInt8], BundleEndpointError>, for source: FederationSource) {
        let domain = source.trustDomain
        switch result {
        case .success(let bytes):
            failures[domain] = nil
            guard let worker else { return }
            worker.run({ Self.parse(bytes, for: domain) }) { [weak self] parsed in
                guard let self, !self.stopped else { return }
                self.accept(parsed, for: source)
                self.scheduleRefresh(source)
            }
        case .failure(let error):
            let count = (failures[domain] ?? 0) + 1
            failures[domain] = count
            refuse(source, error.reason)
            let refresh = policy.refreshDelay(hint: bundles[domain]?.refreshHint)
            scheduleFetch(
                source,
                after: policy.retryDelay(
                    failures: count, refreshDelay: refresh, randomUnit: Double.random(in: 0..<1)))
        }
    }

    /// The next fetch of an endpoint that answered. A refused document is not retried sooner: the endpoint
    /// answered, and asking again at once would get the same answer. The refresh follows the bundle served (or the
    /// default hint without one).
    private func scheduleRefresh(_ source: FederationSource) {
        scheduleFetch(source, after: policy.refreshDelay(hint: bundles[source.trustDomain]?.refreshHint))
    }

    /// Stops every fetch and timer (shutdown).
    public func stop() {
        stopped = true
        for timer in timers.values { timer.cancel() }
        timers.removeAll()
        for fetcher in fetchers.values { fetcher.cancel() }
        fetchers.removeAll()
    }
}
