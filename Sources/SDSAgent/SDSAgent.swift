// SDSAgent module: see README's architecture section.
