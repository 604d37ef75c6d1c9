import Foundation
import Issuance
import LocalCA
import PKI
import SPIFFE
import TestSupport
import Testing

@Suite struct LocalCAStateDirectoryTests {
    let now = FakeClock.defaultStart
    let domain = try! TrustDomain("example.org")

    @Test func firstStartCreatesRootWithPrivateModesAndRestartReloadsIt() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        let stateDir = temp.path + "/state"
        let first = try LocalCA.openOrCreate(stateDirectory: stateDir, trustDomain: domain, now: now)
        #expect(first.createdNewRoot)
        #expect(try temp.mode("state") == 0o700)
        #expect(try temp.mode("state/ca.pem") == 0o600)
        #expect(try temp.mode("state/ca.key") == 0o600)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: stateDir).sorted()
        #expect(leftovers == ["ca.key", "ca.pem"])

        let root = first.signingCertificate
        #expect(root.isCA && root.isSelfSigned)
        #expect(root.keyUsage == [.keyCertSign, .cRLSign])
        #expect(root.uriSANs == ["spiffe://example.org"])
        #expect(root.notAfter == now + LocalCA.defaultRootLifetime)
        #expect(first.bundle.certificates == [root])
        #expect(first.intermediates.isEmpty)

        let second = try LocalCA.openOrCreate(stateDirectory: stateDir, trustDomain: domain, now: now + 3600)
        #expect(!second.createdNewRoot)
        #expect(second.signingCertificate == root)
        // The reloaded key signs SVIDs that chain to the same root.
        let svid = try second.issue(spiffeID: SPIFFEID(parsing: "spiffe://example.org/a"), ttl: 60, now: now + 3600)
        try svid.verify(against: first.bundle, at: now + 3600)
    }

    func expectStartFails(_ stateDir: String, now: Timestamp? = nil, domain: TrustDomain? = nil) -> String {
        do {
            _ = try LocalCA.openOrCreate(
                stateDirectory: stateDir, trustDomain: domain ?? self.domain, now: now ?? self.now)
            Issue.record("expected the start to fail")
            return ""
        } catch {
            let text = "\(error)"
            #expect(!text.contains("\n"), "one line: \(text)")
            return text
        }
    }

    @Test func truncatedKeyFileIsAOneLineErrorNamingTheFileAndIsNotReplaced() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        _ = try LocalCA.openOrCreate(stateDirectory: temp.path, trustDomain: domain, now: now)
        let key = try String(contentsOfFile: temp.path + "/ca.key", encoding: .utf8)
        let truncated = String(key.prefix(key.count / 2))
        try temp.write("ca.key", truncated)
        let message = expectStartFails(temp.path)
        #expect(message.contains(temp.path + "/ca.key"))
        #expect(message.contains("corrupt or truncated"))
        #expect(try String(contentsOfFile: temp.path + "/ca.key", encoding: .utf8) == truncated)
    }

    @Test func corruptCertificateFileIsNamed() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        _ = try LocalCA.openOrCreate(stateDirectory: temp.path, trustDomain: domain, now: now)
        try temp.write("ca.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        #expect(expectStartFails(temp.path).contains(temp.path + "/ca.pem"))
    }

    @Test func keyNotMatchingTheCertificateIsNamed() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        _ = try LocalCA.openOrCreate(stateDirectory: temp.path, trustDomain: domain, now: now)
        try temp.write("ca.key", try PrivateKey.generate().pkcs8PEM())
        let message = expectStartFails(temp.path)
        #expect(message.contains(temp.path + "/ca.key does not match"))
    }

    @Test func rootOfAnotherTrustDomainIsRefused() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        _ = try LocalCA.openOrCreate(stateDirectory: temp.path, trustDomain: domain, now: now)
        let message = expectStartFails(temp.path, domain: try TrustDomain("other.org"))
        #expect(message.contains("ca.pem is the CA of trust domain example.org, not other.org"))
    }

    @Test func missingHalfIsRefused() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        _ = try LocalCA.openOrCreate(stateDirectory: temp.path, trustDomain: domain, now: now)
        try FileManager.default.removeItem(atPath: temp.path + "/ca.pem")
        #expect(expectStartFails(temp.path).contains(temp.path + "/ca.pem is missing"))
        #expect(FileManager.default.fileExists(atPath: temp.path + "/ca.key"))
    }

    @Test func expiredRootIsRefused() throws {
        let temp = try TempDirectory()
        defer { temp.remove() }
        _ = try LocalCA.openOrCreate(stateDirectory: temp.path, trustDomain: domain, now: now, rootLifetime: 100)
        #expect(expectStartFails(temp.path, now: now + 200).contains("ca.pem expired"))
    }
}

@Suite struct LocalCAIssueTests {
    let now = FakeClock.defaultStart
    let ca: LocalCA
    let id = try! SPIFFEID(parsing: "spiffe://example.org/ns/default/sa/web")

    init() throws {
        ca = try LocalCA.ephemeral(trustDomain: TrustDomain("example.org"), now: FakeClock.defaultStart)
    }

    @Test func issuedSVIDHasExactlyTheSpecifiedShape() throws {
        let svid = try ca.issue(spiffeID: id, ttl: 3600, now: now)
        let leaf = svid.leaf
        #expect(svid.spiffeID == id)
        #expect(svid.chain.count == 1)
        #expect(leaf.uriSANs == [id.uri])
        #expect(!leaf.isCA)
        #expect(leaf.keyUsage == [.digitalSignature])
        #expect(leaf.extendedKeyUsage == [.serverAuth, .clientAuth])
        #expect(leaf.notBefore == now - 60)
        #expect(leaf.notAfter == now + 3600)
        #expect(leaf.publicKeyMatches(svid.privateKey))
        #expect(!leaf.publicKeyMatches(ca.issueKeyForTest()))
        try svid.verify(against: ca.bundle, at: now)
    }

    @Test func everySVIDHasAFreshKeyAndSerial() throws {
        let a = try ca.issue(spiffeID: id, ttl: 3600, now: now)
        let b = try ca.issue(spiffeID: id, ttl: 3600, now: now)
        #expect(a.leaf.serialHex != b.leaf.serialHex)
        #expect(a.privateKey.publicKey != b.privateKey.publicKey)
        #expect(a.leaf.serialHex.count >= 20)  // 128 random bits, leading zero nibbles aside
    }

    @Test func lifetimeNeverExceedsTheCA() throws {
        let short = try LocalCA.ephemeral(trustDomain: TrustDomain("example.org"), now: now, rootLifetime: 600)
        let svid = try short.issue(spiffeID: id, ttl: 86_400, now: now)
        #expect(svid.notAfter == short.signingCertificate.notAfter)
        let late = #expect(throws: LocalCAError.self) { try short.issue(spiffeID: id, ttl: 60, now: now + 601) }
        #expect(late?.message.contains("expired") == true)
    }

    @Test func otherTrustDomainAndBadTTLAreRefused() throws {
        #expect(throws: LocalCAError.self) {
            try ca.issue(spiffeID: SPIFFEID(parsing: "spiffe://other.org/a"), ttl: 60, now: now)
        }
        #expect(throws: LocalCAError.self) { try ca.issue(spiffeID: id, ttl: 0, now: now) }
    }

    @Test func operatorSuppliedIntermediateIsServedAfterTheLeafAndTheRootIsTheBundle() throws {
        let test = try TestCA(now: now)
        let intermediate = try test.makeIntermediate()
        let temp = try TempDirectory()
        defer { temp.remove() }
        try temp.write("chain.pem", Certificate.pem([intermediate.certificate, test.root]))
        try temp.write("key.pem", intermediate.key.pkcs8PEM())
        try temp.chmod("key.pem", 0o600)
        let ca = try LocalCA.operatorSupplied(
            certificateChainPath: temp.path + "/chain.pem", keyPath: temp.path + "/key.pem",
            trustDomain: test.trustDomain, now: now)
        #expect(ca.intermediates == [intermediate.certificate])
        #expect(ca.bundle.certificates == [test.root])
        let svid = try ca.issue(spiffeID: id, ttl: 600, now: now)
        #expect(svid.chain == [svid.leaf, intermediate.certificate])
        try svid.verify(against: test.bundle, at: now)
    }

    /// Any local user who can read the CA key can mint every workload's identity: a key readable by group or others
    /// is refused with the file, its mode and the fix.
    @Test(arguments: [0o644, 0o640, 0o604])
    func anOperatorKeyOthersCanReadIsRefused(mode: Int) throws {
        let test = try TestCA(now: now)
        let intermediate = try test.makeIntermediate()
        let temp = try TempDirectory()
        defer { temp.remove() }
        try temp.write("chain.pem", Certificate.pem([intermediate.certificate, test.root]))
        try temp.write("key.pem", intermediate.key.pkcs8PEM())
        try temp.chmod("key.pem", mode)
        #expect {
            _ = try LocalCA.operatorSupplied(
                certificateChainPath: temp.path + "/chain.pem", keyPath: temp.path + "/key.pem",
                trustDomain: test.trustDomain, now: now)
        } throws: { error in
            "\(error)".contains("key.pem has mode 0\(String(mode, radix: 8))") && "\(error)".contains("chmod 600")
        }
        try temp.chmod("key.pem", 0o400)
        _ = try LocalCA.operatorSupplied(
            certificateChainPath: temp.path + "/chain.pem", keyPath: temp.path + "/key.pem",
            trustDomain: test.trustDomain, now: now)
    }

    @Test func operatorSuppliedChainWithoutRootOrWithWrongKeyIsRefused() throws {
        let test = try TestCA(now: now)
        let intermediate = try test.makeIntermediate()
        #expect(throws: LocalCAError.self) {
            try LocalCA(
                signingChain: [intermediate.certificate], signingKey: intermediate.key, trustDomain: test.trustDomain,
                now: now)
        }
        #expect(throws: LocalCAError.self) {
            try LocalCA(
                signingChain: [intermediate.certificate, test.root], signingKey: test.rootKey,
                trustDomain: test.trustDomain, now: now)
        }
    }

    /// RFC 5280 requires a Subject Key Identifier on CA certificates; leaves' Authority Key Identifier points at it.
    /// A CA without one must be refused at load, not accepted and then fail every issuance.
    @Test func operatorCAWithoutSubjectKeyIdentifierIsRefusedAtLoad() throws {
        let key = try PrivateKey.generate()
        let root = try CertificateBuilder(
            subject: DistinguishedName(organization: "TestCA", commonName: "no-ski root"),
            publicKey: key.publicKey, serialNumber: try CertificateBuilder.randomSerialNumber(),
            notBefore: now - 3600, notAfter: now + 86_400, basicConstraints: .ca(pathLength: nil),
            keyUsage: [.keyCertSign, .cRLSign], uriSANs: ["spiffe://example.org"],
            includeSubjectKeyIdentifier: false, includeAuthorityKeyIdentifier: false
        ).sign(issuer: nil, issuerKey: key)
        do {
            _ = try LocalCA(signingChain: [root], signingKey: key, trustDomain: TrustDomain("example.org"), now: now)
            Issue.record("a CA that cannot sign was accepted")
        } catch let error as LocalCAError {
            #expect(error.message.contains("cannot sign SVIDs"))
            #expect(!error.message.contains("\n"))
        }
    }

    @Test func benchmarkFunctionRuns() throws {
        let result = try LocalCA.benchmarkIssuance(count: 5)
        #expect(result.count == 5)
        #expect(result.seconds > 0)
    }
}

extension LocalCA {
    /// Any key that is not the SVID's: for the negative key-match check.
    func issueKeyForTest() -> PrivateKey { try! PrivateKey.generate() }
}
