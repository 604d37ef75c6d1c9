import ArgumentParser
import GRPC
import Glibc
import H2
import PKI
import SDSAgent
import Transport
import Wire

/// `sds-floor`: the RSS floor for `make bench`. Links what sds-agent links (SDSAgent and every library below it,
/// ArgumentParser, static Swift stdlib) and touches each C library once (nghttp2 session, OpenSSL key, protobuf-c
/// encode) so they are loaded and initialized, then sleeps. Its RSS is what the agent cannot go below.
struct Floor: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sds-floor", abstract: "Print 'ready', then sleep until a signal (RSS floor for make bench).")

    func run() throws {
        let loop = try EventLoop()
        let client = GRPCClientConnection()
        _ = client.session.takeOutput()
        _ = try PrivateKey.generate()
        _ = DiscoveryRequest(resourceNames: ["default"]).wireBytes()
        _ = AgentMain.processEnvironment()
        _ = "ready\n".withCString { write(1, $0, strlen($0)) }
        // Block until a signal kills us; the loop holds nothing but keeps its objects alive.
        withExtendedLifetime((loop, client)) { _ = pause() }
    }
}

Floor.main()
