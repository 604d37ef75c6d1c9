import Wire

/// Every Wire decoder gets the same bytes. A message that decodes must survive re-encoding: decoding its own
/// encoding gives the same value.
enum WireDecodersTarget {
    static func run(_ input: UnsafeRawBufferPointer) {
        check(AnyMessage.self, input)
        check(RPCStatus.self, input)
        check(Node.self, input)
        check(DiscoveryRequest.self, input)
        check(DiscoveryResponse.self, input)
        check(DeltaDiscoveryRequest.self, input)
        check(Resource.self, input)
        check(DeltaDiscoveryResponse.self, input)
        check(TLSCertificate.self, input)
        check(CertificateValidationContext.self, input)
        check(SPIFFECertValidatorConfig.self, input)
        check(Secret.self, input)
        check(X509SVIDRequest.self, input)
        check(X509BundlesRequest.self, input)
        check(X509SVIDMessage.self, input)
        check(X509SVIDResponse.self, input)
        check(X509BundlesResponse.self, input)
        check(JWTSVIDRequest.self, input)
        check(JWTSVIDMessage.self, input)
        check(JWTSVIDResponse.self, input)
        check(JWTBundlesRequest.self, input)
        check(JWTBundlesResponse.self, input)
        check(ValidateJWTSVIDRequest.self, input)
        check(ValidateJWTSVIDResponse.self, input)
        checkEcho(input)
        // Envoy's responses carry Secrets packed in Any: the unpack path too.
        if let any = try? AnyMessage(wireBuffer: input, limit: AnyMessage.defaultDecodeLimit) {
            _ = try? any.unpack(Secret.self)
            _ = try? any.unpack(SPIFFECertValidatorConfig.self)
        }
    }

    /// What the SDS service reads without decoding (an ACK's echo) must be what a decode reads.
    private static func checkEcho(_ input: UnsafeRawBufferPointer) {
        let bytes = Array(input)
        guard let echo = DiscoveryRequestEcho(wireBytes: bytes) else { return }
        guard let request = try? DiscoveryRequest(wireBytes: bytes) else {
            fatalError("an echo that does not decode: \(bytes)")
        }
        guard request.node == nil, request.errorDetail == nil, request.resourceNames.count <= 1,
            echo.names(equal: request.resourceNames), echo.nonceText == request.responseNonce,
            echo.versionInfoText == request.versionInfo, echo.typeURLIsAbsentOr(request.typeURL),
            request.typeURL.isEmpty || !echo.typeURLIsAbsentOr(request.typeURL + "x")
        else { fatalError("an echo that reads otherwise than the decode: \(request)") }
    }

    private static func check<M: WireMessage>(_ type: M.Type, _ input: UnsafeRawBufferPointer) {
        guard let message = try? M(wireBuffer: input, limit: M.defaultDecodeLimit) else { return }
        let encoded = message.wireBytes()
        guard let again = try? M(wireBytes: encoded) else {
            fatalError("\(M.protoName): its own encoding does not decode")
        }
        guard again == message else { fatalError("\(M.protoName): decode(encode(m)) != m: \(message) became \(again)") }
    }
}
