// H2 module: see README's architecture section.
