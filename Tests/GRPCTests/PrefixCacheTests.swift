import Testing

@testable import GRPC

/// The per-connection prefix cache hands out the same bytes as a fresh prefix, whatever the order of lengths.
@Test func prefixCacheAgreesWithAFreshPrefix() {
    var cache = GRPCMessageFraming.Cache()
    for length in [1_300, 1_300, 5, 1_300, 0, 0, 70_000, 1_300, 16_777_216] {
        #expect(cache.prefix(length: length) == GRPCMessageFraming.prefix(length: length), "\(length)")
    }
}
