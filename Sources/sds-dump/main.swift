print("sds-dump: not built yet")
