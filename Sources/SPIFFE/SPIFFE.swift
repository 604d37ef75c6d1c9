// SPIFFE module: see README's architecture section.
