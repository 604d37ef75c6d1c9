import Testing

@Test func WireTestsBuilds() {}
