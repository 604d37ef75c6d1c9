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
