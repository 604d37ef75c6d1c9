import Glibc
import JWT
import LocalCA
import PKI
import SPIFFE
import Transport

/// `sds-agent bundle show`: the trust bundle this configuration serves, as the SPIFFE bundle document another trust
/// domain federates with (`--federate-with <td>=<file>`, or `spire-server bundle set -format spiffe`), or as PEM.
///
/// Reads the configuration as `run` does (same flags and variables) and then only public material: the state dir's
/// root certificates (never `ca.key`), the operator CA's certificate chain (never `--ca-key`), the public halves of
/// the JWT signing keys, or `--bundle-file`. It never creates anything: an agent that has not started yet has no
/// bundle to publish, and making one here would race the agent for the state dir.
public enum BundleShow {
    public enum Format: String, Sendable, CaseIterable {
        /// A SPIFFE bundle document (JWK Set): X.509 and JWT authorities, refresh hint and sequence.
        case spiffe
        /// The X.509 roots as PEM `CERTIFICATE` blocks (what a plain TLS trust store reads).
        case pem
    }

    /// A refusal, one line, naming the file or the rule involved.
    public struct Failure: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    /// The refresh hint never says more than 5 minutes: a poll is one small document, and a consumer should see a
    /// new authority long before it signs anything.
    static let maxRefreshHint: Int64 = 300
    /// Nor less than a minute: SPIRE raises any smaller hint to one minute (bundleutil.MinimumRefreshHint), and a
    /// tighter poll buys nothing for rotations planned hours ahead.
    static let minRefreshHint: Int64 = 60

    /// Runs the command; returns the exit code: 0 printed, 1 nothing to print (no CA yet, a damaged file), 2 a bad
    /// flag or value, or an issuer whose bundle is not this agent's to publish.
    public static func main(format: Format, options: RawAgentOptions, environment: [String: String]) -> Int32 {
        let configuration: AgentConfiguration
        do { configuration = try AgentConfiguration.resolve(options, environment: environment) } catch {
            AgentMain.printError("sds-agent: \(error)")
            return 2
        }
        if let upstream = upstreamSource(configuration.issuer) {
            AgentMain.printError("sds-agent: bundle show: with --issuer \(configuration.issuer.rawValue) \(upstream)")
            return 2
        }
        let text: String
        do { text = try render(try bundle(configuration), format: format) } catch {
            AgentMain.printError("sds-agent: bundle show: \(error)")
            return 1
        }
        _ = text.withCString { write(1, $0, strlen($0)) }
        return 0
    }

    /// Where the bundle comes from when it is not this agent's: the relays serve their upstream's roots, which the
    /// upstream publishes itself (and may change without this agent knowing until it next asks). istiod's
    /// `--ca-root-cert` is not it either: that file authenticates istiod's serving certificate, which can chain to
    /// a different root than the one signing workloads (istio-csr, a plugged-in CA).
    static func upstreamSource(_ issuer: AgentConfiguration.IssuerKind) -> String? {
        switch issuer {
        case .workloadAPI:
            "the bundle is the SPIRE server's: publish it from there (spire-server bundle show -format spiffe)"
        case .istiod:
            "the bundle is istiod's CA root: publish it from there (the istio-ca-root-cert ConfigMap)"
        case .local, .files: nil
        }
    }

    /// The bundle `configuration` serves, read from its files.
    static func bundle(_ configuration: AgentConfiguration) throws -> SPIFFEBundle {
        let trustDomain = configuration.trustDomain
        switch configuration.issuer {
        case .files:
            guard let files = configuration.credentialFiles else { throw Failure("--issuer files needs --bundle-file") }
            let bytes: [UInt8]
            do throws(SystemError) {
                bytes = try Files.read(files.bundle, limit: SPIFFEBundle.maxDocumentBytes + 1)
            } catch {
                throw Failure("\(error)")
            }
            var bundle: SPIFFEBundle
            do { bundle = try SPIFFEBundle.parse(bytes, trustDomain: trustDomain) } catch {
                throw Failure("\(files.bundle): \(error)")
            }
            // The agent serves no JWT authority with --issuer files (it has no JWT-SVID source), so neither does
            // its bundle; the file's own hint and sequence stand when it has them.
            bundle.jwtKeys = []
            let created = bundle.x509.certificates.map(\.notBefore.secondsSinceEpoch)
            bundle.sequence = bundle.sequence ?? sequence(rootsCreated: created, jwtKeysCreated: [])
            bundle.refreshHint =
                bundle.refreshHint ?? refreshHint(svidTTL: configuration.svidTTL, jwtTTL: nil)
            return bundle
        case .local:
            let directory = configuration.stateDir
            let roots: [Certificate]
            if let chain = configuration.caCertPath {
                roots = try LocalCA.operatorSuppliedRoots(certificateChainPath: chain, trustDomain: trustDomain)
            } else {
                guard
                    let published = try LocalCARoots.readPublished(stateDirectory: directory, trustDomain: trustDomain)
                else { throw Failure("no CA in \(directory) yet: start the agent once") }
                roots = published
            }
            // The agent makes its JWT keys at every start with --issuer local, operator CA or not.
            guard let keys = try JWTSigningKeys.readPublished(stateDirectory: directory) else {
                throw Failure("no JWT signing key in \(directory) yet: start the agent once")
            }
            let jwtKeys = try keys.map { try JWKS.entry(kid: $0.kid, publicKey: $0.publicKey).rendered }
            return SPIFFEBundle(
                x509: X509Bundle(trustDomain: trustDomain, certificates: roots), jwtKeys: jwtKeys,
                sequence: sequence(
                    rootsCreated: roots.map(\.notBefore.secondsSinceEpoch),
                    jwtKeysCreated: keys.map(\.createdAt.secondsSinceEpoch)),
                refreshHint: refreshHint(svidTTL: configuration.svidTTL, jwtTTL: configuration.jwtTTL))
        case .workloadAPI, .istiod:
            throw Failure(upstreamSource(configuration.issuer) ?? "no bundle of ours")
        }
    }

    static func render(_ bundle: SPIFFEBundle, format: Format) throws -> String {
        switch format {
        case .pem: return bundle.x509.pem
        case .spiffe: return try bundle.document() + "\n"
        }
    }

    /// `spiffe_sequence`: the oldest plus the newest creation time (seconds) of the roots, plus the same of the JWT
    /// keys. Read from the files alone, with no counter to keep: each family rotates by adding a newer authority
    /// (its newest time grows) and retiring its oldest (its oldest time grows), and neither time ever falls, so every
    /// change of the bundle raises the sum and nothing lowers it. A root's creation is its notBefore (the local CA
    /// backdates it by the same minute every time, so the order holds).
    static func sequence(rootsCreated: [Int64], jwtKeysCreated: [Int64]) -> Int64 {
        [rootsCreated, jwtKeysCreated].reduce(0) { sum, times in
            guard let oldest = times.min(), let newest = times.max() else { return sum }
            return sum + oldest + newest
        }
    }

    /// `spiffe_refresh_hint`: the shortest SVID lifetime the bundle's authorities sign (X.509, and JWT when it has
    /// JWT keys), within 1 to 5 minutes. Why: `RootRotationSchedule` puts each new authority in the bundle at least
    /// 1.5 of those lifetimes before it signs, so a consumer that polls at the hint fetches it with half a lifetime
    /// to spare.
    static func refreshHint(svidTTL: Double, jwtTTL: Double?) -> Int64 {
        let shortest = Int64(min(svidTTL, jwtTTL ?? svidTTL).rounded(.down))
        return min(max(shortest, minRefreshHint), maxRefreshHint)
    }
}
