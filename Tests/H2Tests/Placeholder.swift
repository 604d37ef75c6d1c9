import Testing

@Test func H2TestsBuilds() {}
