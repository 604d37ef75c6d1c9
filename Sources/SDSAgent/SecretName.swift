/// Which SDS names mean the workload's SVID, the own bundle and all bundles: SPIRE's `sds` knobs
/// (`default_svid_name`, `default_bundle_name`, `default_all_bundles_name`), with SPIRE's defaults, which are also
/// Istio's names for the first two. Istio's documented setup for federation is `bundle: "null"`, `allBundles:
/// "ROOTCA"`: istio-proxy validates peers with `ROOTCA` only, so `ROOTCA` must carry every trust domain.
public struct SDSNaming: Sendable, Equatable {
    public var svid: String
    public var bundle: String
    public var allBundles: String

    public init(svid: String = "default", bundle: String = "ROOTCA", allBundles: String = "ALL") {
        self.svid = svid
        self.bundle = bundle
        self.allBundles = allBundles
    }

    /// SPIRE's defaults (and Istio's names): `default`, `ROOTCA`, `ALL`.
    public static let spire = SDSNaming()
}

/// What a requested secret name means. Envoy asks by name; Istio and SPIRE name the same things differently, and
/// istio-proxy also asks for file-backed names — all are answered by one agent.
public enum SecretName: Equatable, Hashable, Sendable {
    /// `default` (Istio) or the workload's own SPIFFE ID (SPIRE): the workload's certificate and key.
    case workloadCertificate
    /// `ROOTCA` (Istio) or `spiffe://<own trust domain>` (SPIRE): the own trust domain's bundle.
    case ownBundle
    /// `spiffe://<other trust domain>`: a federated bundle, when the issuer has one.
    case federatedBundle(trustDomain: String)
    /// `ALL`: every bundle, as Envoy's SPIFFE certificate validator config.
    case allBundles
    /// `file-cert:<cert>~<key>` (Istio): a certificate and key read from files.
    case fileCertificate(certificatePath: String, keyPath: String)
    /// `file-root:<ca>` (Istio): a CA bundle read from a file; `file-root:system` is the OS trust store.
    case fileRoot(path: String)
    /// `jwt-svid:<audience>`: a JWT-SVID for one audience as a `generic_secret` (Envoy's credential_injector). The
    /// audience is everything after the prefix, verbatim: audiences contain `:`, `/` and `,`, so nothing in it is a
    /// separator, and one name is one audience.
    case jwtSVID(audience: String)
    /// Anything else — another workload's SPIFFE ID, an unknown scheme. Never served.
    case unknown

    public static let jwtSVIDPrefix = "jwt-svid:"

    public static let istioWorkload = "default"
    public static let istioRoot = "ROOTCA"
    public static let allBundlesName = "ALL"
    /// Debian's trust store, what `file-root:system` resolves to.
    public static let systemTrustStore = "/etc/ssl/certs/ca-certificates.crt"

    /// What a metric may say about `name`: the name itself when the operator's configuration fixes it (`default`,
    /// `ROOTCA`, `ALL`, the own SPIFFE ID and trust domain: five values at most), else only its kind. A client
    /// chooses every other name, and a label per client-chosen name would grow `/metrics` without bound.
    public static func metricLabel(
        for name: String, ownID: String, ownTrustDomain: String, naming: SDSNaming = .spire
    ) -> String {
        switch SecretName(name, ownID: ownID, ownTrustDomain: ownTrustDomain, naming: naming) {
        case .workloadCertificate, .ownBundle, .allBundles: name
        case .federatedBundle: "federated"
        case .fileCertificate: "file-cert"
        case .fileRoot: "file-root"
        case .jwtSVID: "jwt-svid"
        case .unknown: "other"
        }
    }

    /// Classifies `name` for a workload `ownID` in trust domain `ownTrustDomain` (both without trailing slash), with
    /// `naming`'s names for the SVID and the bundles. The all-bundles name is matched before the bundle name, so
    /// Istio's federation setup (`ROOTCA` as all bundles) needs no other change.
    public init(_ name: String, ownID: String, ownTrustDomain: String, naming: SDSNaming = .spire) {
        if name == naming.svid || name == ownID {
            self = .workloadCertificate
            return
        }
        if name == naming.allBundles {
            self = .allBundles
            return
        }
        if name == naming.bundle || name == "spiffe://" + ownTrustDomain {
            self = .ownBundle
            return
        }
        switch name {
        default:
            if name.hasPrefix("file-cert:") {
                let paths = name.dropFirst("file-cert:".count).split(separator: "~", omittingEmptySubsequences: false)
                if paths.count == 2, !paths[0].isEmpty, !paths[1].isEmpty {
                    self = .fileCertificate(certificatePath: String(paths[0]), keyPath: String(paths[1]))
                } else {
                    self = .unknown
                }
            } else if name.hasPrefix("file-root:") {
                let path = String(name.dropFirst("file-root:".count))
                if path == "system" {
                    self = .fileRoot(path: Self.systemTrustStore)
                } else {
                    self = path.isEmpty ? .unknown : .fileRoot(path: path)
                }
            } else if name.hasPrefix(Self.jwtSVIDPrefix) {
                let audience = String(name.dropFirst(Self.jwtSVIDPrefix.count))
                self = audience.isEmpty ? .unknown : .jwtSVID(audience: audience)
            } else if name.hasPrefix("spiffe://") {
                let rest = name.dropFirst("spiffe://".count)
                // A bare trust domain names a bundle; a path names a workload — not ours, so never served.
                self = rest.isEmpty || rest.contains("/") ? .unknown : .federatedBundle(trustDomain: String(rest))
            } else {
                self = .unknown
            }
        }
    }
}
