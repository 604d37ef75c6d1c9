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
        convert: (UnsafeMutablePointer<C>) throws(WireError) -> R
    ) throws(WireError) -> R {
        guard bytes.count <= limit else { throw .oversize(bytes: bytes.count, limit: limit) }
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
