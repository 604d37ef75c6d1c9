import CNGHTTP2
import COpenSSL
import CProtobufC
import Glibc

// `sds-floor`: the RSS floor for `make bench` — a minimal program linking the same C libraries as sds-agent
// (nghttp2, OpenSSL's libssl/libcrypto, protobuf-c) with the static Swift stdlib. It initializes each library as the
// agent does (an nghttp2 session with its SETTINGS, a P-256 key, protobuf-c's version), prints `ready` and sleeps.
// The agent's RSS minus this is what our own code costs.

var callbacks: OpaquePointer?
nghttp2_session_callbacks_new(&callbacks)
var session: OpaquePointer?
nghttp2_session_server_new(&session, callbacks, nil)
nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil, 0)

let context = EVP_PKEY_CTX_new_from_name(nil, "EC", nil)
EVP_PKEY_keygen_init(context)
"P-256".withCString { _ = EVP_PKEY_CTX_set_group_name(context, $0) }
var key: OpaquePointer?
EVP_PKEY_generate(context, &key)

let version = String(cString: protobuf_c_version())
_ = "ready \(version)\n".withCString { write(1, $0, strlen($0)) }
withExtendedLifetime((session, key)) { _ = pause() }
