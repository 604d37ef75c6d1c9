import Testing

@Test func PKITestsBuilds() {}
