internal import CLinux
import Glibc

/// Who is on the other end of a Unix socket, as the kernel recorded it at `connect(2)` (`SO_PEERCRED`): it cannot be
/// forged by the peer, unlike anything it sends.
public struct PeerCredentials: Equatable, Sendable, CustomStringConvertible {
    public let pid: Int32
    public let uid: UInt32
    public let gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    /// The credentials of the peer connected to `fd`.
    public init(socket fd: Int32) throws(SystemError) {
        var raw = sds_peer_credentials()
        guard sds_peer_credentials(fd, &raw) == 0 else { throw SystemError.last("getsockopt(SO_PEERCRED)") }
        self.init(pid: raw.pid, uid: raw.uid, gid: raw.gid)
    }

    /// `pid=… uid=… gid=…`, the form logs use.
    public var description: String { "pid=\(pid) uid=\(uid) gid=\(gid)" }
}
