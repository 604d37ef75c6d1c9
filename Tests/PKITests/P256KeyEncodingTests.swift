import Testing
@testable import PKI

/// The P-256 key path that skips OpenSSL's decoder and encoder frameworks must load exactly what OpenSSL loads,
/// write exactly what OpenSSL writes, and leave every other shape to OpenSSL. Fixtures were made with the
/// `openssl` 3.0 CLI: `ecparam -name prime256v1 -genkey -noout` (SEC1), `pkey` (its PKCS#8), `ec -no_public`,
/// `ec -conv_form compressed`.
@Suite struct P256KeyEncodingTests {
    static let sec1 = """
        -----BEGIN EC PRIVATE KEY-----
        MHcCAQEEIMV0QTOGjI7z2Wf51aDbB0sj76aIGR05Qx5Vzd/w0j8foAoGCCqGSM49
        AwEHoUQDQgAE0R/vNdsLKDYuK2VbPozlE4uf/hsgeWicdo8y+cWTxtI+4eYHIVEl
        m9EJeh0N8FpzOFmdtQ+jLE2vidJezFYzdA==
        -----END EC PRIVATE KEY-----

        """
    static let pkcs8 = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgxXRBM4aMjvPZZ/nV
        oNsHSyPvpogZHTlDHlXN3/DSPx+hRANCAATRH+812wsoNi4rZVs+jOUTi5/+GyB5
        aJx2jzL5xZPG0j7h5gchUSWb0Ql6HQ3wWnM4WZ21D6MsTa+J0l7MVjN0
        -----END PRIVATE KEY-----

        """
    static let sec1WithoutPublicKey = """
        -----BEGIN EC PRIVATE KEY-----
        MDECAQEEIMV0QTOGjI7z2Wf51aDbB0sj76aIGR05Qx5Vzd/w0j8foAoGCCqGSM49
        AwEH
        -----END EC PRIVATE KEY-----

        """
    static let sec1Compressed = """
        -----BEGIN EC PRIVATE KEY-----
        MFcCAQEEIMV0QTOGjI7z2Wf51aDbB0sj76aIGR05Qx5Vzd/w0j8foAoGCCqGSM49
        AwEHoSQDIgAC0R/vNdsLKDYuK2VbPozlE4uf/hsgeWicdo8y+cWTxtI=
        -----END EC PRIVATE KEY-----

        """

    @Test func bothOpenSSLShapesTakeTheDirectPathAndAgree() throws {
        let sec1 = try #require(P256KeyEncoding.firstKeyBlock(pem: Self.sec1))
        let pkcs8 = try #require(P256KeyEncoding.firstKeyBlock(pem: Self.pkcs8))
        #expect(!sec1.isPKCS8 && pkcs8.isPKCS8)
        let fromSEC1 = try #require(P256KeyEncoding.parts(sec1: sec1.der[...]))
        let fromPKCS8 = try #require(P256KeyEncoding.parts(pkcs8: pkcs8.der))
        #expect(fromSEC1.scalar == fromPKCS8.scalar && fromSEC1.point == fromPKCS8.point)
        // What we write for the key is byte for byte what the openssl CLI wrote.
        #expect(P256KeyEncoding.pkcs8(fromSEC1) == pkcs8.der)
        let key = try PrivateKey(pem: Self.sec1)
        #expect(try key.pkcs8DER() == pkcs8.der)
        #expect(try PrivateKey(pem: Self.pkcs8).publicKey == key.publicKey)
    }

    @Test func generatedKeysAreWrittenAsOpenSSLsEncoderWritesThem() throws {
        for _ in 0..<20 {
            let key = try PrivateKey.generate()
            let direct = try key.pkcs8DER()
            #expect(direct == (try key.encoderPKCS8DER()))
            #expect(P256KeyEncoding.parts(pkcs8: direct) != nil)
            let reloaded = try PrivateKey(pkcs8DER: direct)
            #expect(reloaded.publicKey == key.publicKey && reloaded.publicKey.matches(key))
        }
    }

    @Test func otherShapesAreLeftToOpenSSLWhichStillLoadsThem() throws {
        let reference = try PrivateKey(pem: Self.sec1).publicKey
        for pem in [Self.sec1WithoutPublicKey, Self.sec1Compressed] {
            let block = try #require(P256KeyEncoding.firstKeyBlock(pem: pem))
            #expect(P256KeyEncoding.parts(sec1: block.der[...]) == nil)
            #expect(try PrivateKey(pem: pem).publicKey == reference)
        }
        let p384 = try PrivateKey.generate(.ecdsaP384)
        #expect(P256KeyEncoding.parts(pkcs8: try p384.pkcs8DER()) == nil)
        #expect(try PrivateKey(pem: try p384.pkcs8PEM()).algorithm == .ecdsaP384)
    }

    @Test func aPointOffTheCurveIsStillRefused() throws {
        var der = try #require(P256KeyEncoding.firstKeyBlock(pem: Self.pkcs8)).der
        der[der.count - 1] ^= 0x01
        #expect(P256KeyEncoding.parts(pkcs8: der) != nil, "the shape is right; the point is not")
        #expect(throws: PKIError.self) { try PrivateKey(pkcs8DER: der) }
    }

    @Test func pemTextAroundAndInsideTheBlock() throws {
        let der = try #require(P256KeyEncoding.firstKeyBlock(pem: Self.pkcs8)).der
        // Leading text (the agent's JWT key file starts with a `kid=` line) and CRLF line ends.
        let framed = "kid=abc\n" + Self.pkcs8.replacing("\n", with: "\r\n")
        #expect(P256KeyEncoding.firstKeyBlock(pem: framed)?.der == der)
        // Not strict base64, a header line, a BEGIN not at a line start, a missing END: all left to OpenSSL.
        for broken in [
            Self.pkcs8.replacing("MIGH", with: "MI*H"),
            Self.pkcs8.replacing("KEY-----\nMIGH", with: "KEY-----\nProc-Type: 4,ENCRYPTED\nMIGH"),
            "x" + Self.pkcs8,
            String(Self.pkcs8.prefix(100)),
            Self.pkcs8.replacing("VjN0\n", with: "VjN0=\n"),
        ] {
            #expect(P256KeyEncoding.firstKeyBlock(pem: broken) == nil, "\(broken)")
        }
        #expect(throws: PKIError.self) { try PrivateKey(pem: "x" + Self.pkcs8) }
    }
}
