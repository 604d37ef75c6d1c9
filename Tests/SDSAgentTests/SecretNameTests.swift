import Testing

@testable import SDSAgent
@testable import Servers

@Suite struct SecretNameTests {
    private func classify(_ name: String) -> SecretName {
        SecretName(name, ownID: "spiffe://example.org/ns/default/sa/web", ownTrustDomain: "example.org")
    }

    @Test func jwtSVIDNamesTakeTheAudienceVerbatim() {
        #expect(
            classify("jwt-svid:spiffe://example.org/ns/db/sa/pg")
                == .jwtSVID(audience: "spiffe://example.org/ns/db/sa/pg"))
        #expect(classify("jwt-svid:a,b:c/d") == .jwtSVID(audience: "a,b:c/d"), "one audience: no separators inside")
        #expect(classify("jwt-svid:") == .unknown)
    }

    @Test func istioAndSpireNamesForTheSameThings() {
        #expect(classify("default") == .workloadCertificate)
        #expect(classify("spiffe://example.org/ns/default/sa/web") == .workloadCertificate)
        #expect(classify("ROOTCA") == .ownBundle)
        #expect(classify("spiffe://example.org") == .ownBundle)
        #expect(classify("ALL") == .allBundles)
        #expect(classify("spiffe://other.org") == .federatedBundle(trustDomain: "other.org"))
    }

    @Test func fileBackedNames() {
        #expect(
            classify("file-cert:/etc/certs/cert.pem~/etc/certs/key.pem")
                == .fileCertificate(certificatePath: "/etc/certs/cert.pem", keyPath: "/etc/certs/key.pem"))
        #expect(classify("file-root:/etc/certs/root.pem") == .fileRoot(path: "/etc/certs/root.pem"))
        #expect(classify("file-root:system") == .fileRoot(path: SecretName.systemTrustStore))
    }

    @Test(arguments: [
        "spiffe://example.org/ns/default/sa/other", "spiffe://", "file-cert:/only-cert.pem", "file-cert:~/k.pem",
        "file-root:", "kubernetes://x", "", "rootca",
    ])
    func namesNeverServed(name: String) {
        #expect(classify(name) == .unknown)
    }
}
