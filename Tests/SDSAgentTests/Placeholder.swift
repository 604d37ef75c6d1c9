import Testing

@Test func SDSAgentTestsBuilds() {}
