import Testing
import XDS

@Suite struct SubscriptionCountsTests {
    @Test func aNameIsReleasedWhenItsLastSubscriberLetsGo() {
        var counts = SubscriptionCounts()
        #expect(counts.update(from: [], to: ["a", "b"]).isEmpty)
        #expect(counts.update(from: [], to: ["b"]).isEmpty)
        #expect(counts.count(of: "b") == 2)
        #expect(counts.update(from: ["a", "b"], to: ["b"]) == ["a"])
        #expect(counts.update(from: ["b"], to: []).isEmpty)
        #expect(counts.update(from: ["b"], to: []) == ["b"])
        #expect(counts.names.isEmpty)
    }

    @Test func duplicatesInOneListCountOnce() {
        var counts = SubscriptionCounts()
        counts.update(from: [], to: ["a", "a"])
        #expect(counts.count(of: "a") == 1)
        #expect(counts.update(from: ["a", "a"], to: []) == ["a"])
    }

    @Test func releasingWhatWasNeverHeldReleasesNothing() {
        var counts = SubscriptionCounts()
        #expect(counts.update(from: ["ghost"], to: []).isEmpty)
    }
}
