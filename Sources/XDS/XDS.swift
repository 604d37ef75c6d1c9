// XDS module: see README's architecture section.
