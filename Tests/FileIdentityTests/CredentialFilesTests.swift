import FileIdentity
import Foundation
import Issuance
import PKI
import SPIFFE
import TestSupport
import Testing

/// The identity credential files hold, decided from their bytes: each fixture is named after the layout it is, or
/// the rule it breaks.
@Suite struct CredentialFilesTests {
    let id = "spiffe://example.org/ns/default/sa/web"

    func files(
        _ options: TestCA.LeafOptions? = nil, keyFirst: Bool = true, separateKey: Bool = false
    ) throws -> (TestCA, CredentialFiles.Contents, Certificate) {
        let ca = try TestCA()
        let leaf = try ca.makeLeaf(options ?? TestCA.LeafOptions(spiffeID: id))
        let chain = Array(Certificate.pem(leaf.chain).utf8)
        let key = Array(try leaf.key.pkcs8PEM().utf8)
        let svid = separateKey ? chain : (keyFirst ? key + chain : chain + key)
        let contents = CredentialFiles.Contents(
            svid: svid, key: separateKey ? key : nil, bundle: Array(ca.bundle.pem.utf8))
        return (ca, contents, leaf.chain[0])
    }

    @Test(arguments: [true, false])
    func aPodCertificatesCredentialBundleInEitherOrder(keyFirst: Bool) throws {
        let (ca, contents, leaf) = try files(keyFirst: keyFirst)
        let update = try CredentialFiles.identity(contents, expectedID: nil, now: ca.now)
        #expect(update.svid.spiffeID.uri == id)
        #expect(update.svid.leaf == leaf)
        #expect(update.bundles.map(\.certificates) == [[ca.root]])
    }

    @Test func aChainAndAKeyApartAsCertManagerWritesThem() throws {
        let (ca, contents, _) = try files(separateKey: true)
        #expect(try CredentialFiles.identity(contents, expectedID: nil, now: ca.now).svid.spiffeID.uri == id)
    }

    @Test func aSPIFFEBundleDocumentAsTheRoots() throws {
        var (ca, contents, _) = try files()
        let x5c = Data(ca.root.der).base64EncodedString()
        contents.bundle = Array(
            #"{"spiffe_sequence":7,"spiffe_refresh_hint":300,"keys":[{"use":"x509-svid","kty":"EC","x5c":["\#(x5c)"]},{"use":"jwt-svid","kty":"EC","kid":"k1","crv":"P-256","x":"AA","y":"AA"}]}"#
                .utf8)
        let update = try CredentialFiles.identity(contents, expectedID: nil, now: ca.now)
        #expect(update.bundles.first?.certificates == [ca.root])
        let parsed = try SPIFFEBundle.parse(contents.bundle, trustDomain: ca.trustDomain)
        #expect(parsed.sequence == 7 && parsed.refreshHint == 300 && parsed.jwtKeys.count == 1)
    }

    @Test func theOperatorsSPIFFEIDMustBeTheLeafs() throws {
        let (ca, contents, _) = try files()
        #expect(throws: CredentialFiles.Refusal.self) {
            try CredentialFiles.identity(
                contents, expectedID: try SPIFFEID(parsing: "spiffe://example.org/ns/default/sa/admin"), now: ca.now)
        }
        _ = try CredentialFiles.identity(contents, expectedID: try SPIFFEID(parsing: id), now: ca.now)
    }

    @Test func aKeyOfAnotherCertificateIsHeldBack() throws {
        var options = TestCA.LeafOptions(spiffeID: id)
        options.mismatchedKey = true
        let (ca, contents, _) = try files(options)
        #expect {
            try CredentialFiles.identity(contents, expectedID: nil, now: ca.now)
        } throws: { error in
            "\(error)".contains("key does not match")
        }
    }

    @Test func anExpiredCertificateIsHeldBack() throws {
        var options = TestCA.LeafOptions(spiffeID: id)
        options.notBeforeOffset = -7200
        options.notAfterOffset = -60
        let (ca, contents, _) = try files(options)
        #expect {
            try CredentialFiles.identity(contents, expectedID: nil, now: ca.now)
        } throws: { error in
            "\(error)".contains("expired")
        }
    }

    @Test func aCertificateNotValidYetSaysWhenItWillBe() throws {
        var options = TestCA.LeafOptions(spiffeID: id)
        options.notBeforeOffset = 120
        let (ca, contents, leaf) = try files(options)
        #expect {
            try CredentialFiles.identity(contents, expectedID: nil, now: ca.now)
        } throws: { error in
            (error as? CredentialFiles.Refusal)?.validFrom == leaf.notBefore
        }
        _ = try CredentialFiles.identity(contents, expectedID: nil, now: leaf.notBefore)
    }

    @Test func aHalfWrittenFileIsHeldBack() throws {
        let (ca, contents, _) = try files(keyFirst: false)
        for cut in [contents.svid.count / 3, contents.svid.count * 2 / 3, contents.svid.count - 10] {
            let truncated = CredentialFiles.Contents(
                svid: Array(contents.svid.prefix(cut)), key: nil, bundle: contents.bundle)
            #expect(throws: CredentialFiles.Refusal.self) {
                try CredentialFiles.identity(truncated, expectedID: nil, now: ca.now)
            }
        }
    }

    @Test func rootsOfAnotherCAAreRefused() throws {
        var (_, contents, _) = try files()
        let other = try TestCA()
        contents.bundle = Array(other.bundle.pem.utf8)
        #expect {
            try CredentialFiles.identity(contents, expectedID: nil, now: other.now)
        } throws: { error in
            "\(error)".contains("does not chain")
        }
    }

    @Test func malformedBundleDocumentsAreRefusedWithTheReason() throws {
        let ca = try TestCA()
        for (document, reason) in [
            (#"{"keys":[]}"#, "no x509-svid authority"), (#"{"nokeys":1}"#, "\"keys\" array"),
            (#"{"keys":[{"use":"x509-svid","x5c":["!!"]}]}"#, "not base64"),
            (#"{"keys":[{"use":"x509-svid","x5c":[]}]}"#, "exactly one certificate"), ("not pem", "not a PEM bundle"),
        ] {
            #expect {
                _ = try SPIFFEBundle.parse(Array(document.utf8), trustDomain: ca.trustDomain)
            } throws: { error in
                "\(error)".contains(reason)
            }
        }
    }

    @Test func aCertificateWithoutASPIFFEIDIsAPlainCredentialUnlessAnIDIsRequired() throws {
        var options = TestCA.LeafOptions(spiffeID: id)
        options.uriSANs = []
        let (ca, contents, leaf) = try files(options)
        guard case .plain(let plain) = try CredentialFiles.credential(contents, expectedID: nil, now: ca.now) else {
            Issue.record("expected a plain credential")
            return
        }
        #expect(plain.chain.first == leaf && plain.roots == [ca.root])
        #expect(throws: CredentialFiles.Refusal.self) {
            try CredentialFiles.credential(contents, expectedID: try SPIFFEID(parsing: id), now: ca.now)
        }
        // The same consistency rules: another key is refused.
        var mismatched = options
        mismatched.mismatchedKey = true
        let (_, bad, _) = try files(mismatched)
        #expect(throws: CredentialFiles.Refusal.self) {
            try CredentialFiles.credential(bad, expectedID: nil, now: ca.now)
        }
    }

    @Test func anSVIDIsStillAnSVIDThroughCredential() throws {
        let (ca, contents, _) = try files()
        guard case .svid(let update) = try CredentialFiles.credential(contents, expectedID: nil, now: ca.now) else {
            Issue.record("expected an SVID")
            return
        }
        #expect(update.svid.spiffeID.uri == id)
    }
}
