import Testing

@Test func SPIFFETestsBuilds() {}
