import FuzzTargets

/// libFuzzer's entry point (its own `main` drives it): one input through the `bundle-endpoint` target.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzTarget.bundleEndpoint.run(UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size))
    return 0
}
