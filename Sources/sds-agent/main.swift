print("sds-agent: not built yet")
