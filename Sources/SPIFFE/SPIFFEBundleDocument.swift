public import JSONText
public import PKI

extension SPIFFEBundle {
    /// Why a bundle cannot be written as a SPIFFE bundle document.
    public struct WriteError: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    /// This bundle as a SPIFFE bundle document (SPIFFE Trust Domain and Bundle, §4): a JWK Set whose `keys` are the
    /// X.509 authorities, then the JWT authorities, in order, followed by `spiffe_refresh_hint` and `spiffe_sequence`
    /// when set. Each X.509 authority is `{"use":"x509-svid","kty",<key parameters>,"x5c":[<DER, standard base64>]}`;
    /// each JWT authority is its JWK as held in `jwtKeys`, unchanged. Compact, one line, members in a fixed order, so
    /// the same bundle always renders to the same bytes and two versions diff by authority.
    /// `parse` reads the result back to an equal bundle. Throws for a certificate whose key has no JWK form, and for
    /// a `jwtKeys` entry that is not a JWK object with `"use":"jwt-svid"` and a string `kid` (what `parse` keeps):
    /// writing what the reader would drop would publish a document that means less than it says.
    public func document() throws(WriteError) -> String {
        var keys: [JSONValue] = []
        for (index, certificate) in x509.certificates.enumerated() {
            let parameters: JWKPublicParameters
            do { parameters = try certificate.publicKeyJWKParameters() } catch {
                throw WriteError("X.509 authority \(index) (\(certificate.subject)): \(error)")
            }
            keys.append(
                .object(
                    [("use", .string("x509-svid"))] + Self.jwkMembers(parameters)
                        + [("x5c", .array([.string(Self.standardBase64(certificate.der))]))]))
        }
        for (index, text) in jwtKeys.enumerated() {
            let key: JSONValue
            do { key = try JSONValue.parse(Array(text.utf8), maxBytes: Self.maxDocumentBytes) } catch {
                throw WriteError("JWT authority \(index) is not JSON: \(error)")
            }
            guard case .object = key, key["use"] == .string("jwt-svid"), case .string = key["kid"] ?? .null else {
                throw WriteError("JWT authority \(index) is not a JWK with \"use\":\"jwt-svid\" and a \"kid\"")
            }
            keys.append(key)
        }
        var members: [(String, JSONValue)] = [("keys", .array(keys))]
        if let refreshHint { members.append(("spiffe_refresh_hint", .int(refreshHint))) }
        if let sequence { members.append(("spiffe_sequence", .int(sequence))) }
        return JSONValue.object(members).rendered
    }

    /// `kty` and the public key parameters of a JWK, in the order RFC 7518 lists them (§6.2.1 `crv`, `x`, `y`;
    /// §6.3.1 `n`, `e`). The JWT bundle (`JWKS`) renders its keys with the same members.
    public static func jwkMembers(_ parameters: JWKPublicParameters) -> [(String, JSONValue)] {
        switch parameters {
        case .ec(let curve, let x, let y):
            [
                ("kty", .string("EC")), ("crv", .string(curve)), ("x", .string(Base64URL.encode(x))),
                ("y", .string(Base64URL.encode(y))),
            ]
        case .rsa(let modulus, let exponent):
            [
                ("kty", .string("RSA")), ("n", .string(Base64URL.encode(modulus))),
                ("e", .string(Base64URL.encode(exponent))),
            ]
        }
    }

    /// Standard, padded base64 (RFC 4648 §4): what RFC 7517 §4.7 wants in `x5c`, unlike the rest of a JWK.
    static func standardBase64(_ bytes: [UInt8]) -> String {
        var text = ""
        text.reserveCapacity((bytes.count + 2) / 3 * 4)
        for character in Base64URL.encode(bytes).unicodeScalars {
            switch character {
            case "-": text.append("+")
            case "_": text.append("/")
            default: text.unicodeScalars.append(character)
            }
        }
        while text.utf8.count % 4 != 0 { text.append("=") }
        return text
    }
}
