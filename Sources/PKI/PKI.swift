// PKI module: see README's architecture section.
