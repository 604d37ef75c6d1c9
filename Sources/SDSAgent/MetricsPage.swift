import Issuance
import Servers

/// The `/metrics` page of the agent: a pure rendering of what the agent holds at scrape time (gauges read from
/// their owners, counters from `AgentMetrics`). Every label value is bounded: configured names, kinds of names,
/// trust domains and serials of what is served.
struct MetricsPage {
    let issuer: String
    /// `--default-svid-name`: the expiry gauge's name for the SVID.
    let svidName: String
    let current: IdentityUpdate?
    let fileCertificateExpiry: [String: Int64]
    let metrics: AgentMetrics
    let issuerUp: Bool
    let serving: Bool
    let connections: Int
    let calls: (sotw: Int, delta: Int, fetch: Int)

    /// The exposition of this state.
    var text: String {
        var out = MetricsExposition()
        out.family("sds_agent_build_info", .gauge, "Build of this sds-agent (always 1).")
        out.sample(
            "sds_agent_build_info", ["version": AgentCommandLine.version, "issuer": issuer],
            Int64(1))
        out.family(
            "sds_agent_certificate_expiry_timestamp_seconds", .gauge,
            "Expiry (notAfter) of each certificate served, by secret name, in seconds since the epoch.")
        if let current {
            let notAfter = current.svid.notAfter.secondsSinceEpoch
            for name in [svidName, current.svid.spiffeID.uri] {
                out.sample("sds_agent_certificate_expiry_timestamp_seconds", ["secret": name], notAfter)
            }
        }
        for (name, notAfter) in fileCertificateExpiry.sorted(by: { $0.key < $1.key }) {
            out.sample("sds_agent_certificate_expiry_timestamp_seconds", ["secret": name], notAfter)
        }
        out.family(
            "sds_agent_root_expiry_timestamp_seconds", .gauge,
            "Expiry (notAfter) of each trust bundle root, by trust domain and serial, in seconds since the epoch.")
        for bundle in current?.bundles ?? [] {
            for root in bundle.certificates {
                out.sample(
                    "sds_agent_root_expiry_timestamp_seconds",
                    ["trust_domain": bundle.trustDomain.name, "serial": root.serialHex],
                    root.notAfter.secondsSinceEpoch)
            }
        }
        out.family(
            "sds_agent_last_rotation_timestamp_seconds", .gauge,
            "When the last rotation wave published new secrets, in seconds since the epoch.")
        if let last = metrics.lastRotation { out.sample("sds_agent_last_rotation_timestamp_seconds", last) }
        out.family("sds_agent_rotations_total", .counter, "Rotation waves that published new secrets, by reason.")
        for reason in AgentMetrics.RotationReason.allCases {
            out.sample("sds_agent_rotations_total", ["reason": reason.rawValue], metrics.rotations[reason] ?? 0)
        }
        out.family("sds_agent_issuance_failures_total", .counter, "Failed issuances, by issuer and reason.")
        for (key, count) in metrics.issuanceFailures.sorted(by: { $0.key < $1.key }) {
            let parts = key.split(separator: "\u{0}", maxSplits: 1).map(String.init)
            out.sample("sds_agent_issuance_failures_total", ["issuer": parts[0], "reason": parts.last!], count)
        }
        out.family("sds_agent_issuer_up", .gauge, "1 while the issuer delivers (last attempt succeeded), else 0.")
        out.sample("sds_agent_issuer_up", Int64(issuerUp ? 1 : 0))
        out.family("sds_agent_serving", .gauge, "1 while a valid SVID is held (gRPC health SERVING, /ready 200).")
        out.sample("sds_agent_serving", Int64(serving ? 1 : 0))
        out.family("sds_agent_connections", .gauge, "Open connections on the SDS socket.")
        out.sample("sds_agent_connections", Int64(connections))
        out.family("sds_agent_streams", .gauge, "Open SDS calls, by API (fetch: FetchSecrets held for issuance).")
        out.sample("sds_agent_streams", ["api": "sotw"], Int64(calls.sotw))
        out.sample("sds_agent_streams", ["api": "delta"], Int64(calls.delta))
        out.sample("sds_agent_streams", ["api": "fetch"], Int64(calls.fetch))
        out.family("sds_agent_pushes_total", .counter, "SDS responses queued to streams.")
        out.sample("sds_agent_pushes_total", metrics.pushes)
        out.family(
            "sds_agent_nacks_total", .counter,
            "NACKs from Envoy, by secret: a configured name, else the kind of name (file-cert, jwt-svid, other, ...).")
        for (name, count) in metrics.nacks.sorted(by: { $0.key < $1.key }) {
            out.sample("sds_agent_nacks_total", ["secret": name], count)
        }
        out.family(
            "sds_agent_refusals_total", .counter,
            "Refused peers (peer), peers cut off at a bound (limits), requested names never served (names).")
        for reason in AgentMetrics.RefusalReason.allCases {
            out.sample("sds_agent_refusals_total", ["reason": reason.rawValue], metrics.refusals[reason] ?? 0)
        }
        return out.page
    }
}
