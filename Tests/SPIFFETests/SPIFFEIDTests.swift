import PKI
import SPIFFE
import Testing

@Suite struct SPIFFEIDTests {
    @Test(arguments: [
        "spiffe://example.org",
        "spiffe://example.org/ns/default/sa/web",
        "spiffe://a-b_c.d0/A.b-C_9",
        "spiffe://x/..a/a..",
    ])
    func validIDsParse(_ string: String) throws {
        let id = try SPIFFEID(parsing: string)
        #expect(id.uri == string)
        #expect(id.description == string)
    }

    @Test func partsAreExposed() throws {
        let id = try SPIFFEID(parsing: "spiffe://example.org/ns/a")
        #expect(id.trustDomain.name == "example.org")
        #expect(id.path == "/ns/a")
        #expect(id.isMember(of: try TrustDomain("example.org")))
        #expect(try SPIFFEID(trustDomain: TrustDomain("example.org"), path: "/ns/a") == id)
    }

    // Each invalid input is named after the rule it breaks.
    @Test(arguments: [
        ("", SPIFFEIDError.empty),
        ("http://example.org/a", .wrongScheme),
        ("SPIFFE://example.org/a", .wrongScheme),
        ("spiffe:/example.org", .wrongScheme),
        ("spiffe://", .missingTrustDomain),
        ("spiffe:///a", .missingTrustDomain),
        ("spiffe://Example.org/a", .badTrustDomainCharacter("E")),
        ("spiffe://exa mple.org", .badTrustDomainCharacter(" ")),
        ("spiffe://example.org:8080/a", .trustDomainHasPort),
        ("spiffe://user@example.org/a", .trustDomainHasUserinfo),
        ("spiffe://example.org/a?x=1", .hasQueryOrFragment),
        ("spiffe://example.org/a#f", .hasQueryOrFragment),
        ("spiffe://example.org/", .trailingSlash),
        ("spiffe://example.org/a/", .trailingSlash),
        ("spiffe://example.org//a", .emptyPathSegment),
        ("spiffe://example.org/a/./b", .dotPathSegment),
        ("spiffe://example.org/..", .dotPathSegment),
        ("spiffe://example.org/a%20b", .badPathCharacter("%")),
        ("spiffe://example.org/caf\u{e9}", .badPathCharacter("\u{e9}")),
    ])
    func invalidIDsAreRejectedNamingTheRule(_ string: String, _ expected: SPIFFEIDError) {
        #expect(throws: expected) { try SPIFFEID(parsing: string) }
    }

    @Test func descriptionNamesTheRule() {
        #expect(SPIFFEIDError.trustDomainHasPort.description == "trust domain must not contain a port")
        #expect(SPIFFEIDError.dotPathSegment.description.contains("\".\" or \"..\""))
    }

    @Test func maximumLengthIs2048Bytes() throws {
        let prefix = "spiffe://example.org/"
        let atLimit = prefix + String(repeating: "a", count: 2048 - prefix.utf8.count)
        #expect(try SPIFFEID(parsing: atLimit).uri.utf8.count == 2048)
        #expect(throws: SPIFFEIDError.tooLong(bytes: 2049)) { try SPIFFEID(parsing: atLimit + "a") }
    }

    @Test func aBareTrustDomainIsAcceptedOnlyIfItsIDIs() throws {
        let longest = String(repeating: "a", count: TrustDomain.maxBytes)
        let domain = try TrustDomain(longest)
        #expect(try TrustDomain(domain.idString) == domain)
        #expect(try SPIFFEID(parsing: domain.idString).trustDomain == domain)
        #expect(throws: SPIFFEIDError.trustDomainTooLong(bytes: TrustDomain.maxBytes + 1)) {
            try TrustDomain(longest + "a")
        }
    }

    @Test func trustDomainAcceptsNameOrIDForm() throws {
        #expect(try TrustDomain("example.org").idString == "spiffe://example.org")
        #expect(try TrustDomain("spiffe://example.org") == TrustDomain("example.org"))
        #expect(throws: SPIFFEIDError.missingTrustDomain) { try TrustDomain("") }
        #expect(throws: SPIFFEIDError.badTrustDomainCharacter("/")) { try TrustDomain("example.org/a") }
        #expect(throws: SPIFFEIDError.trustDomainHasPort) { try TrustDomain("example.org:1") }
    }
}
