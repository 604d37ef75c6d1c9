import SDSAgent
import SPIFFE
import Servers

/// Text an operator or a peer supplies: SPIFFE IDs and trust domains (flags, URI SANs, Workload API map keys),
/// the secret names Envoy requests, and durations (flags). What parses must print back to itself.
enum TextParsingTarget {
    static func run(_ input: UnsafeRawBufferPointer) {
        let text = String(decoding: input, as: UTF8.self)
        if let id = try? SPIFFEID(parsing: text) {
            guard (try? SPIFFEID(parsing: id.uri)) == id else { fatalError("SPIFFE ID does not round-trip: \(id)") }
        }
        if let trustDomain = try? TrustDomain(text) {
            guard (try? TrustDomain(trustDomain.idString)) == trustDomain else {
                fatalError("trust domain does not round-trip: \(trustDomain)")
            }
        }
        _ = SecretName(text, ownID: "spiffe://example.org/ns/default/sa/fuzz", ownTrustDomain: "example.org")
        if let seconds = try? DurationText.seconds(text) {
            _ = DurationText.format(seconds: seconds)
        }
    }
}
