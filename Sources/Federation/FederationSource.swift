public import BundleEndpoint
public import SPIFFE

/// One `--federate-with <td>=<source>`: where a federated trust domain's bundle comes from.
public struct FederationSource: Sendable, Equatable, CustomStringConvertible {
    public enum Location: Sendable, Equatable {
        /// A SPIFFE bundle document or PEM certificates in a file, watched (kubelet `..data` swaps, renames and
        /// in-place writes alike).
        case file(path: String)
        /// A bundle endpoint: `https_web` (`https://…`), or `https_spiffe` when the URL's fragment names the
        /// endpoint's SPIFFE ID (`https://…#spiffe://<td>/<path>`).
        case endpoint(BundleEndpointURL)
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
        let trustDomain = try Self.trustDomain(parsing: name)
        if source.hasPrefix("https://") {
            let url: BundleEndpointURL
            do throws(BundleEndpointURL.ParseError) { url = try BundleEndpointURL(parsing: source) } catch {
                throw ParseError(description: "\(error)")
            }
            if let id = url.endpointID, id.trustDomain != trustDomain {
                throw ParseError(
                    description: "'\(source)': the endpoint's SPIFFE ID must be in \(trustDomain.name), whose bundle "
                        + "verifies it")
            }
            return FederationSource(trustDomain: trustDomain, location: .endpoint(url))
        }
        if source.hasPrefix("http://") {
            throw ParseError(description: "'\(source)': a bundle endpoint must use https://")
        }
        guard source.hasPrefix("/") else {
            throw ParseError(description: "'\(source)' is neither an absolute file path nor an https:// URL")
        }
        return FederationSource(trustDomain: trustDomain, location: .file(path: source))
    }

    /// A federated trust domain as the flags name it: a bare name or its `spiffe://` form, never a workload's ID.
    public static func trustDomain(parsing name: String) throws(ParseError) -> TrustDomain {
        let trustDomain: TrustDomain
        do { trustDomain = try TrustDomain(name) } catch {
            throw ParseError(description: "'\(name)' is not a trust domain: \(error)")
        }
        // `spiffe://b.org/workload` parses as an ID of b.org; here only the domain itself is meant.
        guard name == trustDomain.name || name == trustDomain.idString else {
            throw ParseError(description: "'\(name)' is a workload's ID, not a trust domain")
        }
        return trustDomain
    }

    public var description: String {
        switch location {
        case .file(let path): "\(trustDomain.name)=\(path)"
        case .endpoint(let url): "\(trustDomain.name)=\(url.description)"
        }
    }
}
