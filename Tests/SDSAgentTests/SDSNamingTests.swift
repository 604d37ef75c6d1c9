import Issuance
import PKI
import SPIFFE
import TestSupport
import Testing
import Wire

@testable import SDSAgent

/// SPIRE's SDS naming knobs (`--default-svid-name`, `--default-bundle-name`, `--default-all-bundles-name`): the same
/// names and meaning, and Istio's federation setup (`null` / `ROOTCA`).
@Suite struct SDSNamingTests {
    private let ownID = "spiffe://example.org/ns/default/sa/web"

    @Test func theDefaultsAreSpiresAndIstios() throws {
        let config = try resolveConfiguration()
        #expect(config.naming == SDSNaming(svid: "default", bundle: "ROOTCA", allBundles: "ALL"))
    }

    @Test func flagsAndEnvironmentSetTheNames() throws {
        let istio = try resolveConfiguration {
            $0.defaultBundleName = "null"
            $0.defaultAllBundlesName = "ROOTCA"
        }
        #expect(istio.naming == SDSNaming(svid: "default", bundle: "null", allBundles: "ROOTCA"))
        let fromEnvironment = try resolveConfiguration(env: [
            "SDS_DEFAULT_SVID_NAME": "svid", "SDS_DEFAULT_BUNDLE_NAME": "bundle", "SDS_DEFAULT_ALL_BUNDLES_NAME": "all",
        ])
        #expect(fromEnvironment.naming == SDSNaming(svid: "svid", bundle: "bundle", allBundles: "all"))
    }

    @Test func namesThatCollideOrMeanSomethingElseAreRefusedNamingTheFlag() {
        #expect(throws: ConfigurationError.self) { try resolveConfiguration { $0.defaultAllBundlesName = "ROOTCA" } }
        do {
            _ = try resolveConfiguration { $0.defaultAllBundlesName = "ROOTCA" }
        } catch {
            #expect(error.description.contains("--default-all-bundles-name"))
            #expect(error.description.contains("--default-bundle-name"))
        }
        for bad in ["", "has space", "spiffe://example.org", "file-root:/etc/x", "jwt-svid:aud"] {
            #expect(throws: ConfigurationError.self, "\(bad)") { try resolveConfiguration { $0.defaultSVIDName = bad } }
        }
    }

    @Test func classificationFollowsTheNames() {
        let istio = SDSNaming(svid: "default", bundle: "null", allBundles: "ROOTCA")
        func classify(_ name: String) -> SecretName {
            SecretName(name, ownID: ownID, ownTrustDomain: "example.org", naming: istio)
        }
        #expect(classify("ROOTCA") == .allBundles)
        #expect(classify("null") == .ownBundle)
        #expect(classify("ALL") == .unknown)
        #expect(classify("default") == .workloadCertificate)
        #expect(classify(ownID) == .workloadCertificate)
        #expect(classify("spiffe://example.org") == .ownBundle)
        #expect(classify("spiffe://other.org") == .federatedBundle(trustDomain: "other.org"))
    }

    /// With Istio's federation names, ROOTCA is Envoy's SPIFFE validator config holding every trust domain, each
    /// bound to its own domain — not one concatenated CA list.
    @Test func rootcaCarriesEveryTrustDomainEachBoundToItsOwn() throws {
        let ca = try TestCA(trustDomain: "example.org")
        let other = try TestCA(trustDomain: "other.org")
        let (chain, key) = try ca.makeLeaf(TestCA.LeafOptions(spiffeID: ownID))
        let svid = try X509SVID(chain: chain, privateKey: key, now: ca.now)
        let update = IdentityUpdate(svid: svid, bundles: [ca.bundle, other.bundle])
        let istio = SDSNaming(svid: "default", bundle: "null", allBundles: "ROOTCA")
        let secrets = try IdentitySecrets.secrets(for: update, naming: istio)
        let byName = Dictionary(secrets.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        #expect(byName["ALL"] == nil)
        #expect(byName["default"] != nil)
        guard case .validationContext(let rootca) = byName["ROOTCA"]?.kind,
            let validator = rootca.customValidatorConfig
        else {
            Issue.record("ROOTCA is not a validation context with a custom validator")
            return
        }
        #expect(validator.name == "envoy.tls.cert_validator.spiffe")
        #expect(rootca.trustedCA == nil, "no concatenated CA list")
        let config = try SPIFFECertValidatorConfig(wireBytes: validator.typedConfig.value)
        #expect(config.trustDomains.map(\.name) == ["example.org", "other.org"])
        #expect(config.trustDomains[1].trustBundle == .inlineBytes(Array(other.bundle.pem.utf8)))
        guard case .validationContext(let own) = byName["null"]?.kind else {
            Issue.record("the own bundle is not served under the bundle name")
            return
        }
        #expect(own.trustedCA == .inlineBytes(Array(ca.bundle.pem.utf8)))
    }
}

@Suite struct FederationConfigurationTests {
    @Test func federatedDomainsComeFromTheFlagOrTheVariable() throws {
        let flags = try resolveConfiguration {
            $0.trustDomain = "a.org"
            $0.federateWith = ["b.org=/etc/federation/b.json", "spiffe://c.org=/etc/federation/c.pem"]
        }
        #expect(flags.federation.map(\.description) == ["b.org=/etc/federation/b.json", "c.org=/etc/federation/c.pem"])
        let variable = try resolveConfiguration(env: [
            "TRUST_DOMAIN": "a.org", "SDS_FEDERATE_WITH": "b.org=/etc/b.json,c.org=/etc/c.json",
        ])
        #expect(variable.federation.map(\.trustDomain.name) == ["b.org", "c.org"])
    }

    @Test(arguments: [
        "a.org=/etc/a.json", "b.org=/etc/b.json,b.org=/etc/b2.json", "b.org=etc/b.json", "b.org",
        "b.org=http://b.org/bundle",
    ])
    func badSourcesAreRefusedNamingTheFlag(entries: String) {
        do {
            _ = try resolveConfiguration {
                $0.trustDomain = "a.org"
                $0.federateWith = entries.split(separator: ",").map(String.init)
            }
            Issue.record("\(entries) was accepted")
        } catch {
            #expect(error.description.contains("--federate-with"))
        }
    }
}
