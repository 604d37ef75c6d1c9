import Foundation
import Glibc
import Testing

@testable import Transport

private func temporaryDirectory() -> String {
    var template = Array("/tmp/sds-transport-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    return path
}

private final class Recorder: ConnectionDelegate {
    var received: [UInt8] = []
    var closed = false
    var closeError: SystemError?
    var echo = false
    func connection(_ connection: Connection, received bytes: UnsafeRawBufferPointer) {
        received.append(contentsOf: bytes)
        if echo { connection.write(Array(bytes)) }
    }
    func connectionDrained(_ connection: Connection) {}
    func connectionClosed(_ connection: Connection, error: SystemError?) {
        closed = true
        closeError = error
    }
}

@Suite struct UnixSocketAddressTests {
    @Test func acceptsPathAndUnixURI() throws {
        #expect(try UnixSocketAddress("/run/a.sock").path == "/run/a.sock")
        #expect(try UnixSocketAddress("unix:///run/a.sock").path == "/run/a.sock")
        #expect(try UnixSocketAddress("unix:rel.sock").path == "rel.sock")
    }

    @Test func rejectsOtherSchemesAndLongPaths() {
        #expect(throws: UnixSocketAddress.ParseError.unsupportedScheme("tcp://1.2.3.4:80")) {
            try UnixSocketAddress("tcp://1.2.3.4:80")
        }
        #expect(throws: UnixSocketAddress.ParseError.notAbsolute("unix://relative")) {
            try UnixSocketAddress("unix://relative")
        }
        #expect(throws: UnixSocketAddress.ParseError.self) {
            try UnixSocketAddress("/" + String(repeating: "x", count: 200))
        }
        #expect(throws: UnixSocketAddress.ParseError.empty) { try UnixSocketAddress("") }
    }
}

@Suite struct ListenerTests {
    @Test func socketFileIsCreated0600AndRemovedOnClose() throws {
        let dir = temporaryDirectory()
        let loop = try EventLoop()
        let address = try UnixSocketAddress(dir + "/s.sock")
        let listener = try Listener(unix: address, loop: loop) { Glibc.close($0) }
        var info = stat()
        #expect(stat(address.path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        listener.close()
        #expect(access(address.path, F_OK) != 0)
    }

    @Test func configuredModeIsApplied() throws {
        let dir = temporaryDirectory()
        let loop = try EventLoop()
        let address = try UnixSocketAddress(dir + "/s.sock")
        let listener = try Listener(unix: address, mode: 0o660, loop: loop) { Glibc.close($0) }
        var info = stat()
        #expect(stat(address.path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o660)
        listener.close()
    }

    @Test func staleSocketIsReplacedLiveOneIsNot() throws {
        let dir = temporaryDirectory()
        let address = try UnixSocketAddress(dir + "/s.sock")
        // A stale socket: bound, then its process "died" (fd closed without unlink).
        let stale = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        #expect(address.withSockaddr { bind(stale, $0, $1) } == 0)
        Glibc.close(stale)
        let loop = try EventLoop()
        let live = try Listener(unix: address, loop: loop) { Glibc.close($0) }
        // A second listener on a live socket must refuse, naming the path.
        #expect(throws: SystemError.self) {
            _ = try Listener(unix: address, loop: loop) { Glibc.close($0) }
        }
        #expect(access(address.path, F_OK) == 0)
        live.close()
    }

    @Test func regularFileIsNotReplaced() throws {
        let dir = temporaryDirectory()
        let path = dir + "/not-a-socket"
        #expect(FileManager.default.createFile(atPath: path, contents: Data("keep".utf8)))
        let loop = try EventLoop()
        #expect(throws: SystemError.self) {
            _ = try Listener(unix: UnixSocketAddress(path), loop: loop) { Glibc.close($0) }
        }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep")
    }
}

@Suite struct ConnectionTests {
    @Test func echoRoundTripAndPeerClose() throws {
        let dir = temporaryDirectory()
        let loop = try EventLoop()
        let address = try UnixSocketAddress(dir + "/s.sock")
        let serverSide = Recorder()
        serverSide.echo = true
        var accepted: [Connection] = []
        let listener = try Listener(unix: address, loop: loop) { fd in
            accepted.append(try! Connection(fd: fd, loop: loop, delegate: serverSide))
        }
        let clientSide = Recorder()
        let client = try Connection(fd: try connectUnixSocket(address), loop: loop, delegate: clientSide)
        let payload = (0..<300_000).map { UInt8($0 % 251) }
        client.write(payload)
        #expect(loop.run(until: { clientSide.received.count == payload.count }, timeout: 10))
        #expect(clientSide.received == payload)
        client.close()
        #expect(loop.run(until: { serverSide.closed }, timeout: 10))
        #expect(serverSide.closeError == nil)
        listener.close()
    }

    /// A listener that does not accept (its loop is not running) fills its backlog; a blocking connect would then
    /// wait for as long as it does not accept. The non-blocking one fails at once with EAGAIN (retry with backoff).
    @Test func aFullListenBacklogFailsTheConnectAtOnceWithEAGAIN() throws {
        let dir = temporaryDirectory()
        let loop = try EventLoop()
        let address = try UnixSocketAddress(dir + "/s.sock")
        let listener = try Listener(unix: address, backlog: 1, loop: loop) { fd in close(fd) }
        defer { listener.close() }
        var connected: [Int32] = []
        defer { for fd in connected { close(fd) } }
        var failure: SystemError?
        let started = EventLoop.monotonicSeconds()
        for _ in 0..<64 {
            do throws(SystemError) {
                switch try startUnixConnect(address) {
                case .connected(let fd), .inProgress(let fd): connected.append(fd)
                }
            } catch {
                failure = error
                break
            }
        }
        #expect(failure?.errno == EAGAIN, "\(String(describing: failure)) after \(connected.count) connects")
        #expect(EventLoop.monotonicSeconds() - started < 1, "nothing waited on the full backlog")
        #expect(failure?.description.contains("backlog full") == true)
    }

    /// The one listener type serves TCP the way it serves Unix sockets: a paused listener accepts nothing, and the
    /// connections that waited in the backlog meanwhile are accepted once the pause ends.
    @Test func aTCPListenerPausedOnPurposeAcceptsTheWaitingConnectionsAfterwards() throws {
        let loop = try EventLoop()
        var accepted = 0
        let listener = try Listener(tcp: TCPAddress("127.0.0.1:0"), loop: loop) { fd in
            accepted += 1
            close(fd)
        }
        defer { listener.close() }
        let address = try #require(listener.boundTCPAddress)
        #expect(address.port != 0)
        listener.pause(for: 0.2)
        #expect(listener.isPaused)
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(client) }
        let connected = address.withSockaddr { connect(client, $0, $1) }
        #expect(connected == 0)
        _ = loop.run(until: { accepted > 0 }, timeout: 0.1)
        #expect(accepted == 0)
        #expect(loop.run(until: { accepted == 1 }, timeout: 5))
        #expect(!listener.isPaused)
    }

    @Test func connectToMissingSocketFailsWithPath() throws {
        #expect(throws: SystemError.self) { _ = try connectUnixSocket(UnixSocketAddress("/nonexistent/dir/s.sock")) }
    }
}

@Suite struct EventLoopTests {
    @Test func timersFireInDeadlineOrderAndCancelledOnesDoNot() throws {
        let loop = try EventLoop()
        var fired: [String] = []
        loop.schedule(after: 0.02) { fired.append("b") }
        loop.schedule(after: 0.01) { fired.append("a") }
        let cancelled = loop.schedule(after: 0.005) { fired.append("never") }
        cancelled.cancel()
        loop.schedule(after: 0.03) { fired.append("c") }
        #expect(loop.run(until: { fired.count == 3 }, timeout: 5))
        #expect(fired == ["a", "b", "c"])
    }

    @Test func signalsAreDeliveredOnTheLoop() throws {
        let loop = try EventLoop()
        var got = false
        try loop.onSignal(SIGUSR2) { got = true }
        // Directed at this thread: other test threads do not block SIGUSR2, a process-wide kill could hit them.
        pthread_kill(pthread_self(), SIGUSR2)
        #expect(loop.run(until: { got }, timeout: 5))
    }
}

@Suite struct FileWatcherTests {
    @Test func reportsAtomicReplaceOfAWatchedFile() throws {
        let dir = temporaryDirectory()
        let target = dir + "/cert.pem"
        #expect(FileManager.default.createFile(atPath: target, contents: Data("one".utf8)))
        let loop = try EventLoop()
        var seen: Set<String> = []
        let watcher = try FileWatcher(loop: loop) { seen.formUnion($0) }
        try watcher.watch(file: target)
        // Replace by rename, as Kubernetes and editors do.
        #expect(FileManager.default.createFile(atPath: dir + "/.tmp", contents: Data("two".utf8)))
        #expect(rename(dir + "/.tmp", target) == 0)
        #expect(loop.run(until: { seen.contains(target) }, timeout: 5))
    }
}

@Suite struct EventLoopTimerTests {
    @Test func cancelledTimersDoNotAccumulate() throws {
        let loop = try EventLoop()
        let live = loop.schedule(after: 3600) {}
        for _ in 0..<10_000 {
            loop.schedule(after: 3600) {}.cancel()
        }
        #expect(loop.timerSlotCount <= 2 * EventLoop.minimumTimerSweepThreshold)
        #expect(live.isPending)
        live.cancel()
    }
}
