import HTTP1

/// Request heads from anyone who reaches the status listener. The parse must end in the same outcome whether the
/// bytes arrive at once or split at any point (a TCP peer chooses the split), and must never hold more than its
/// bound.
enum HTTPRequestTarget {
    static func run(_ input: UnsafeRawBufferPointer) {
        let bytes = Array(input)
        let whole = HTTPRequestParser.parse(bytes)
        // The first byte picks where the stream is split (so splits are explored, not only the start).
        let cut = bytes.isEmpty ? 0 : Int(bytes[0]) % (bytes.count + 1)
        var parser = HTTPRequestParser()
        var split = parser.feed(bytes[..<cut])
        if case .needMoreBytes = split { split = parser.feed(bytes[cut...]) }
        guard split == whole else { fatalError("split at \(cut) changed the outcome: \(split) vs \(whole)") }
    }
}
