import Testing

@testable import Wire

/// The word-at-a-time ASCII check agrees with the byte-by-byte definition at every length and position.
@Suite struct StringCheckTests {
    private func naive(_ bytes: [UInt8]) -> Bool { bytes.allSatisfy { $0 != 0 && $0 < 0x80 } }

    @Test func agreesWithTheByteByByteDefinition() {
        for length in 0...40 {
            let clean = (0..<length).map { UInt8(0x21 + $0 % 90) }
            var cases = [clean]
            for position in 0..<length {
                for bad: UInt8 in [0x00, 0x80, 0xff, 0xc3] {
                    var bytes = clean
                    bytes[position] = bad
                    cases.append(bytes)
                }
                // 0x01 and 0x7f are the edges of what passes.
                var edge = clean
                edge[position] = position % 2 == 0 ? 0x01 : 0x7f
                cases.append(edge)
            }
            for bytes in cases {
                let fast = bytes.withUnsafeBytes { WireValidation.isASCIIWithoutNUL($0) }
                #expect(fast == naive(bytes), "\(bytes)")
            }
        }
        let nul = [UInt8](repeating: 0x41, count: 9) + [0]
        #expect(nul.withUnsafeBytes { WireValidation.stringProblem($0) } == "string contains a NUL byte")
    }
}

/// The in-place single-field encoding is byte for byte the general one, at every length and field number.
@Suite struct StringFieldTests {
    @Test func matchesTheGeneralEncoding() {
        for length in [0, 1, 7, 127, 128, 300] {
            let value = String(repeating: "n", count: length)
            for field: UInt32 in [1, 5, 15, 16, 300] {
                var general: [UInt8] = []
                WireFieldWriter.appendString(value, field: field, to: &general)
                #expect(WireFieldWriter.stringField(value, field: field) == general, "\(length) \(field)")
            }
        }
        // Multi-byte UTF-8 counts bytes, not characters.
        var general: [UInt8] = []
        WireFieldWriter.appendString("nöncé-7", field: 5, to: &general)
        #expect(WireFieldWriter.stringField("nöncé-7", field: 5) == general)
    }
}
