import Testing

@Test func IssuanceTestsBuilds() {}
