public import SPIFFE

/// One `--federate-with <td>=<source>`: where a federated trust domain's bundle comes from.
public struct FederationSource: Sendable, Equatable, CustomStringConvertible {
    public enum Location: Sendable, Equatable {
        /// A SPIFFE bundle document or PEM certificates in a file, watched (kubelet `..data` swaps, renames and
        /// in-place writes alike).
        case file(path: String)
        /// A bundle endpoint (`https://…`; a `#spiffe://…` fragment selects the https_spiffe profile).
        case endpoint(url: String)
    }

    public let trustDomain: TrustDomain
    public let location: Location

    public init(trustDomain: TrustDomain, location: Location) {
        self.trustDomain = trustDomain
        self.location = location
    }

    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public let description: String
    }

    /// Parses `<td>=<source>`: `<td>` a bare trust domain name (or its `spiffe://` form), `<source>` an absolute file
    /// path or an `https://` URL.
    public static func parse(_ text: String) throws(ParseError) -> FederationSource {
        guard let equals = text.firstIndex(of: "=") else {
            throw ParseError(description: "'\(text)' is not <trust domain>=<file or https:// URL>")
        }
        let name = String(text[..<equals])
        let source = String(text[text.index(after: equals)...])
        let trustDomain: TrustDomain
        do { trustDomain = try TrustDomain(name) } catch {
            throw ParseError(description: "'\(name)' is not a trust domain: \(error)")
        }
        // `spiffe://b.org/workload` parses as an ID of b.org; here only the domain itself is meant.
        guard name == trustDomain.name || name == trustDomain.idString else {
            throw ParseError(description: "'\(name)' is a workload's ID, not a trust domain")
        }
        if source.hasPrefix("https://") {
            return FederationSource(trustDomain: trustDomain, location: .endpoint(url: source))
        }
        if source.hasPrefix("http://") {
            throw ParseError(description: "'\(source)': a bundle endpoint must use https://")
        }
        guard source.hasPrefix("/") else {
            throw ParseError(description: "'\(source)' is neither an absolute file path nor an https:// URL")
        }
        return FederationSource(trustDomain: trustDomain, location: .file(path: source))
    }

    public var description: String {
        switch location {
        case .file(let path): "\(trustDomain.name)=\(path)"
        case .endpoint(let url): "\(trustDomain.name)=\(url)"
        }
    }
}

/// Whether a newly read bundle for a federated trust domain replaces the one served. Pure: the rules of the SPIFFE
/// Trust Domain and Bundle spec that a reader must apply.
public enum FederatedBundleAcceptance {
    /// Why a bundle was refused; the last good one stays served.
    public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
        public let description: String
    }

    /// Accepts `new` for `trustDomain` after `previous` (the one served, if any). A document whose
    /// `spiffe_sequence` is lower than the served one's is an old copy (a stale cache, a rollback) and is refused;
    /// one with no X.509 authority would make every peer of the domain untrusted (the parser already refuses it).
    public static func check(
        _ new: SPIFFEBundle, previous: SPIFFEBundle?, trustDomain: TrustDomain
    ) throws(Refusal) {
        guard new.x509.trustDomain == trustDomain else {
            throw Refusal(description: "the bundle is for \(new.x509.trustDomain.name), not \(trustDomain.name)")
        }
        guard !new.x509.certificates.isEmpty else {
            throw Refusal(description: "the bundle holds no X.509 authority")
        }
        if let old = previous?.sequence, let sequence = new.sequence, sequence < old {
            throw Refusal(description: "spiffe_sequence \(sequence) is lower than the served bundle's \(old)")
        }
    }
}
