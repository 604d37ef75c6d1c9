/// A SotW `DiscoveryRequest` that only echoes a response: `version_info`, at most one `resource_names` entry,
/// `type_url` and `response_nonce`, nothing else. That is every ACK Envoy sends on an open stream (one secret per
/// stream, the node only on the first request), and at 10,000 streams a rotation brings 10,000 of them: a full
/// decode (protobuf-c, then strings and arrays) was more than half of an ACK's cost.
///
/// Reading one builds nothing: the fields stay ranges of the request's bytes, to be compared with what the stream
/// holds. Anything else (a node, an `error_detail`, several names, an unknown or repeated field, a field of the
/// wrong wire type, a malformed top level, a string a decode would refuse) is not an echo: `init` returns nil and
/// the caller decodes the request fully, with that path's checks and errors. Every echo decodes (the fuzz target
/// `wire-decoders` checks that it reads what the decode reads).
public struct DiscoveryRequestEcho {
    public let bytes: [UInt8]
    private let versionInfo: Range<Int>
    private let name: Range<Int>?
    private let typeURL: Range<Int>
    private let nonce: Range<Int>

    public init?(wireBytes bytes: [UInt8]) {
        var versionInfo: Range<Int>?
        var name: Range<Int>?
        var typeURL: Range<Int>?
        var nonce: Range<Int>?
        let scanned: Bool = bytes.withUnsafeBytes { raw in
            var scanner = WireScanner(raw)
            while true {
                let next: WireScanner.Field?
                do { next = try scanner.next() } catch { return false }
                guard let field = next else { return true }
                // Every field is a string a decode checks (no NUL, valid UTF-8): an echo is a request that decodes.
                guard field.wireType == .lengthDelimited,
                    WireValidation.stringProblem(UnsafeRawBufferPointer(rebasing: raw[field.payload])) == nil
                else { return false }
                switch field.number {
                case 1:
                    guard versionInfo == nil else { return false }
                    versionInfo = field.payload
                case 3:
                    guard name == nil else { return false }
                    name = field.payload
                case 4:
                    guard typeURL == nil else { return false }
                    typeURL = field.payload
                case 5:
                    guard nonce == nil else { return false }
                    nonce = field.payload
                default:
                    return false
                }
            }
        }
        // proto3 omits empty strings: an absent field is an empty range.
        guard scanned, let nonce, !nonce.isEmpty else { return nil }
        self.bytes = bytes
        self.versionInfo = versionInfo ?? 0..<0
        self.name = name
        self.typeURL = typeURL ?? 0..<0
        self.nonce = nonce
    }

    /// Whether `response_nonce` is `nonce`.
    public func echoes(nonce other: String) -> Bool { equals(nonce, other) }

    /// Whether `type_url` is absent (allowed after a stream's first request) or `typeURL`.
    public func typeURLIsAbsentOr(_ typeURL: String) -> Bool { self.typeURL.isEmpty || equals(self.typeURL, typeURL) }

    /// Whether `resource_names` is exactly `names`, in order.
    public func names(equal names: [String]) -> Bool {
        switch (name, names.count) {
        case (nil, 0): true
        case (let name?, 1): equals(name, names[0])
        default: false
        }
    }

    /// `version_info` as text (for a debug log line).
    public var versionInfoText: String { String(decoding: bytes[versionInfo], as: UTF8.self) }
    /// `response_nonce` as text (for a debug log line).
    public var nonceText: String { String(decoding: bytes[nonce], as: UTF8.self) }

    private func equals(_ range: Range<Int>, _ text: String) -> Bool {
        var text = text
        return text.withUTF8 { utf8 in
            utf8.count == range.count
                && bytes.withUnsafeBytes { raw in
                    Self.same(UnsafeRawBufferPointer(rebasing: raw[range]), UnsafeRawBufferPointer(utf8))
                }
        }
    }

    /// Byte equality of two buffers of one length, eight bytes at a time (the type URL is 68).
    private static func same(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset + 8 <= a.count {
            guard
                a.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                    == b.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            else { return false }
            offset += 8
        }
        while offset < a.count {
            guard a[offset] == b[offset] else { return false }
            offset += 1
        }
        return true
    }
}
