// Transport module: see README's architecture section.
