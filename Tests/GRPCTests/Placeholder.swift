import Testing

@Test func GRPCTestsBuilds() {}
