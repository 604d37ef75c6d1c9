import Foundation
import Issuance
import JSONText
import LocalCA
import PKI
import SPIFFE
import Testing

@testable import JWT

private let now = Timestamp(secondsSinceEpoch: 1_800_000_000)
private let workload = try! SPIFFEID(parsing: "spiffe://example.org/ns/apps/sa/app")
private let domain = try! TrustDomain("example.org")

private func key(_ kid: String = "k1") throws -> JWTSigningKey {
    JWTSigningKey(kid: kid, privateKey: try PrivateKey.generate(), createdAt: now - 10, notAfter: now + 86_400)
}

private func keys(_ keys: JWTSigningKey...) -> [String: PublicKey] {
    Dictionary(uniqueKeysWithValues: keys.map { ($0.kid, $0.privateKey.publicKey) })
}

@Suite struct Base64URLTests {
    @Test(arguments: [
        ("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg"), ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ])
    func rfc4648Vectors(plain: String, encoded: String) {
        #expect(Base64URL.encode(Array(plain.utf8)) == encoded)
        #expect(Base64URL.decode(Substring(encoded)) == Array(plain.utf8))
    }

    @Test func urlAlphabetBothWays() {
        let bytes: [UInt8] = [0xfb, 0xff, 0xbf]
        #expect(Base64URL.encode(bytes) == "-_-_")
        #expect(Base64URL.decode("-_-_") == bytes)
    }

    @Test(arguments: ["Zg==", "Zm9v+", "Zm9v/", "Zm 9v", "Z", "Zm9v\n", "é"])
    func refusesPaddingAndForeignCharacters(text: String) {
        #expect(Base64URL.decode(Substring(text)) == nil)
    }
}

@Suite struct ES256Tests {
    @Test func signatureIsRawRAndSAndVerifies() throws {
        let key = try PrivateKey.generate()
        let message = Array("header.claims".utf8)
        let signature = try key.signES256(message)
        #expect(signature.count == 64)
        #expect(key.publicKey.verifyES256(message, signature: signature))
        #expect(!key.publicKey.verifyES256(Array("header.claimz".utf8), signature: signature))
        #expect(!(try PrivateKey.generate()).publicKey.verifyES256(message, signature: signature))
        #expect(!key.publicKey.verifyES256(message, signature: Array(signature.prefix(63))))
    }

    @Test func coordinatesAre32BytesEach() throws {
        let (x, y) = try PrivateKey.generate().publicKey.ecCoordinates()
        #expect(x.count == 32 && y.count == 32)
    }
}

@Suite struct JSONParserTests {
    @Test func parsesWhatTheWriterWrites() throws {
        let value = JSONValue.object([
            ("s", .string("a\"b\\c\n\u{1}é😀")), ("n", .int(-42)), ("a", .array([.bool(true), .null])),
            ("o", .object([])),
        ])
        #expect(try JSONValue.parse(Array(value.rendered.utf8)) == value)
    }

    @Test func surrogatePairs() throws {
        #expect(try JSONValue.parse(Array(#""\ud83d\ude00""#.utf8)) == .string("😀"))
    }

    @Test(arguments: [
        #"{"a":1,"a":2}"#, "1.5", "1e3", "01", "[1,]", "{\"a\":1} x", #""\ud83d""#, "\"\u{1}\"", "tru", "-",
        "99999999999999999999", "{\"a\" 1}", #""\x""#, "[", "",
    ])
    func refusesMalformedDocuments(text: String) {
        #expect(throws: JSONParseError.self) { try JSONValue.parse(Array(text.utf8)) }
    }

    @Test func depthBound() throws {
        let ok =
            String(repeating: "[", count: JSONValue.maxParseDepth)
            + String(repeating: "]", count: JSONValue.maxParseDepth)
        #expect(throws: Never.self) { try JSONValue.parse(Array(ok.utf8)) }
        let deep = "[" + ok + "]"
        #expect(throws: JSONParseError.self) { try JSONValue.parse(Array(deep.utf8)) }
    }

    @Test func sizeBound() {
        let long = "\"" + String(repeating: "a", count: JSONValue.maxParseBytes) + "\""
        #expect(throws: JSONParseError.self) { try JSONValue.parse(Array(long.utf8)) }
    }
}

@Suite struct JWTSVIDTokenTests {
    func mint(_ key: JWTSigningKey, audiences: [String] = ["db"], exp: Int64 = 300) throws -> String {
        try JWTSVIDToken.mint(subject: workload, audiences: audiences, issuedAt: now, expiresAt: now + exp, key: key)
    }

    @Test func mintedTokenValidates() throws {
        let k = try key()
        let claims = try JWTSVIDToken.validate(
            try mint(k, audiences: ["db", "cache"]), audience: "cache", keys: keys(k), trustDomain: domain, now: now)
        #expect(claims.subject == workload)
        #expect(claims.audiences == ["db", "cache"])
        #expect(claims.expiresAt == now + 300)
        #expect(claims.issuedAt == now)
        #expect(claims.keyID == "k1")
    }

    @Test func headerAndClaimsAreWhatTheSpecSays() throws {
        let parts = try mint(try key()).split(separator: ".")
        let header = try JSONValue.parse(Base64URL.decode(parts[0])!)
        #expect(header.rendered == #"{"alg":"ES256","kid":"k1","typ":"JWT"}"#)
        let claims = try JSONValue.parse(Base64URL.decode(parts[1])!)
        #expect(
            claims.rendered
                == #"{"aud":"db","exp":1800000300,"iat":1800000000,"sub":"spiffe://example.org/ns/apps/sa/app"}"#)
    }

    @Test func refusesAnotherKeysSignature() throws {
        let ours = try key("k1")
        let theirs = JWTSigningKey(kid: "k1", privateKey: try PrivateKey.generate(), createdAt: now, notAfter: now + 99)
        #expect(throws: JWTSVIDError("bad signature")) {
            try JWTSVIDToken.validate(try mint(theirs), audience: "db", keys: keys(ours), trustDomain: domain, now: now)
        }
        #expect(throws: JWTSVIDError.self) {
            try JWTSVIDToken.validate(
                try mint(try key("other")), audience: "db", keys: keys(ours), trustDomain: domain, now: now)
        }
    }

    @Test func refusesOtherAudienceExpiredAndOtherTrustDomain() throws {
        let k = try key()
        let token = try mint(k)
        #expect(throws: JWTSVIDError.self) {
            try JWTSVIDToken.validate(token, audience: "web", keys: keys(k), trustDomain: domain, now: now)
        }
        #expect(throws: JWTSVIDError("token expired")) {
            try JWTSVIDToken.validate(token, audience: "db", keys: keys(k), trustDomain: domain, now: now + 300)
        }
        #expect(throws: JWTSVIDError.self) {
            try JWTSVIDToken.validate(
                token, audience: "db", keys: keys(k), trustDomain: try TrustDomain("other.org"), now: now)
        }
    }

    @Test func refusesTamperedClaimsAndAlgNone() throws {
        let k = try key()
        let parts = try mint(k).split(separator: ".").map(String.init)
        let forged = Base64URL.encode(Array(#"{"aud":"db","exp":9999999999,"sub":"spiffe://example.org/admin"}"#.utf8))
        #expect(throws: JWTSVIDError("bad signature")) {
            try JWTSVIDToken.validate(
                parts[0] + "." + forged + "." + parts[2], audience: "db", keys: keys(k), trustDomain: domain, now: now)
        }
        let none = Base64URL.encode(Array(#"{"alg":"none","kid":"k1"}"#.utf8))
        #expect(throws: JWTSVIDError.self) {
            try JWTSVIDToken.validate(
                none + "." + parts[1] + ".", audience: "db", keys: keys(k), trustDomain: domain, now: now)
        }
    }

    @Test func lengthBound() throws {
        let k = try key()
        let long = String(repeating: "a", count: JWTSVIDToken.maxTokenBytes + 1)
        #expect(throws: JWTSVIDError.self) {
            try JWTSVIDToken.validate(long, audience: "db", keys: keys(k), trustDomain: domain, now: now)
        }
    }

    @Test func jwksCarriesEveryKey() throws {
        let a = try key("a")
        let b = try key("b")
        let document = try JSONValue.parse(JWKS.document([a, b]))
        guard case .array(let entries)? = document["keys"] else {
            Issue.record("no keys array")
            return
        }
        #expect(entries.map { $0["kid"] } == [.string("a"), .string("b")])
        #expect(entries[0]["kty"] == .string("EC") && entries[0]["crv"] == .string("P-256"))
        #expect(entries[0]["use"] == .string("jwt-svid"))
    }
}

@Suite struct JWTSVIDCacheTests {
    @Test func sameTokenUntilHalfLifeThenANewOne() throws {
        var cache = JWTSVIDCache()
        let k = try key()
        var mints = 0
        func get(_ at: Timestamp, _ audiences: [String] = ["b", "a"]) -> String {
            cache.token(for: audiences, now: at, ttl: 300, signer: k) { _, issued, _ in
                mints += 1
                return "t\(issued.secondsSinceEpoch)"
            }.token
        }
        let first = get(now)
        #expect(get(now + 149, ["a", "b", "a"]) == first, "the same audience set, in any order")
        #expect(mints == 1)
        #expect(get(now + 150) != first, "re-minted at half-life")
        #expect(mints == 2)
    }

    @Test func newSignerReMints() throws {
        var cache = JWTSVIDCache()
        let a = try key("a")
        let b = try key("b")
        let first = cache.token(for: ["x"], now: now, ttl: 300, signer: a) { _, _, _ in "from-a" }
        let second = cache.token(for: ["x"], now: now + 1, ttl: 300, signer: b) { _, _, _ in "from-b" }
        #expect(first.token == "from-a" && second.token == "from-b")
    }

    @Test func sizeBound() throws {
        var cache = JWTSVIDCache()
        let k = try key()
        for index in 0...JWTSVIDCache.maxEntries {
            _ = cache.token(for: ["aud-\(index)"], now: now, ttl: 300, signer: k) { _, _, _ in "t" }
        }
        #expect(cache.count == JWTSVIDCache.maxEntries)
    }

    @Test func expiryCappedByTheKey() throws {
        var cache = JWTSVIDCache()
        let k = JWTSigningKey(kid: "k", privateKey: try PrivateKey.generate(), createdAt: now, notAfter: now + 100)
        let result = cache.token(for: ["x"], now: now, ttl: 300, signer: k) { _, _, _ in "t" }
        #expect(result.expiresAt == now + 100)
    }
}

@Suite struct JWTSigningKeysTests {
    func tempDir() -> String {
        let path = NSTemporaryDirectory() + "sds-jwt-" + UUID().uuidString
        return path
    }

    @Test func createsA0600KeyAndReloadsIt() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try JWTSigningKeys.open(stateDirectory: dir, now: now, keyLifetime: 6000, tokenLifetime: 300)
        #expect(first.createdNewKey)
        let attributes = try FileManager.default.attributesOfItem(atPath: dir + "/" + JWTSigningKeys.currentFileName)
        #expect(attributes[.posixPermissions] as? Int == 0o600)
        let again = try JWTSigningKeys.open(stateDirectory: dir, now: now + 10, keyLifetime: 6000, tokenLifetime: 300)
        #expect(!again.createdNewKey)
        #expect(again.current.kid == first.current.kid)
        #expect(again.current.privateKey.publicKey == first.current.privateKey.publicKey)
    }

    @Test func rotatesWithOverlapOnTheRootSchedule() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let lifetime: Int64 = 6000
        let keys = try JWTSigningKeys.open(stateDirectory: dir, now: now, keyLifetime: lifetime, tokenLifetime: 300)
        let old = keys.current.kid
        let timeline = keys.schedule.timeline(
            current: RootRotationSchedule.Root(createdAt: keys.current.createdAt, notAfter: keys.current.notAfter),
            successorCreatedAt: nil)
        var step = try keys.advance(now: timeline.publishAt)
        #expect(step.changed && step.signer.kid == old && step.bundle.count == 2, "published, old key signs")
        let new = step.bundle[1].kid
        // A restart in the overlap keeps both.
        let reopened = try JWTSigningKeys.open(
            stateDirectory: dir, now: timeline.publishAt + 1, keyLifetime: lifetime, tokenLifetime: 300)
        #expect(reopened.successor?.kid == new)
        step = try keys.advance(now: timeline.activateAt)
        #expect(step.signer.kid == new && step.bundle.map(\.kid) == [old, new], "new key signs, old still trusted")
        step = try keys.advance(now: timeline.activateAt + 300)
        #expect(step.bundle.map(\.kid) == [new], "old key retired once its last token expired")
        #expect(keys.current.kid == new && keys.successor == nil)
    }

    @Test func keyFileWritableByOthersIsRefused() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try JWTSigningKeys.open(stateDirectory: dir, now: now, keyLifetime: 6000, tokenLifetime: 300)
        try FileManager.default.setAttributes(
            [.posixPermissions: 0o622], ofItemAtPath: dir + "/" + JWTSigningKeys.currentFileName)
        #expect(throws: LocalCAError.self) {
            try JWTSigningKeys.open(stateDirectory: dir, now: now, keyLifetime: 6000, tokenLifetime: 300)
        }
    }

    @Test func theKeyFileReadsBackWhatWasWritten() throws {
        let key = JWTSigningKey(
            kid: "k=1é", privateKey: try PrivateKey.generate(), createdAt: now, notAfter: now + 6000)
        let decoded = try JWTSigningKeys.decode(try JWTSigningKeys.encode(key), path: "jwt.key")
        #expect(decoded.kid == key.kid && decoded.createdAt == now && decoded.notAfter == now + 6000)
        #expect(decoded.privateKey.publicKey == key.privateKey.publicKey)
        // Fields are what precedes the PEM block; a line without `=` is skipped, and the PEM is required.
        let text = String(decoding: try JWTSigningKeys.encode(key), as: UTF8.self)
        let pem = String(text[text.range(of: "-----BEGIN")!.lowerBound...])
        let noted = try JWTSigningKeys.decode(
            Array("# note\nkid=a\ncreated_at=1\nnot_after=2\n\(pem)".utf8), path: "jwt.key")
        #expect(noted.kid == "a" && noted.createdAt.secondsSinceEpoch == 1 && noted.notAfter.secondsSinceEpoch == 2)
        for broken in [
            "kid=a\ncreated_at=1\nnot_after=2\n", "kid=\ncreated_at=1\nnot_after=2\n\(pem)", "kid=a\n\(pem)",
        ] {
            #expect(throws: JWTSVIDError.self) { try JWTSigningKeys.decode(Array(broken.utf8), path: "jwt.key") }
        }
        #expect(throws: JWTSVIDError.self) { try JWTSigningKeys.decode([0xFF, 0x0A], path: "jwt.key") }
    }

    @Test func damagedFileIsAOneLineError() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try "kid=x\n-----BEGIN PRIVATE KEY-----\ngarbage\n".write(
            toFile: dir + "/" + JWTSigningKeys.currentFileName, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes(
            [.posixPermissions: 0o600], ofItemAtPath: dir + "/" + JWTSigningKeys.currentFileName)
        #expect(throws: JWTSVIDError.self) {
            try JWTSigningKeys.open(stateDirectory: dir, now: now, keyLifetime: 6000, tokenLifetime: 300)
        }
    }

    /// A JWT signing key other users can read lets them mint tokens for this workload: refused, naming the fix.
    @Test func aKeyOthersCanReadIsRefused() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try JWTSigningKeys.open(stateDirectory: dir, now: now, keyLifetime: 6000, tokenLifetime: 300)
        let path = dir + "/" + JWTSigningKeys.currentFileName
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: path)
        #expect {
            try JWTSigningKeys.open(stateDirectory: dir, now: now, keyLifetime: 6000, tokenLifetime: 300)
        } throws: { error in
            "\(error)".contains("mode 0644") && "\(error)".contains("chmod 600")
        }
    }

    /// A crash in a retirement after the successor was written over `jwt-key.pem`: the next start drops the
    /// leftover `jwt-key-next.pem` and signs with the new key.
    @Test func anInterruptedRetirementIsFinishedAtTheNextStart() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let keys = try JWTSigningKeys.open(stateDirectory: dir, now: now, keyLifetime: 6000, tokenLifetime: 300)
        let timeline = keys.schedule.timeline(
            current: RootRotationSchedule.Root(createdAt: keys.current.createdAt, notAfter: keys.current.notAfter),
            successorCreatedAt: nil)
        _ = try keys.advance(now: timeline.publishAt)
        let next = try #require(keys.successor)
        let successorPath = dir + "/" + JWTSigningKeys.successorFileName
        try FileManager.default.removeItem(atPath: dir + "/" + JWTSigningKeys.currentFileName)
        try FileManager.default.copyItem(atPath: successorPath, toPath: dir + "/" + JWTSigningKeys.currentFileName)

        let reopened = try JWTSigningKeys.open(
            stateDirectory: dir, now: timeline.publishAt + 1, keyLifetime: 6000, tokenLifetime: 300)
        #expect(reopened.current.kid == next.kid && reopened.successor == nil)
        #expect(!FileManager.default.fileExists(atPath: successorPath))
    }
}
