/// An HTTP/1.1 response the status listener sends whole, then closes (`Connection: close`): one request per
/// connection keeps a connection's state to one parser and one write, and probes and scrapers reconnect cheaply.
public struct HTTPResponse: Sendable, Equatable {
    public var status: Int
    public var contentType: String
    public var body: String
    /// Extra header lines (`Allow: GET, HEAD` on a 405).
    public var headers: [(String, String)]
    /// HEAD: the headers of the GET answer, no body.
    public var omitBody = false

    public init(
        status: Int, contentType: String = "text/plain; charset=utf-8", body: String,
        headers: [(String, String)] = []
    ) {
        self.status = status
        self.contentType = contentType
        self.body = body
        self.headers = headers
    }

    public static func == (lhs: HTTPResponse, rhs: HTTPResponse) -> Bool {
        lhs.status == rhs.status && lhs.contentType == rhs.contentType && lhs.body == rhs.body
            && lhs.omitBody == rhs.omitBody
            && lhs.headers.map { "\($0.0): \($0.1)" }
                == rhs.headers.map {
                    "\($0.0): \($0.1)"
                }
    }

    /// The bytes on the wire.
    public var bytes: [UInt8] {
        let body = Array(self.body.utf8)
        var head = "HTTP/1.1 \(status) \(Self.reason(status))\r\n"
        head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        return Array(head.utf8) + (omitBody ? [] : body)
    }

    public static func reason(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 400: return "Bad Request"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 413: return "Content Too Large"
        case 431: return "Request Header Fields Too Large"
        case 503: return "Service Unavailable"
        case 505: return "HTTP Version Not Supported"
        default: return "Status"
        }
    }
}
