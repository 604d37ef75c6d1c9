public import Issuance
public import PKI
public import SPIFFE
public import Wire

/// Turns Workload API responses into the pieces of an `IdentityUpdate`. Pure: time is a parameter.
///
/// The rules, after go-spiffe's `workloadapi` client:
/// - the SVID is the one whose SPIFFE ID equals the wanted one, or the first when none is wanted;
/// - it must pass the X509-SVID rules at `now` and chain to its own trust domain's bundle (the response's
///   `bundle` field), so an unusable SVID never replaces a good one;
/// - bundles are keyed by the trust domain's SPIFFE ID (`spiffe://other.org`) or bare name.
///
/// A bundle whose bytes equal one parsed from an earlier message is taken from it, not parsed again. SPIRE resends
/// every bundle on both streams whenever anything changes (each rotation), and OpenSSL 3.0 spends ~0.1 ms on every
/// certificate's public key, on the event loop: 10 federated trust domains of 2 roots each stalled the loop ~10 ms
/// a rotation. Certificates are immutable values, so a reused bundle is the same as a freshly parsed one.
public enum UpstreamIdentity {
    /// Picks and validates the SVID of `response`; returns it with its own trust domain's bundle.
    /// `fallbackBundles` supplies the own bundle when the response's `bundle` field is empty; `reusing` holds
    /// bundles parsed before, taken instead of parsing the `bundle` field when their DER is the same.
    public static func svid(
        from response: X509SVIDResponse, wanted: SPIFFEID?, now: Timestamp,
        fallbackBundles: [TrustDomain: X509Bundle] = [:], reusing parsedBefore: [X509Bundle] = []
    ) throws(IssuerError) -> (svid: X509SVID, bundle: X509Bundle) {
        guard !response.svids.isEmpty else {
            throw IssuerError(kind: .issuanceFailed, message: "the Workload API sent a response without SVIDs")
        }
        let chosen: X509SVIDMessage
        if let wanted {
            guard let match = response.svids.first(where: { (try? SPIFFEID(parsing: $0.spiffeID)) == wanted }) else {
                // The first few only: the answer is the upstream's, and its size must not set the log line's.
                var offered = response.svids.prefix(4).map { String($0.spiffeID.prefix(256)) }.joined(separator: ", ")
                if response.svids.count > 4 { offered += " and \(response.svids.count - 4) more" }
                throw IssuerError(
                    kind: .issuanceFailed,
                    message: "the Workload API offers no SVID for \(wanted) (offered: \(offered))")
            }
            chosen = match
        } else {
            chosen = response.svids[0]
        }
        let svid: X509SVID
        do {
            svid = try X509SVID(
                chainDER: chosen.x509SVID, keyPKCS8DER: chosen.x509SVIDKey, now: now, expectedID: wanted)
        } catch {
            throw IssuerError(
                kind: .issuanceFailed, message: "the Workload API's SVID for \(chosen.spiffeID) is unusable: \(error)")
        }
        let trustDomain = svid.spiffeID.trustDomain
        let bundle: X509Bundle
        if chosen.bundle.isEmpty {
            guard let fallback = fallbackBundles[trustDomain] else {
                throw IssuerError(
                    kind: .issuanceFailed, message: "the Workload API sent no bundle for trust domain \(trustDomain)")
            }
            bundle = fallback
        } else if let same = parsedBefore.first(where: {
            $0.trustDomain == trustDomain && $0.isEncoded(as: chosen.bundle)
        }) {
            bundle = same
        } else {
            do {
                bundle = try X509Bundle(trustDomain: trustDomain, der: chosen.bundle)
            } catch {
                throw IssuerError(
                    kind: .issuanceFailed, message: "the Workload API's bundle for \(trustDomain) is unusable: \(error)"
                )
            }
        }
        do {
            try svid.verify(against: bundle, at: now)
        } catch {
            throw IssuerError(
                kind: .issuanceFailed,
                message: "the Workload API's SVID for \(svid.spiffeID) does not chain to its bundle: \(error)")
        }
        return (svid, bundle)
    }

    /// Why 128 trust domains: a mesh federates with a handful; more is an upstream gone wrong, and every bundle is
    /// parsed, held and pushed to every stream.
    public static let maxTrustDomains = 128
    /// The most certificates one message's bundles hold together. Why 2,048: 16 roots for each of 128 trust
    /// domains is already far past any real federation (each has one to three roots, four mid-rotation). Without
    /// it, 128 trust domains of `Certificate.maxBundleCertificates` each fit the message size limit as ~28,000
    /// small certificates: seconds of parsing on the event loop. Checked while parsing, so a message past it costs
    /// at most this many parses; reused bundles count too, so the result never depends on what came before.
    public static let maxBundleCertificatesPerMessage = 2048

    /// Parses a `trust domain → DER certificates` map (`federated_bundles`, or `X509BundlesResponse.bundles`).
    /// Entries that do not parse, or do not fit `maxBundleCertificatesPerMessage`, are left out and described in
    /// `problems` (the rest stay usable). `parsedBefore`: the bundles of the previous message of the same kind; an
    /// entry with the same trust domain and DER is taken from there.
    public static func bundles(_ entries: [String: [UInt8]], reusing parsedBefore: [TrustDomain: X509Bundle] = [:])
        -> (bundles: [TrustDomain: X509Bundle], problems: [String])
    {
        var bundles: [TrustDomain: X509Bundle] = [:]
        var problems: [String] = []
        // Capped before any is parsed: each costs certificate parses and a Secret served to every stream.
        if entries.count > maxTrustDomains {
            problems.append(
                "\(entries.count) trust domains' bundles: only the first \(maxTrustDomains) by name are used")
        }
        var certificatesLeft = maxBundleCertificatesPerMessage
        var limited = false
        for (key, der) in entries.sorted(by: { $0.key < $1.key }).prefix(maxTrustDomains) {
            do {
                let trustDomain = try TrustDomain(key)
                let bundle: X509Bundle
                if let same = parsedBefore[trustDomain], same.isEncoded(as: der) {
                    guard same.certificates.count <= certificatesLeft else {
                        limited = true
                        throw PKIError(
                            operation: "parsing certificates", reasons: ["more than the \(certificatesLeft) left"])
                    }
                    bundle = same
                } else {
                    let maxCount = min(Certificate.maxBundleCertificates, certificatesLeft)
                    guard maxCount > 0 else {
                        limited = true
                        throw PKIError(operation: "parsing certificates", reasons: ["none left"])
                    }
                    do {
                        bundle = X509Bundle(
                            trustDomain: trustDomain,
                            certificates: try Certificate.parseChain(der: der, maxCount: maxCount))
                    } catch {
                        limited = limited || maxCount < Certificate.maxBundleCertificates
                        throw error
                    }
                }
                certificatesLeft -= bundle.certificates.count
                bundles[trustDomain] = bundle
            } catch {
                problems.append("bundle \(key): \(error)")
            }
        }
        if limited {
            problems.append(
                "one message's bundles may hold \(maxBundleCertificatesPerMessage) certificates in all: "
                    + "the trust domains past that are left out")
        }
        return (bundles, problems)
    }

    /// The SVID's own bundle first, then every other trust domain's, sorted by name (a stable order, so an
    /// unchanged set compares equal).
    public static func update(svid: X509SVID, ownBundle: X509Bundle, federated: [TrustDomain: X509Bundle])
        -> IdentityUpdate
    {
        let others = federated.filter { $0.key != ownBundle.trustDomain }.sorted { $0.key < $1.key }.map(\.value)
        return IdentityUpdate(svid: svid, bundles: [ownBundle] + others)
    }

    /// What makes two updates the same for the consumer: the chain's DER and each bundle's DER, in order.
    /// (The key changes with the leaf, so the chain stands for both.)
    static func fingerprint(of update: IdentityUpdate) -> [[UInt8]] {
        [update.svid.chainDER] + update.bundles.flatMap { [Array($0.trustDomain.name.utf8), $0.der] }
    }
}
