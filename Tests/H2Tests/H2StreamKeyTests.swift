import Testing

@testable import H2

/// The per-stream tables' key: a dictionary keyed by it finds what was stored, and its hash spreads the IDs a peer
/// opens (odd, increasing) over a table's buckets, differently for each seed.
@Suite struct H2StreamKeyTests {
    @Test func aTableFindsEveryStreamAndOnlyThose() {
        var table: [H2StreamKey: Int] = [:]
        for id in stride(from: H2StreamID(1), through: 19_999, by: 2) { table[H2StreamKey(id)] = Int(id) }
        #expect(table.count == 10_000)
        for id in stride(from: H2StreamID(1), through: 19_999, by: 2) { #expect(table[H2StreamKey(id)] == Int(id)) }
        #expect(table[H2StreamKey(2)] == nil)
        #expect(table[H2StreamKey(21_001)] == nil)
        #expect(table[H2StreamKey(.max)] == nil)
        table.removeValue(forKey: H2StreamKey(7))
        #expect(table[H2StreamKey(7)] == nil && table[H2StreamKey(9)] == 9)
    }

    /// A table of 16,384 buckets holding 10,000 client stream IDs: a hash that kept the IDs' pattern (every one odd)
    /// would put them all in odd buckets; a good mix makes half of them even and fills about 1 - e^(-10000/16384)
    /// of the buckets, 46 %. Every seed gives other hashes.
    @Test(arguments: [0, 1, 0x5eed_1234_abcd_0042, -1]) func theHashSpreadsOddIDsOverBuckets(seed: Int) {
        let mask = (1 << 14) - 1
        var buckets = Set<Int>()
        var differsFromOtherSeed = 0
        var even = 0
        for id in stride(from: H2StreamID(1), through: 19_999, by: 2) {
            let key = H2StreamKey(id)
            let hash = key._rawHashValue(seed: seed)
            #expect(hash == H2StreamKey(id)._rawHashValue(seed: seed))
            buckets.insert(hash & mask)
            if hash & 1 == 0 { even += 1 }
            if hash != key._rawHashValue(seed: seed &+ 1) { differsFromOtherSeed += 1 }
        }
        #expect(buckets.count > 7_000, "10,000 IDs fell into \(buckets.count) of 16,384 buckets")
        #expect((4_500...5_500).contains(even), "\(even) of 10,000 hashes even")
        #expect(differsFromOtherSeed == 10_000)
    }
}
