import Glibc
import Testing

@testable import Transport

/// Delays computed from outside values (a certificate valid until 9999-12-31, a refresh hint) reach the loop's
/// timers: the conversion to nanoseconds used to trap past ~584 years.
@Suite struct HostileTimeTests {
    @Test(arguments: [
        Double(253_402_300_799), 1e300, Double.greatestFiniteMagnitude, Double.infinity, -Double.infinity, -1,
        Double.nan,
    ])
    func anyDelayBecomesADeadlineWithoutTrapping(seconds: Double) {
        let now = EventLoop.monotonicNanos()
        let deadline = EventLoop.deadline(after: seconds, from: now)
        #expect(deadline >= now)
        #expect(deadline - now <= UInt64(EventLoop.maximumDelaySeconds * 1_000_000_000))
        if seconds.isNaN || seconds <= 0 { #expect(deadline == now) }
    }

    @Test func theSumSaturatesNearTheEndOfTheClock() {
        #expect(EventLoop.deadline(after: 10, from: UInt64.max - 5) == UInt64.max)
    }

    @Test func aTimerForTheYear9999IsArmedAndCancellable() throws {
        let loop = try EventLoop()
        var fired = false
        let timer = loop.schedule(after: Double(253_402_300_799)) { fired = true }
        var soon = false
        loop.schedule(after: 0) { soon = true }
        #expect(loop.run(until: { soon }, timeout: 5))
        #expect(!fired)
        #expect(timer.isPending)
        timer.cancel()
    }
}

/// A worker dropped while a job's thread still runs: the thread's late report must not reach whatever descriptor
/// reused the number of the worker's write end (it used to: 8 stray bytes), and the job must not leak.
@Suite struct OffLoopWorkerLifetimeTests {
    final class Tracked: @unchecked Sendable {
        let released: UnsafeMutablePointer<sem_t>
        init(_ released: UnsafeMutablePointer<sem_t>) { self.released = released }
        deinit { sem_post(released) }

        /// A semaphore the worker thread may wait on; freed with the last closure that holds it.
        final class Semaphore: @unchecked Sendable {
            let pointer: UnsafeMutablePointer<sem_t>
            init() {
                pointer = .allocate(capacity: 1)
                sem_init(pointer, 0, 0)
            }
            deinit {
                sem_destroy(pointer)
                pointer.deallocate()
            }
        }
    }

    @Test func aLateReportFromADroppedWorkerReachesNoOtherDescriptor() throws {
        let loop = try EventLoop()
        let gateBox = Tracked.Semaphore()
        let gate = gateBox.pointer
        let released = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
        sem_init(released, 0, 0)
        defer { released.deallocate() }
        var worker: OffLoopWorker? = try OffLoopWorker(loop: loop)
        do {
            let tracked = Tracked(released)
            worker?.run(
                { () -> Int in
                    sem_wait(gateBox.pointer)
                    return 1
                }, then: { _ in withExtendedLifetime(tracked) {} })
        }
        worker = nil
        // New descriptors take the lowest free numbers: the ones the worker just gave up.
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer {
            close(fds[0])
            close(fds[1])
        }
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        sem_post(gate)
        // The job (and what its completion holds) is released once its thread knows the report went nowhere.
        var deadline = timespec()
        clock_gettime(CLOCK_REALTIME, &deadline)
        deadline.tv_sec += 10
        #expect(sem_timedwait(released, &deadline) == 0, "the job was released by its thread")
        var byte: UInt8 = 0
        #expect(read(fds[0], &byte, 1) == -1 && errno == EAGAIN, "nothing arrived on the reused descriptors")
    }
}
