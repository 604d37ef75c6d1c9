internal import CSDSProtos

/// Decode and encode through protobuf-c's generated functions, with all C memory in one `CArena`.
///
///     decode: [UInt8] ──limit check──▶ X__unpack(arena allocator) ──▶ C struct ──convert──▶ Swift value
///     encode: Swift value ──build (arena)──▶ C struct ──X__get_packed_size / X__pack──▶ [UInt8]
///
/// The arena dies when the call returns; no C pointer escapes.
enum Codec {
    typealias Unpack<C> = (UnsafeMutablePointer<ProtobufCAllocator>?, Int, UnsafePointer<UInt8>?) ->
        UnsafeMutablePointer<C>?
    typealias PackedSize<C> = (UnsafePointer<C>?) -> Int
    typealias Pack<C> = (UnsafePointer<C>?, UnsafeMutablePointer<UInt8>?) -> Int

    static func decode<C, R>(
        _ bytes: UnsafeRawBufferPointer, limit: Int, protoName: String, unpack: Unpack<C>,
        descriptor: ProtobufCMessageDescriptor, convert: (UnsafeMutablePointer<C>) throws(WireError) -> R
    ) throws(WireError) -> R {
        guard bytes.count <= limit else { throw .oversize(bytes: bytes.count, limit: limit) }
        // Before protobuf-c sees a byte: it recurses once per nesting level and keeps strings as C strings.
        try withUnsafePointer(to: descriptor) { (pointer) throws(WireError) in
            try WireValidation.check(bytes, descriptor: pointer, depth: 0)
        }
        // protobuf-c allocates roughly as much as it reads (plus struct overhead): size the first chunk to match.
        let arena = CArena(initialCapacity: min(max(bytes.count * 2, 1024), 1 << 20))
        let base = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self)
        guard let message = unpack(arena.allocator, bytes.count, base) else {
            throw .malformed(message: "\(protoName): \(WireScanner.diagnose(bytes))")
        }
        return try withExtendedLifetime(arena) { () throws(WireError) -> R in try convert(message) }
    }

    static func encode<C>(
        estimatedSize: Int = 1024, packedSize: PackedSize<C>, pack: Pack<C>,
        build: (CArena) -> UnsafeMutablePointer<C>
    ) -> [UInt8] {
        let arena = CArena(initialCapacity: estimatedSize)
        return withExtendedLifetime(arena) {
            let message = UnsafePointer(build(arena))
            let size = packedSize(message)
            guard size > 0 else { return [] }
            return [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
                count = pack(message, buffer.baseAddress)
                precondition(count == size, "protobuf-c packed \(count) bytes, announced \(size)")
            }
        }
    }
}

// MARK: - C → Swift field conversions

/// A proto3 `string` field. protobuf-c does not check UTF-8; protobuf requires it, so reject invalid text.
func swiftString(_ pointer: UnsafePointer<CChar>?, field: StaticString) throws(WireError) -> String {
    guard let pointer else { return "" }
    guard let string = String(validatingCString: pointer) else {
        throw .malformed(message: "invalid UTF-8 in string field \(field)")
    }
    return string
}

func swiftStrings(
    _ count: Int, _ array: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, field: StaticString
) throws(WireError) -> [String] {
    guard count > 0, let array else { return [] }
    var strings: [String] = []
    strings.reserveCapacity(count)
    for index in 0..<count { strings.append(try swiftString(array[index], field: field)) }
    return strings
}

func swiftBytes(_ data: ProtobufCBinaryData) -> [UInt8] {
    guard data.len > 0, let base = data.data else { return [] }
    return Array(UnsafeBufferPointer(start: base, count: data.len))
}

func swiftBytesList(_ count: Int, _ array: UnsafeMutablePointer<ProtobufCBinaryData>?) -> [[UInt8]] {
    guard count > 0, let array else { return [] }
    return (0..<count).map { swiftBytes(array[$0]) }
}

/// Repeated message field → Swift array, element by element.
func swiftMessages<C, R>(
    _ count: Int, _ array: UnsafeMutablePointer<UnsafeMutablePointer<C>?>?,
    _ convert: (UnsafeMutablePointer<C>) throws(WireError) -> R
) throws(WireError) -> [R] {
    guard count > 0, let array else { return [] }
    var result: [R] = []
    result.reserveCapacity(count)
    for index in 0..<count {
        // protobuf-c never leaves a NULL in a repeated message field it unpacked.
        guard let element = array[index] else { throw .malformed(message: "null element in repeated field") }
        result.append(try convert(element))
    }
    return result
}

// MARK: - Checks before unpacking

/// What protobuf-c does not check, checked on the wire bytes before it unpacks them:
/// - **Nesting depth.** protobuf-c unpacks nested messages recursively: a `google.protobuf.Struct` nested 5,000
///   deep (claims in a ValidateJWTSVID answer, node metadata) overflows the stack before any limit of ours could
///   look at the result. This walk is recursive too, but stops at `maxDepth`.
/// - **Strings.** protobuf-c hands strings over NUL-terminated, so `svc-a\0svc-b` would silently become `svc-a`
///   (and `<own ID>\0/admin` our own ID). Proto3 requires UTF-8; a NUL byte is refused too: no name, ID, audience
///   or URL here may hold one. The status names the field.
/// Unknown fields are skipped (protobuf-c keeps them as bytes, never recursing into them).
enum WireValidation {
    /// Why 100: protobuf's own C++ and Java runtimes stop at 100 levels by default; a `Struct` level costs three
    /// (Struct → fields entry → Value), so JSON-like metadata may nest ~33 deep, far past what Envoy, Istio or a
    /// SPIRE agent send.
    static let maxDepth = 100

    static func check(
        _ bytes: UnsafeRawBufferPointer, descriptor: UnsafePointer<ProtobufCMessageDescriptor>, depth: Int
    ) throws(WireError) {
        // Named only for an error: every request decoded passes here.
        var messageName: String { descriptor.pointee.name.map { String(cString: $0) } ?? "message" }
        guard depth < maxDepth else {
            throw .malformed(message: "\(messageName): messages nested deeper than \(maxDepth) levels")
        }
        var scanner = WireScanner(bytes)
        while true {
            let next: WireScanner.Field?
            do { next = try scanner.next() } catch {
                throw .malformed(message: "\(messageName): \(WireScanner.diagnose(bytes))")
            }
            guard let field = next else { return }
            guard field.wireType == .lengthDelimited, field.number <= UInt64(UInt32.max),
                let fieldDescriptor = protobuf_c_message_descriptor_get_field(descriptor, UInt32(field.number))
            else { continue }
            let payload = UnsafeRawBufferPointer(rebasing: bytes[field.payload])
            switch fieldDescriptor.pointee.type {
            case PROTOBUF_C_TYPE_STRING:
                if let problem = stringProblem(payload) {
                    let fieldName = fieldDescriptor.pointee.name.map { String(cString: $0) } ?? "\(field.number)"
                    throw .malformed(message: "\(messageName).\(fieldName): \(problem)")
                }
            case PROTOBUF_C_TYPE_MESSAGE:
                guard let nested = fieldDescriptor.pointee.descriptor else { continue }
                try check(
                    payload, descriptor: nested.assumingMemoryBound(to: ProtobufCMessageDescriptor.self),
                    depth: depth + 1)
            default:
                continue
            }
        }
    }

    /// Why a string field's bytes cannot be taken as they are, or nil.
    static func stringProblem(_ bytes: UnsafeRawBufferPointer) -> String? {
        if isASCIIWithoutNUL(bytes) { return nil }
        if bytes.contains(0) { return "string contains a NUL byte" }
        // ASCII (nearly every name, nonce and version) is valid UTF-8: no String is built to learn that.
        if bytes.allSatisfy({ $0 < 0x80 }) { return nil }
        if String(validating: bytes, as: UTF8.self) == nil { return "string is not valid UTF-8" }
        return nil
    }

    /// Every byte in 1...0x7f, eight at a time (every ACK and response passes a type URL of 68 bytes here; a byte
    /// loop was most of reading an ACK without decoding it). False says nothing: the caller then looks closer.
    static func isASCIIWithoutNUL(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let highBits: UInt64 = 0x8080_8080_8080_8080
        let lowBits: UInt64 = 0x0101_0101_0101_0101
        var offset = 0
        while offset + 8 <= bytes.count {
            let word = bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            // A byte with its high bit set is not ASCII; with no high bit set, (w - 0x01…) & ~w & 0x80… is
            // nonzero exactly when some byte is zero.
            guard word & highBits == 0, (word &- lowBits) & ~word & highBits == 0 else { return false }
            offset += 8
        }
        while offset < bytes.count {
            guard bytes[offset] != 0, bytes[offset] < 0x80 else { return false }
            offset += 1
        }
        return true
    }
}

// MARK: - Raw wire scanning

/// A minimal reader of the protobuf wire format, for the two things protobuf-c cannot tell us: where a
/// field's original bytes are (to keep Envoy's node byte for byte) and why a message was rejected.
struct WireScanner {
    enum WireType: UInt64 {
        case varint = 0, fixed64 = 1, lengthDelimited = 2, startGroup = 3, endGroup = 4, fixed32 = 5
    }

    struct Field {
        var number: UInt64
        var wireType: WireType
        /// The payload: the value bytes (for length-delimited fields, without the length prefix).
        var payload: Range<Int>
    }

    enum Failure: Error {
        case truncatedVarint(at: Int)
        case varintTooLong(at: Int)
        case invalidWireType(UInt64, at: Int)
        case fieldNumberZero(at: Int)
        case lengthBeyondEnd(length: UInt64, at: Int, remaining: Int)
        case truncatedFixed(at: Int)
        case groupsUnsupported(at: Int)
    }

    let bytes: UnsafeRawBufferPointer
    private(set) var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    mutating func readVarint() throws(Failure) -> UInt64 {
        let start = offset
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard offset < bytes.count else { throw .truncatedVarint(at: start) }
            let byte = bytes[offset]
            offset += 1
            guard shift < 64 else { throw .varintTooLong(at: start) }
            value |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
    }

    /// The next top-level field, or nil at the end.
    mutating func next() throws(Failure) -> Field? {
        guard offset < bytes.count else { return nil }
        let tagOffset = offset
        let tag = try readVarint()
        guard let wireType = WireType(rawValue: tag & 7) else { throw .invalidWireType(tag & 7, at: tagOffset) }
        let number = tag >> 3
        guard number != 0 else { throw .fieldNumberZero(at: tagOffset) }
        let start: Int
        switch wireType {
        case .varint:
            start = offset
            _ = try readVarint()
            return Field(number: number, wireType: wireType, payload: start..<offset)
        case .fixed64, .fixed32:
            let width = wireType == .fixed64 ? 8 : 4
            guard bytes.count - offset >= width else { throw .truncatedFixed(at: offset) }
            start = offset
            offset += width
        case .lengthDelimited:
            let lengthOffset = offset
            let length = try readVarint()
            let remaining = bytes.count - offset
            guard length <= UInt64(remaining) else {
                throw .lengthBeyondEnd(length: length, at: lengthOffset, remaining: remaining)
            }
            start = offset
            offset += Int(length)
        case .startGroup, .endGroup:
            throw .groupsUnsupported(at: tagOffset)
        }
        return Field(number: number, wireType: wireType, payload: start..<offset)
    }

    /// The concatenated payloads of every length-delimited occurrence of field `number`; protobuf merges
    /// repeated occurrences of a singular message field, and merging is exactly concatenation.
    ///
    /// Throws when the top level does not scan: protobuf-c accepts some input every other runtime rejects (a
    /// field numbered 0, found by fuzzing), and the scan would stop there, losing the payloads after it.
    static func payload(
        ofField number: UInt64, in bytes: UnsafeRawBufferPointer
    ) throws(WireError) -> (bytes: [UInt8], pieces: Int)? {
        var scanner = WireScanner(bytes)
        var result: (bytes: [UInt8], pieces: Int)?
        do {
            while let field = try scanner.next() {
                guard field.number == number, field.wireType == .lengthDelimited else { continue }
                let slice = UnsafeRawBufferPointer(rebasing: bytes[field.payload])
                if result == nil {
                    result = (Array(slice), 1)
                } else {
                    result!.bytes.append(contentsOf: slice)
                    result!.pieces += 1
                }
            }
        } catch {
            throw .malformed(message: diagnose(bytes))
        }
        return result
    }

    /// A human-readable reason why `bytes` is not a valid message, found by walking the top level.
    static func diagnose(_ bytes: UnsafeRawBufferPointer) -> String {
        var scanner = WireScanner(bytes)
        do {
            while try scanner.next() != nil {}
        } catch {
            switch error {
            case .truncatedVarint(let at): return "truncated varint at byte \(at)"
            case .varintTooLong(let at): return "varint longer than 10 bytes at byte \(at)"
            case .invalidWireType(let type, let at): return "invalid wire type \(type) at byte \(at)"
            case .fieldNumberZero(let at): return "field number 0 at byte \(at)"
            case .lengthBeyondEnd(let length, let at, let remaining):
                return "length \(length) at byte \(at) exceeds the \(remaining) bytes left"
            case .truncatedFixed(let at): return "truncated fixed-width value at byte \(at)"
            case .groupsUnsupported(let at): return "group wire type at byte \(at)"
            }
        }
        return "a field has the wrong wire type or a nested message is malformed (\(bytes.count) bytes)"
    }
}

// MARK: - Raw wire writing

/// Appends single fields to an encoded message. Protobuf parsers merge fields wherever they appear, so a message
/// encoded once can be completed per recipient (an SDS push shares one encoding of the secret across every stream
/// and appends each stream's nonce).
public enum WireFieldWriter {
    /// Appends `value` as the length-delimited field `number`; nothing for an empty string (proto3 omits it).
    public static func appendString(_ value: String, field number: UInt32, to bytes: inout [UInt8]) {
        let utf8 = value.utf8
        guard !utf8.isEmpty else { return }
        appendVarint(UInt64(number) << 3 | 2, to: &bytes)
        appendVarint(UInt64(utf8.count), to: &bytes)
        bytes.append(contentsOf: utf8)
    }

    /// `value` as the length-delimited field `number`, alone in an array of exactly its size (a stream's nonce,
    /// appended to a shared body on every push); empty for an empty string.
    public static func stringField(_ value: String, field number: UInt32) -> [UInt8] {
        var value = value
        return value.withUTF8 { utf8 in
            // One-byte tag and length, the usual case, written in place; anything longer the general way.
            guard !utf8.isEmpty, number < 16, utf8.count < 128 else {
                var bytes: [UInt8] = []
                appendString(String(decoding: utf8, as: UTF8.self), field: number, to: &bytes)
                return bytes
            }
            return filledBytes(count: utf8.count + 2) { buffer in
                buffer[0] = UInt8(number << 3 | 2)
                buffer[1] = UInt8(utf8.count)
                UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: buffer[2...])).copyMemory(
                    from: UnsafeRawBufferPointer(utf8))
            }
        }
    }

    static func appendVarint(_ value: UInt64, to bytes: inout [UInt8]) {
        var rest = value
        while rest >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        bytes.append(UInt8(rest))
    }
}

extension DiscoveryResponse {
    /// What an ACK of this response carries from it, without building a string: the encoded `version_info` and
    /// `nonce` entries, copied as they are (a DiscoveryRequest numbers them 1 and 5 too, so they are its
    /// `version_info` and `response_nonce`), and an FNV-1a digest of the version to tell one version from the next.
    /// The same checks as a decode for what it reads: a malformed top level or a string that is not UTF-8 is an
    /// error.
    public static func ackEntries(wireBytes bytes: [UInt8]) throws(WireError) -> (
        entries: [UInt8], versionDigest: UInt64
    ) {
        try bytes.withUnsafeBytes { raw -> Result<([UInt8], UInt64), WireError> in
            var scanner = WireScanner(raw)
            // The entries' ranges first, then one array of their exact size (a response has one of each; more are
            // kept in order, as protobuf's last-one-wins reads them).
            var first: Range<Int>?
            var second: Range<Int>?
            var more: [Range<Int>] = []
            var digest = FNV1a()
            while true {
                let start = scanner.offset
                let next: WireScanner.Field?
                do { next = try scanner.next() } catch {
                    return .failure(.malformed(message: "DiscoveryResponse: \(WireScanner.diagnose(raw))"))
                }
                guard let field = next else { break }
                guard field.wireType == .lengthDelimited, field.number == 1 || field.number == 5 else { continue }
                let payload = UnsafeRawBufferPointer(rebasing: raw[field.payload])
                if let problem = WireValidation.stringProblem(payload) {
                    return .failure(.malformed(message: "DiscoveryResponse field \(field.number): \(problem)"))
                }
                let entry = start..<scanner.offset
                if first == nil {
                    first = entry
                } else if second == nil {
                    second = entry
                } else {
                    more.append(entry)
                }
                if field.number == 1 {
                    digest.add(payload)
                }
            }
            let total = (first?.count ?? 0) + (second?.count ?? 0) + more.reduce(0) { $0 + $1.count }
            let entries = filledBytes(count: total) { buffer in
                var count = 0
                func copy(_ range: Range<Int>) {
                    let target = UnsafeMutableBufferPointer(rebasing: buffer[count..<(count + range.count)])
                    UnsafeMutableRawBufferPointer(target).copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[range]))
                    count += range.count
                }
                if let first { copy(first) }
                if let second { copy(second) }
                for range in more { copy(range) }
            }
            return .success((entries, digest.value))
        }.get()
    }
}

/// `count` bytes written by `body` (which must write every one), as a new array of exactly that size. Not
/// `Array(unsafeUninitializedCapacity:)` nor `Array(repeating:count:)`: both allocate through the standard library's
/// unspecialized `_allocateBufferUninitialized`, which looks up the array storage's metadata on every call (~600
/// instructions); an array made from a buffer takes the specialized path. Written on the stack first (the heap
/// past the standard library's stack threshold). The hot callers are a stream's nonce field on every push and the
/// load client's ACK.
@inline(__always)
func filledBytes(count: Int, _ body: (UnsafeMutableBufferPointer<UInt8>) -> Void) -> [UInt8] {
    withUnsafeTemporaryAllocation(of: UInt8.self, capacity: count) { buffer in
        body(buffer)
        return Array(UnsafeBufferPointer(buffer))
    }
}
