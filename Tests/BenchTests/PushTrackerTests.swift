import Bench
import Testing

@Test func readyOnlyOnceEveryStreamAnswered() {
    var tracker = PushTracker<String>(streamCount: 2)
    tracker.received(stream: 0, version: "1", at: 10)
    tracker.received(stream: 0, version: "1", at: 11)
    #expect(tracker.state == .waitingForFirst)
    tracker.received(stream: 1, version: "1", at: 12)
    #expect(tracker.state == .ready)
    #expect(tracker.readyAtNanos == 12)
}

@Test func pushCompletesWhenTheLastStreamHasANewVersion() {
    var tracker = PushTracker<String>(streamCount: 2)
    tracker.received(stream: 0, version: "1", at: 0)
    tracker.received(stream: 1, version: "1", at: 0)
    let began = tracker.beginPush(at: 100)
    #expect(began)
    tracker.received(stream: 0, version: "2", at: 150)
    // A repeat of the old version (late answer) is not progress; neither is a second update of the same stream.
    tracker.received(stream: 1, version: "1", at: 160)
    tracker.received(stream: 0, version: "3", at: 170)
    #expect(tracker.isPushing)
    tracker.received(stream: 1, version: "2", at: 400)
    #expect(tracker.state == .ready)
    #expect(tracker.lastPushNanos == 300)
}

@Test func pushRefusedBeforeEveryStreamIsReady() {
    var tracker = PushTracker<String>(streamCount: 2)
    tracker.received(stream: 0, version: "1", at: 0)
    let began = tracker.beginPush(at: 5)
    #expect(!began)
    #expect(tracker.state == .waitingForFirst)
}

@Test func jsonEscapesAndFormats() {
    var object = JSONObject()
    object.set("name", "a\"b\\c\n")
    object.set("n", 3)
    object.set("ms", [1.5, .nan])
    #expect(object.description == #"{"name":"a\"b\\c\n","n":3,"ms":[1.5,null]}"#)
}

@Test func streamsSpreadEvenlyOverConnections() {
    #expect(streamsPerConnection(streams: 10_000, connections: 100) == Array(repeating: 100, count: 100))
    #expect(streamsPerConnection(streams: 5, connections: 2) == [3, 2])
    #expect(streamsPerConnection(streams: 1, connections: 100) == [1])
    #expect(median([3, 1, 2]) == 2)
    #expect(median([4, 1, 2, 3]) == 2.5)
    #expect(median([]) == nil)
}
