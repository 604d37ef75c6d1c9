internal import CSDSProtos

#if canImport(Glibc)
    private import Glibc
#elseif canImport(Darwin)
    private import Darwin
#endif

/// The one owner of every byte of C memory a single encode or decode touches.
///
/// protobuf-c allocates each string, byte field, sub-message and unknown field separately; Envoy's node
/// alone carries ~500 extensions. Routing all of it through a bump allocator turns those mallocs into
/// pointer bumps and makes freeing one `deinit` instead of a walk over `*__free_unpacked`. The same arena
/// holds the C structs Swift builds for packing, so nothing outlives the call that needed it.
///
/// Not thread-safe and never shared: one arena per encode/decode call.
final class CArena {
    /// The allocator handed to protobuf-c's `*__unpack`; its `allocator_data` points back to this arena.
    let allocator: UnsafeMutablePointer<ProtobufCAllocator>

    private var chunks: [UnsafeMutableRawPointer] = []
    private var cursor: UnsafeMutableRawPointer?
    private var remaining = 0
    private var nextChunkSize: Int

    /// Every block is 16-byte aligned: enough for any C struct protobuf-c allocates.
    private static let alignment = 16

    /// - Parameter initialCapacity: size of the first chunk; later chunks double up to 1 MiB.
    init(initialCapacity: Int = 4096) {
        nextChunkSize = max(initialCapacity, 256)
        allocator = .allocate(capacity: 1)
        allocator.initialize(
            to: ProtobufCAllocator(
                alloc: { data, size in
                    Unmanaged<CArena>.fromOpaque(data!).takeUnretainedValue().allocate(byteCount: size)
                },
                // Everything is released at once in deinit.
                free: { _, _ in },
                allocator_data: nil))
        allocator.pointee.allocator_data = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit {
        for chunk in chunks { free(chunk) }
        allocator.deallocate()
    }

    /// Uninitialized, 16-byte aligned memory valid until the arena dies. Traps only if malloc fails.
    func allocate(byteCount: Int) -> UnsafeMutableRawPointer {
        let size = (max(byteCount, 1) + Self.alignment - 1) & ~(Self.alignment - 1)
        if size > remaining {
            // A block larger than a quarter chunk gets a chunk of its own so the current one stays usable.
            if size > nextChunkSize / 4 {
                return newChunk(size: size)
            }
            cursor = newChunk(size: nextChunkSize)
            remaining = nextChunkSize
            nextChunkSize = min(nextChunkSize * 2, 1 << 20)
        }
        let block = cursor!
        cursor = block + size
        remaining -= size
        return block
    }

    private func newChunk(size: Int) -> UnsafeMutableRawPointer {
        guard let chunk = malloc(size) else { fatalError("out of memory allocating \(size) bytes") }
        chunks.append(chunk)
        return chunk
    }

    /// Memory for `count` values of the C struct `T`, bound to `T` and not initialized.
    func make<T>(_ type: T.Type, count: Int = 1) -> UnsafeMutablePointer<T> {
        precondition(MemoryLayout<T>.alignment <= Self.alignment)
        return allocate(byteCount: MemoryLayout<T>.stride * max(count, 1)).bindMemory(
            to: T.self, capacity: max(count, 1))
    }

    /// A NUL-terminated copy of `string`.
    func cString(_ string: String) -> UnsafeMutablePointer<CChar> {
        var string = string
        return string.withUTF8 { utf8 in
            let copy = allocate(byteCount: utf8.count + 1)
            if let base = utf8.baseAddress { copy.copyMemory(from: base, byteCount: utf8.count) }
            copy.storeBytes(of: 0, toByteOffset: utf8.count, as: UInt8.self)
            return copy.bindMemory(to: CChar.self, capacity: utf8.count + 1)
        }
    }

    /// A copy of `bytes` as a protobuf-c `bytes` field.
    func binary(_ bytes: [UInt8]) -> ProtobufCBinaryData {
        let copy = allocate(byteCount: bytes.count)
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress { copy.copyMemory(from: base, byteCount: source.count) }
        }
        return ProtobufCBinaryData(len: bytes.count, data: copy.bindMemory(to: UInt8.self, capacity: bytes.count))
    }

    /// A C array of NUL-terminated copies, as protobuf-c's `n_field` / `char **field` pair.
    func cStrings(_ strings: [String]) -> (count: Int, array: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) {
        guard !strings.isEmpty else { return (0, nil) }
        let array = make(UnsafeMutablePointer<CChar>?.self, count: strings.count)
        for (index, string) in strings.enumerated() { (array + index).initialize(to: cString(string)) }
        return (strings.count, array)
    }

    /// A C array of `bytes` fields.
    func binaries(_ values: [[UInt8]]) -> (count: Int, array: UnsafeMutablePointer<ProtobufCBinaryData>?) {
        guard !values.isEmpty else { return (0, nil) }
        let array = make(ProtobufCBinaryData.self, count: values.count)
        for (index, value) in values.enumerated() { (array + index).initialize(to: binary(value)) }
        return (values.count, array)
    }

    /// A C array of message pointers built by `build`, as protobuf-c's repeated message fields.
    func messages<Element, C>(
        _ elements: some Collection<Element>, _ build: (Element) -> UnsafeMutablePointer<C>
    ) -> (count: Int, array: UnsafeMutablePointer<UnsafeMutablePointer<C>?>?) {
        guard !elements.isEmpty else { return (0, nil) }
        let array = make(UnsafeMutablePointer<C>?.self, count: elements.count)
        for (index, element) in elements.enumerated() { (array + index).initialize(to: build(element)) }
        return (elements.count, array)
    }
}
