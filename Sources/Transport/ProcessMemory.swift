internal import CLinux

/// How this process's allocator is set up.
public enum ProcessMemory {
    /// One malloc arena for every thread. The agent is one thread but for short-lived workers (an istiod key and
    /// its answer's validation, a file write), and glibc gives each thread that allocates an arena of its own,
    /// whose pages stay resident after the thread exits. Call before any thread starts.
    public static func useOneArena() {
        _ = sds_malloc_one_arena()
    }
}
