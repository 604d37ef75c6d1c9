import Logging

/// Client-chosen text in log lines, bounded: a request of a million bytes of names must cost a line of a few
/// hundred bytes, not a copy of the request. Lists become a count, the first few items and how many more; each
/// item and each string is cut at a byte budget (on a UTF-8 boundary) with `…` marking the cut.
public enum LogSummary {
    /// Why 5 and 128: a bootstrap names a handful of secrets, each well under 128 bytes (a SPIFFE ID, a file
    /// path); enough to recognise them, little enough that a hostile list costs ~1 KB a line.
    static let maxItems = 5
    static let maxItemBytes = 128
    /// Free text from a peer (a node ID, an error detail): one budget for the whole value.
    public static let maxTextBytes = 256

    /// `3 [default, ROOTCA, spiffe://…]`; past `maxItems`, `… +N more`.
    public static func names(_ names: some Collection<String>) -> String {
        var shown = names.prefix(maxItems).map { text($0, maxBytes: maxItemBytes) }
        if names.count > maxItems { shown.append("… +\(names.count - maxItems) more") }
        return "\(names.count) [\(shown.joined(separator: ", "))]"
    }

    /// `value` cut to at most `maxBytes` bytes of UTF-8, `…` appended when cut.
    public static func text(_ value: String, maxBytes: Int = maxTextBytes) -> String {
        guard value.utf8.count > maxBytes else { return value }
        var end = value.utf8.index(value.utf8.startIndex, offsetBy: maxBytes)
        // Back off to a scalar boundary, so the cut never splits a character's bytes.
        while end > value.utf8.startIndex, !value.unicodeScalars.indices.contains(end) {
            end = value.utf8.index(before: end)
        }
        return String(value[..<end]) + "…"
    }
}

/// Warnings a client can cause again and again (a NACK, a call without the security header, a malformed request)
/// are logged at most once per kind and interval, each line saying how many were not logged since the last one:
/// 2,000 bad calls cost one line a minute, not 2,000. Kinds are fixed words, never client text.
public struct WarningLimiter {
    private var log = RefusalLog()
    private let logger: Logger
    private let now: () -> Double

    public init(logger: Logger, now: @escaping () -> Double) {
        self.logger = logger
        self.now = now
    }

    public mutating func warn(kind: String, _ message: Logger.Message, metadata: Logger.Metadata) {
        guard let entry = log.record(kind, now: now()) else { return }
        var metadata = metadata
        if entry.suppressed > 0 { metadata["suppressed"] = "\(entry.suppressed)" }
        logger.warning(message, metadata: metadata)
    }
}
