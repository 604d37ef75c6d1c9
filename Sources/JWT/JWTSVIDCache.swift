public import PKI

/// Minted JWT-SVIDs per audience set, so a workload that asks every second gets the same token until half its
/// lifetime has passed (then a new one: a peer never receives a token about to expire). Pure: time and the signing
/// key are parameters.
public struct JWTSVIDCache: Sendable {
    /// At most this many audience sets are cached; the entry expiring first makes room. A workload uses a handful
    /// of audiences; the bound keeps one that asks for ever-new audiences from growing our memory.
    public static let maxEntries = 256

    struct Entry: Sendable {
        var token: String
        var kid: String
        var issuedAt: Timestamp
        var expiresAt: Timestamp
    }

    private var entries: [[String]: Entry] = [:]

    public init() {}

    public var count: Int { entries.count }

    /// The canonical audience set: sorted, without duplicates (`aud` order carries no meaning).
    public static func key(_ audiences: [String]) -> [String] { Array(Set(audiences)).sorted() }

    /// A cached token for `audiences` that is still in its first half-life and signed by `signer`, or a new one
    /// from `mint(issuedAt, expiresAt)` (`ttl` seconds, capped by the key's own expiry).
    public mutating func token(
        for audiences: [String], now: Timestamp, ttl: Int64, signer: JWTSigningKey,
        mint: (_ audiences: [String], _ issuedAt: Timestamp, _ expiresAt: Timestamp) throws -> String
    ) rethrows -> (token: String, issuedAt: Timestamp, expiresAt: Timestamp, minted: Bool) {
        let key = Self.key(audiences)
        if let entry = entries[key], entry.kid == signer.kid, now < Self.renewAt(entry) {
            return (entry.token, entry.issuedAt, entry.expiresAt, false)
        }
        let expiresAt = min(now + ttl, signer.notAfter)
        let token = try mint(key, now, expiresAt)
        if entries[key] == nil, entries.count >= Self.maxEntries {
            let oldest = entries.min { $0.value.expiresAt < $1.value.expiresAt }!.key
            entries.removeValue(forKey: oldest)
        }
        entries[key] = Entry(token: token, kid: signer.kid, issuedAt: now, expiresAt: expiresAt)
        return (token, now, expiresAt, true)
    }

    /// Half-life: when a cached token is replaced.
    static func renewAt(_ entry: Entry) -> Timestamp { renewAt(issuedAt: entry.issuedAt, expiresAt: entry.expiresAt) }

    /// Half-life of a token issued at `issuedAt` expiring at `expiresAt`.
    public static func renewAt(issuedAt: Timestamp, expiresAt: Timestamp) -> Timestamp {
        issuedAt + (expiresAt - issuedAt) / 2
    }
}
