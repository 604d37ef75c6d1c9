import PKI
import Testing

@Suite struct JWKParametersTests {
    @Test func ecKeysGiveTheirCurveAndPaddedCoordinates() throws {
        for (algorithm, curve, size) in [(KeyAlgorithm.ecdsaP256, "P-256", 32), (.ecdsaP384, "P-384", 48)] {
            let parameters = try PrivateKey.generate(algorithm).publicKey.jwkParameters()
            guard case .ec(let named, let x, let y) = parameters else {
                Issue.record("\(algorithm): \(parameters)")
                continue
            }
            #expect(named == curve && x.count == size && y.count == size)
            #expect(parameters.keyType == "EC")
        }
    }

    @Test func aCompressedPointGivesTheSameCoordinates() throws {
        // The coordinates are copied from the uncompressed point; a compressed one is read as numbers. Both agree.
        let key = try PrivateKey.generate()
        let spki = key.publicKey.spkiDER
        #expect(spki.count == 91 && spki[26] == 0x04)
        let point = Array(spki[26...])
        let compressed: [UInt8] =
            [0x30, 0x39, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01, 0x06, 0x08]
            + [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07, 0x03, 0x22, 0x00]
            + [point[64] & 1 == 1 ? 0x03 : 0x02] + point[1...32]
        let parameters = try PublicKey(spkiDER: compressed).jwkParameters()
        #expect(parameters == .ec(curve: "P-256", x: Array(point[1...32]), y: Array(point[33...])))
        #expect(try key.publicKey.jwkParameters() == parameters)
    }

    @Test func rsaKeysGiveAMinimalModulusAndExponent() throws {
        let parameters = try PrivateKey.generate(.rsa(bits: 2048)).publicKey.jwkParameters()
        guard case .rsa(let modulus, let exponent) = parameters else {
            Issue.record("\(parameters)")
            return
        }
        #expect(modulus.count == 256 && modulus[0] != 0)
        #expect(exponent == [0x01, 0x00, 0x01])
        #expect(parameters.keyType == "RSA")
    }

    @Test func aPublicKeyReparsedFromItsDERIsTheSameKey() throws {
        let key = try PrivateKey.generate()
        let reparsed = try PublicKey(spkiDER: key.publicKey.spkiDER)
        #expect(reparsed == key.publicKey)
        #expect(reparsed.matches(key))
        #expect(try reparsed.jwkParameters() == key.publicKey.jwkParameters())
        #expect(throws: PKIError.self) { try PublicKey(spkiDER: key.publicKey.spkiDER + [0]) }
        #expect(throws: PKIError.self) { try PublicKey(spkiDER: [0x30, 0x00]) }
    }
}
