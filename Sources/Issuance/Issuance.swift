// Issuance module: see README's architecture section.
