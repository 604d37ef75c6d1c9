public import JSONText
import PKI

/// Turns updates into text: one JSON document per update, or a human listing. Pure: the caller passes the time
/// the update was received and whether colours are wanted (only on a TTY).
public enum DumpRenderer {
    // MARK: JSON

    /// The `--json` document of `update` (its schema is the contract in Tests/Integration/test_sds_dump.py).
    public static func json(_ update: DumpUpdate) -> JSONValue {
        .object([
            ("time", .string(update.time.description)),
            ("mode", .string(update.mode.rawValue)),
            ("secrets", .array(update.reports.map { json($0, at: update.time) })),
        ])
    }

    static func json(_ report: SecretReport, at time: Timestamp) -> JSONValue {
        var members: [(String, JSONValue)] = [("name", .string(report.name))]
        switch report.kind {
        case .certificate(let keyType):
            members += [
                ("kind", .string("certificate")),
                ("version", .string(report.version)),
                ("certificates", .array(report.certificates.map { json($0, at: time) })),
                ("private_key", .object([("type", .string(keyType))])),
            ]
            switch report.chainVerdict {
            case .verified?: members.append(("chain_verified", .bool(true)))
            case .notVerified?: members.append(("chain_verified", .bool(false)))
            case nil: members.append(("chain_verified", .null))
            }
        case .validationContext:
            members += [
                ("kind", .string("validation_context")),
                ("version", .string(report.version)),
                ("certificates", .array(report.certificates.map { json($0, at: time) })),
                ("chain_verified", .null),
            ]
        case .generic(let summary):
            var jwt: JSONValue = .null
            if summary.jwtSubject != nil || summary.jwtExpiresAt != nil {
                jwt = .object([
                    ("sub", summary.jwtSubject.map(JSONValue.string) ?? .null),
                    ("aud", .array(summary.jwtAudiences.map(JSONValue.string))),
                    ("exp", summary.jwtExpiresAt.map { .string($0.description) } ?? .null),
                    ("expires_in_seconds", summary.jwtExpiresAt.map { .int($0 - time) } ?? .null),
                ])
            }
            members += [
                ("kind", .string("generic_secret")),
                ("version", .string(report.version)),
                ("length", .int(Int64(summary.length))),
                ("jwt", jwt),
            ]
        }
        return .object(members)
    }

    static func json(_ certificate: CertificateReport, at time: Timestamp) -> JSONValue {
        .object([
            ("spiffe_id", certificate.spiffeID.map(JSONValue.string) ?? .null),
            ("subject", .string(certificate.subject)),
            ("issuer", .string(certificate.issuer)),
            ("serial", .string(certificate.serial)),
            ("not_before", .string(certificate.notBefore.description)),
            ("not_after", .string(certificate.notAfter.description)),
            ("expires_in_seconds", .int(certificate.notAfter - time)),
            ("key_type", .string(certificate.keyType)),
            ("sha256", .string(certificate.sha256)),
        ])
    }

    // MARK: Human

    /// The human listing of `update`. Its first line starts with the RFC 3339 time it was received; no other
    /// line starts with a digit.
    public static func human(_ update: DumpUpdate, colors: Bool) -> String {
        let reports = update.reports
        var lines: [String] = []
        let count = reports.count == 1 ? "1 secret" : "\(reports.count) secrets"
        lines.append("\(update.time) \(update.mode.rawValue) update: \(count)")
        for report in reports {
            switch report.kind {
            case .certificate:
                lines.append("\(report.name): certificate (version \(report.version))")
            case .validationContext:
                lines.append("\(report.name): validation context (version \(report.version))")
            case .generic(let summary):
                lines.append(
                    "\(report.name): generic secret (version \(report.version)), \(summary.length) bytes (not shown)")
                if let sub = summary.jwtSubject {
                    lines.append("  JWT sub: \(sub)")
                    lines.append("  JWT aud: \(summary.jwtAudiences.joined(separator: ", "))")
                }
                if let exp = summary.jwtExpiresAt {
                    lines.append("  JWT exp: \(exp) (\(expiresText(exp - update.time)))")
                }
            }
            for (index, certificate) in report.certificates.enumerated() {
                let role: String
                switch report.kind {
                case .certificate: role = index == 0 ? "leaf" : "intermediate"
                case .validationContext: role = "CA"
                case .generic: role = "?"
                }
                lines.append("  [\(index)] \(role)")
                lines += human(certificate, at: update.time, colors: colors).map { "      " + $0 }
            }
            if case .certificate(let keyType) = report.kind {
                lines.append("  private key: \(keyType) (not shown)")
            }
            switch report.chainVerdict {
            case .verified?: lines.append("  chain: verified against the fetched bundle")
            case .notVerified(let reason)?: lines.append("  chain: NOT verified: \(reason)")
            case nil: break
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func human(_ certificate: CertificateReport, at time: Timestamp, colors: Bool) -> [String] {
        let remaining = certificate.notAfter - time
        var expiry = expiresText(remaining)
        if colors,
            let color = urgencyColor(remaining: remaining, lifetime: certificate.notAfter - certificate.notBefore)
        {
            expiry = color + expiry + "\u{1B}[0m"
        }
        return [
            "SPIFFE ID   \(certificate.spiffeID ?? "(none)")",
            "subject     \(certificate.subject.isEmpty ? "(empty)" : certificate.subject)",
            "issuer      \(certificate.issuer.isEmpty ? "(empty)" : certificate.issuer)",
            "serial      \(certificate.serial)",
            "not before  \(certificate.notBefore)",
            "not after   \(certificate.notAfter) (\(expiry))",
            "key type    \(certificate.keyType)",
            "SHA-256     \(colonHex(certificate.sha256))",
        ]
    }

    /// `expires in 23h59m`, `expires in 47m`, `expires in 12s`; `expired 5m ago` once past.
    public static func expiresText(_ seconds: Int64) -> String {
        seconds > 0 ? "expires in \(compactDuration(seconds))" : "expired \(compactDuration(-seconds)) ago"
    }

    /// Days, hours and minutes (seconds only under a minute), zero parts left out: `1d2h`, `23h59m`, `47m`, `0s`.
    public static func compactDuration(_ seconds: Int64) -> String {
        if seconds < 60 { return "\(seconds)s" }
        let days = seconds / 86_400
        let hours = seconds % 86_400 / 3600
        let minutes = seconds % 3600 / 60
        var out = ""
        if days > 0 { out += "\(days)d" }
        if hours > 0 { out += "\(hours)h" }
        if minutes > 0 { out += "\(minutes)m" }
        return out
    }

    /// Red once expired or in the last tenth of its lifetime; yellow past half of it (when SPIRE and istio would
    /// already have rotated it); nothing otherwise.
    public static func urgencyColor(remaining: Int64, lifetime: Int64) -> String? {
        if remaining <= 0 || remaining * 10 < lifetime { return "\u{1B}[31m" }
        if remaining * 2 < lifetime { return "\u{1B}[33m" }
        return nil
    }

    static func colonHex(_ hex: String) -> String {
        var out = ""
        for (index, character) in hex.uppercased().enumerated() {
            if index > 0 && index % 2 == 0 { out += ":" }
            out.append(character)
        }
        return out
    }
}
