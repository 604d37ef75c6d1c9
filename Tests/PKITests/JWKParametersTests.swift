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
