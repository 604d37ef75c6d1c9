private import COpenSSL

/// A memory BIO owned by Swift: used to move PEM text and names in and out of OpenSSL.
final class MemoryBIO {
    let bio: OpaquePointer

    /// An empty, writable memory BIO.
    init() throws {
        guard let bio = BIO_new(BIO_s_mem()) else { throw PKIError.openSSL("BIO_new") }
        self.bio = bio
    }

    /// A memory BIO holding a copy of `bytes`, ready to be read.
    init(bytes: [UInt8]) throws {
        guard let bio = BIO_new(BIO_s_mem()) else { throw PKIError.openSSL("BIO_new") }
        self.bio = bio
        // Once `self.bio` is set, `deinit` owns the BIO: a failed write throws and lets deinit free it (freeing it
        // here too was a double free). A length past Int32 is refused before the conversion could trap.
        guard bytes.count <= Int(Int32.max) else { throw PKIError.openSSL("BIO_write: input too large") }
        if !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { BIO_write(bio, $0.baseAddress, Int32($0.count)) }
            guard written == Int32(bytes.count) else { throw PKIError.openSSL("BIO_write") }
        }
    }

    deinit { BIO_free(bio) }

    /// Everything written so far.
    var bytes: [UInt8] {
        var data: UnsafeMutablePointer<CChar>? = nil
        let length = sds_BIO_get_mem_data(bio, &data)
        guard length > 0, let data else { return [] }
        return data.withMemoryRebound(to: UInt8.self, capacity: length) {
            Array(UnsafeBufferPointer(start: $0, count: length))
        }
    }

    var string: String { String(decoding: bytes, as: UTF8.self) }
}
