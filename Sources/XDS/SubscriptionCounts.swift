/// How many subscribers (streams, held fetches) hold each secret name — so the owner of on-demand names (files)
/// can release what nobody asks for any more instead of watching and caching it forever.
public struct SubscriptionCounts: Sendable, Equatable {
    private var counts: [String: Int] = [:]

    public init() {}

    /// One subscriber's names went from `old` to `new` (duplicates within one list count once). Returns the names
    /// that no subscriber holds any more, sorted.
    @discardableResult
    public mutating func update(from old: [String], to new: [String]) -> [String] {
        let before = Set(old)
        let after = Set(new)
        for name in after.subtracting(before) { counts[name, default: 0] += 1 }
        var released: [String] = []
        for name in before.subtracting(after) {
            guard let count = counts[name] else { continue }
            if count <= 1 {
                counts.removeValue(forKey: name)
                released.append(name)
            } else {
                counts[name] = count - 1
            }
        }
        return released.sorted()
    }

    /// The number of subscribers holding `name`.
    public func count(of name: String) -> Int { counts[name] ?? 0 }

    /// Names held by at least one subscriber.
    public var names: Dictionary<String, Int>.Keys { counts.keys }
}
