// The gRPC methods of the services in Protos/, as the `:path` header values a server routes on.

/// `envoy.service.secret.v3.SecretDiscoveryService` (Protos/envoy_sds.proto).
public enum SecretDiscoveryServiceMethod: String, Sendable, CaseIterable {
    /// Bidirectional stream of `DeltaDiscoveryRequest` → `DeltaDiscoveryResponse`.
    case deltaSecrets = "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets"
    /// Bidirectional stream of `DiscoveryRequest` → `DiscoveryResponse` (state of the world).
    case streamSecrets = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
    /// Unary `DiscoveryRequest` → `DiscoveryResponse`. Envoy never calls it; other clients do.
    case fetchSecrets = "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets"

    /// The `:path` header value.
    public var path: String { rawValue }
}

/// `SpiffeWorkloadAPI` (Protos/spiffe_workload.proto). No proto package, so paths start at the service.
/// Every call must carry the metadata `workload.spiffe.io: true`.
public enum SpiffeWorkloadAPIMethod: String, Sendable, CaseIterable {
    /// Server stream of `X509SVIDResponse` for one `X509SVIDRequest`.
    case fetchX509SVID = "/SpiffeWorkloadAPI/FetchX509SVID"
    /// Server stream of `X509BundlesResponse` for one `X509BundlesRequest`.
    case fetchX509Bundles = "/SpiffeWorkloadAPI/FetchX509Bundles"
    case fetchJWTSVID = "/SpiffeWorkloadAPI/FetchJWTSVID"
    case fetchJWTBundles = "/SpiffeWorkloadAPI/FetchJWTBundles"
    case validateJWTSVID = "/SpiffeWorkloadAPI/ValidateJWTSVID"

    /// The `:path` header value.
    public var path: String { rawValue }

    /// The metadata header every Workload API call must carry.
    public static let securityHeader = (name: "workload.spiffe.io", value: "true")
}
