import Glibc

/// The fuzz input of the structure-aware targets, read as a sequence of operations: the first byte of each picks the
/// op, the bytes after it its arguments. Every read is total — past the end a read yields zero or an empty slice —
/// so any byte string decodes to some op sequence, and a mutation of one argument leaves the ops around it intact.
///
///     [op][args…][op][args…]…      op = byte % (number of ops); each op documents its arguments
///
/// Arguments that select from a table take one byte (`pick`, `below`); strings come from a small dictionary most of
/// the time and from the input itself otherwise (`word`), including NUL bytes and invalid UTF-8.
struct FuzzInput {
    private let bytes: UnsafeRawBufferPointer
    private(set) var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var isAtEnd: Bool { offset >= bytes.count }

    mutating func byte() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func bool() -> Bool { byte() & 1 == 1 }

    /// A value in `0..<count` (`count` ≥ 1): one byte, or two when `count` exceeds 256.
    mutating func below(_ count: Int) -> Int {
        precondition(count >= 1)
        return count <= 256 ? Int(byte()) % count : uint16() % count
    }

    /// Little-endian.
    mutating func uint16() -> Int { Int(byte()) | Int(byte()) << 8 }

    mutating func uint32() -> UInt32 { UInt32(uint16()) | UInt32(uint16()) << 16 }

    mutating func pick<T>(_ choices: [T]) -> T { choices[below(choices.count)] }

    /// Up to `count` bytes (fewer at the end of the input).
    mutating func bytes(_ count: Int) -> [UInt8] {
        let end = min(bytes.count, offset + max(0, count))
        defer { offset = max(offset, end) }
        guard end > offset else { return [] }
        return Array(bytes[offset..<end])
    }

    /// A one-byte length, then that many bytes.
    mutating func shortBytes() -> [UInt8] { bytes(Int(byte())) }

    /// A two-byte length, then that many bytes.
    mutating func lengthPrefixed() -> [UInt8] { bytes(uint16()) }

    /// A string for a wire field: mostly an entry of `dictionary`, sometimes raw input bytes, an entry with a NUL
    /// byte inside, an entry followed by invalid UTF-8, or an entry repeated (long names).
    mutating func word(_ dictionary: [[UInt8]]) -> [UInt8] {
        let selector = byte()
        switch selector {
        case 0..<0xC0: return dictionary[Int(selector) % dictionary.count]
        case 0xC0..<0xE0: return shortBytes()
        case 0xE0..<0xF0: return pick(dictionary) + [0] + pick(dictionary)
        case 0xF0..<0xF8: return pick(dictionary) + [0xFF, 0xC3, 0x28]
        default: return [UInt8](repeating: 0x61, count: 256 * (1 + below(16)))
        }
    }

    /// Up to `limit` words.
    mutating func words(_ dictionary: [[UInt8]], limit: Int) -> [[UInt8]] {
        (0..<below(limit + 1)).map { _ in word(dictionary) }
    }
}

/// Whether `haystack` contains `needle` (memchr for the first byte, memcmp for the rest).
func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard let first = needle.first, haystack.count >= needle.count else { return false }
    return haystack.withUnsafeBytes { h in
        needle.withUnsafeBytes { n in
            guard let base = h.baseAddress, let wanted = n.baseAddress else { return false }
            var start = base
            let end = base + (h.count - n.count + 1)
            while start < end {
                guard let hit = memchr(start, Int32(first), end - start) else { return false }
                if memcmp(hit, wanted, n.count) == 0 { return true }
                start = UnsafeRawPointer(hit) + 1
            }
            return false
        }
    }
}

/// A protobuf encoder over raw bytes, for messages no Swift type can hold: strings with NUL bytes or invalid
/// UTF-8, unknown fields, nesting deeper than any decoder accepts. Field numbers are the ones in Protos/.
struct ProtoWriter {
    private(set) var bytes: [UInt8] = []

    init() {}

    static func varintSize(_ value: UInt64) -> Int {
        var value = value
        var size = 1
        while value >= 0x80 {
            value >>= 7
            size += 1
        }
        return size
    }

    mutating func varint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(value & 0x7F) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    mutating func tag(_ field: Int, _ wireType: Int) { varint(UInt64(field << 3 | wireType)) }

    mutating func varintField(_ field: Int, _ value: UInt64) {
        tag(field, 0)
        varint(value)
    }

    mutating func doubleField(_ field: Int, _ value: Double) {
        tag(field, 1)
        withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// A length-delimited field (string, bytes or an encoded message).
    mutating func field(_ field: Int, _ value: [UInt8]) {
        tag(field, 2)
        varint(UInt64(value.count))
        bytes.append(contentsOf: value)
    }

    mutating func field(_ field: Int, _ text: String) { self.field(field, Array(text.utf8)) }

    mutating func message(_ field: Int, _ build: (inout ProtoWriter) -> Void) {
        var inner = ProtoWriter()
        build(&inner)
        self.field(field, inner.bytes)
    }

    /// A `map<string, bytes|string>` entry (key = 1, value = 2).
    mutating func mapEntry(_ field: Int, key: [UInt8], value: [UInt8]) {
        message(field) { entry in
            entry.field(1, key)
            entry.field(2, value)
        }
    }

    /// A `google.protobuf.Struct` nested `depth` levels (`{"a": {"a": … {"leaf": "x"}}}`) as the bytes of a
    /// Struct, written front to back in one pass: nested messages encoded naively cost O(depth²) copies.
    static func nestedStruct(depth: Int, leaf: [UInt8] = Array("x".utf8)) -> [UInt8] {
        // Innermost Struct: {"leaf": string_value}.
        var innermost = ProtoWriter()
        innermost.message(1) { entry in
            entry.field(1, "leaf")
            entry.message(2) { value in value.field(3, leaf) }
        }
        // Each level: Struct{ fields(1): Entry{ key(1): "a", value(2): Value{ struct_value(5): <inner> } } }.
        var sizes = [innermost.bytes.count]
        for _ in 0..<depth {
            let inner = sizes[sizes.count - 1]
            let value = 1 + varintSize(UInt64(inner)) + inner
            let entry = 3 + 1 + varintSize(UInt64(value)) + value
            sizes.append(1 + varintSize(UInt64(entry)) + entry)
        }
        var out = ProtoWriter()
        out.bytes.reserveCapacity(sizes[sizes.count - 1])
        for level in stride(from: depth, to: 0, by: -1) {
            let inner = sizes[level - 1]
            let value = 1 + varintSize(UInt64(inner)) + inner
            let entry = 3 + 1 + varintSize(UInt64(value)) + value
            out.tag(1, 2)
            out.varint(UInt64(entry))
            out.field(1, "a")
            out.tag(2, 2)
            out.varint(UInt64(value))
            out.tag(5, 2)
            out.varint(UInt64(inner))
        }
        out.bytes.append(contentsOf: innermost.bytes)
        return out.bytes
    }
}

/// An invariant of a target: a violation traps with `message`, which (unlike `precondition`'s) release builds keep,
/// so the fuzzer's report says what broke.
func invariant(
    _ condition: Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line
) {
    if !condition { fatalError(message(), file: file, line: line) }
}
