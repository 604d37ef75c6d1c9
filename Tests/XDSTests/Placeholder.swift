import Testing

@Test func XDSTestsBuilds() {}
