import FuzzTargets
import Glibc

/// libFuzzer's entry point (its own `main` drives it): one input through the `file-names` target.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzTarget.fileNames.run(UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size))
    return 0
}

/// Called by libFuzzer before it parses its flags: puts `-detect_leaks=0` first (a flag given on the command line
/// still wins). The agent under test runs on a thread of its own for the whole process, so the memory an input
/// makes it allocate is freed while later inputs run, and libFuzzer's per-input malloc/free balance cannot tell a
/// leak; LeakSanitizer also misses pointers Swift keeps in multi-payload enums (spare bits) and would report the
/// agent's live objects. Leaks on the request path are agent-ops' job (every object there lives on this thread).
@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>
) -> CInt {
    let count = Int(argc.pointee)
    let arguments = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: count + 2)
    arguments[0] = argv.pointee[0]
    arguments[1] = strdup("-detect_leaks=0")
    for index in 1..<max(count, 1) { arguments[index + 1] = argv.pointee[index] }
    arguments[count + 1] = nil
    argv.pointee = arguments
    argc.pointee = CInt(count + 1)
    return 0
}
