// GRPC module: see README's architecture section.
