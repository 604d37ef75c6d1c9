import Foundation
import Testing
import Wire

/// Runs `Tests/Interop/xds_peer.py` with the venv's Python (`$SDS_PYTHON`, set by the Makefile): the
/// reference protobuf runtime on the other side of every interop test.
enum PythonPeer {
    struct Failure: Error, Sendable, CustomStringConvertible {
        var description: String
    }

    /// One message the peer encoded: its protobuf type, bytes, and (for requests) the node's own bytes.
    struct EncodedCase: Sendable {
        var type: String
        var bytes: [UInt8]
        var nodeBytes: [UInt8]?
    }

    static let script = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Interop/xds_peer.py").path

    static func run(_ arguments: [String], stdin: String = "") throws(Failure) -> Data {
        guard let python = ProcessInfo.processInfo.environment["SDS_PYTHON"], !python.isEmpty else {
            throw Failure(
                description: "SDS_PYTHON is not set: run `make venv` and "
                    + "`SDS_PYTHON=$PWD/.venv/bin/python swift test --filter WireTests` (or `make test`)")
        }
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw Failure(description: "SDS_PYTHON=\(python) is not an executable; run `make venv`")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [script] + arguments
        let input = Pipe()
        let output = Pipe()
        let errors = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        do { try process.run() } catch { throw Failure(description: "cannot start \(python): \(error)") }
        // Feed stdin from another thread while this one drains stdout, so neither pipe can fill up.
        let writer = Thread {
            input.fileHandleForWriting.write(Data(stdin.utf8))
            try? input.fileHandleForWriting.close()
        }
        writer.start()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        let errorText = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Failure(description: "xds_peer.py \(arguments.joined(separator: " ")) failed: \(errorText)")
        }
        return data
    }

    static func json(_ arguments: [String], stdin: String = "") throws -> [String: Any] {
        let data = try run(arguments, stdin: stdin)
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw Failure(description: "xds_peer.py printed no JSON object: \(String(decoding: data, as: UTF8.self))")
        }
        return object
    }

    /// Every case the peer encodes, fetched once for the whole test run.
    static let cases: Result<[String: EncodedCase], Failure> = Result { () throws(Failure) in
        let data = try run(["encode-all"])
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: [String: String]] else {
            throw Failure(description: "encode-all printed no JSON object")
        }
        var cases: [String: EncodedCase] = [:]
        for (name, entry) in object {
            cases[name] = EncodedCase(
                type: entry["type"] ?? "", bytes: try bytes(hex: entry["hex"] ?? ""),
                nodeBytes: try entry["node_hex"].map { (hex) throws(Failure) in try bytes(hex: hex) })
        }
        return cases
    }

    static func encoded(_ name: String) throws -> EncodedCase {
        guard let found = try cases.get()[name] else { throw Failure(description: "no case \(name)") }
        return found
    }

    /// Python's decoding of `message`, as `json_format.MessageToJson` (proto field names, bytes in base64).
    static func decode<M: WireMessage>(_ message: M) throws -> [String: Any] {
        try json(["decode", M.protoName], stdin: hex(message.wireBytes()))
    }

    static func bytes(hex: String) throws(Failure) -> [UInt8] {
        let digits = Array(hex.utf8)
        guard digits.count % 2 == 0 else { throw Failure(description: "odd-length hex") }
        func nibble(_ c: UInt8) throws(Failure) -> UInt8 {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            default: throw Failure(description: "bad hex digit")
            }
        }
        var result: [UInt8] = []
        result.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            result.append(try nibble(digits[index]) << 4 | nibble(digits[index + 1]))
            index += 2
        }
        return result
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// The peer's deterministic payloads: byte i = (seed + i * 7) % 256 (see `pattern` in xds_peer.py).
func pattern(_ seed: Int, _ length: Int) -> [UInt8] {
    (0..<length).map { UInt8((seed + $0 * 7) % 256) }
}

/// Base64 from JSON (protobuf's JSON mapping of `bytes`) back to bytes.
func base64(_ value: Any?) -> [UInt8]? {
    guard let string = value as? String, let data = Data(base64Encoded: string) else { return nil }
    return Array(data)
}
