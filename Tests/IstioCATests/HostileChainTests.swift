import IstioCA
import PKI
import SPIFFE
import TestSupport
import Testing

/// istiod's answer is an upstream's input: its size must not set the work done on it.
@Suite struct HostileChainTests {
    /// One element holding thousands of PEM blocks (3.4 MB; it used to be parsed whole — ~0.75 s of loop and
    /// ~52 MB — before the 16-certificate cap looked at the count): refused once the 17th block is read.
    @Test func thousandsOfCertificatesInOneElementAreRefusedAtTheCap() throws {
        let ca = try TestCA()
        let id = "spiffe://example.org/ns/default/sa/web"
        let leaf = try ca.makeLeaf(TestCA.LeafOptions(spiffeID: id))
        let huge = String(repeating: leaf.chain[0].pem, count: 6000)
        #expect(huge.utf8.count > 3_000_000)
        #expect {
            _ = try IstioChain.validate(
                chainPEMs: [huge, ca.root.pem], key: leaf.key, expectedID: try SPIFFEID(parsing: id), fileRoots: [],
                now: ca.now)
        } throws: { error in
            "\(error)".contains("more than \(IstioChain.maxCertificates) certificates")
        }
    }

    @Test func theParsersStopAtTheirCapWhateverTheInputHolds() throws {
        let ca = try TestCA()
        let many = [Certificate](repeating: ca.root, count: 40)
        #expect(throws: PKIError.self) { _ = try Certificate.parseChain(pem: Certificate.pem(many), maxCount: 16) }
        #expect(throws: PKIError.self) {
            _ = try Certificate.parseChain(der: Certificate.concatenatedDER(many), maxCount: 16)
        }
        #expect(try Certificate.parseChain(pem: Certificate.pem(many), maxCount: 40).count == 40)
    }
}
