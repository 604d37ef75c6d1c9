public import Wire

/// Whether a secret name can be answered now.
public enum SecretAvailability: Sendable, Equatable {
    /// The cache holds it: serve it.
    case available
    /// It will be served once issued: hold the answer (never an error: Envoy would back off for ~30 s).
    case pending
    /// This server will never serve it (unknown scheme, another identity). Delta answers it in
    /// `removed_resources`; SotW holds, since SotW has no way to say "does not exist" short of an error.
    case neverServed
}

/// What the owner (who knows the identity and the naming scheme) says about a name the cache does not hold.
public enum SecretNameKind: Sendable, Equatable {
    /// A name this server serves: once issued it will be in the cache.
    case served
    /// A name this server will never serve.
    case neverServed
}

/// The secrets the server currently serves, by name, each with the version its owner computed for it
/// (e.g. a SHA-256 of the serialized Secret), plus a revision that grows on every change.
///
/// Streams compare per-resource versions, not revisions, so setting the same content again pushes nothing.
/// The revision lets a stream skip a change notification it has already seen, and is Delta's
/// `system_version_info`.
///
/// Rotation is `set` with the new content; `remove` means "no longer served" and Delta streams that were sent
/// the secret are told it was removed, so do not remove a secret merely to replace it.
public struct SecretCache: Sendable {
    /// One cached secret.
    public struct Entry: Sendable, Equatable {
        /// The owner's content version (equal content ⇒ equal version).
        public var version: String {
            didSet { storedDigest = nil }
        }
        /// The packed `Secret`, as it goes into responses.
        public var resource: AnyMessage {
            didSet { asResources = [resource] }
        }
        /// `[resource]`, made once: a one-name SotW response on every stream of a push is exactly this list.
        public private(set) var asResources: [AnyMessage]
        /// `sotwDigest(name:version:)` under the name the cache stores this entry as, made once by `set`: a push
        /// needs it for every stream holding the name (~230 instructions each).
        fileprivate var storedDigest: StoredDigest?

        /// A struct, not a tuple: a tuple's type metadata is made at run time (the runtime's demangler, cold code
        /// paged in for it).
        fileprivate struct StoredDigest: Sendable {
            var name: String
            var digest: UInt64
        }

        public init(version: String, resource: AnyMessage) {
            self.version = version
            self.resource = resource
            self.asResources = [resource]
        }

        /// The one-resource SotW digest of this entry answered as `name` (see `sotwDigest(name:version:)`).
        func sotwDigest(answeredAs name: String) -> UInt64 {
            if let storedDigest, storedDigest.name == name { return storedDigest.digest }
            return XDS.sotwDigest(name: name, version: version)
        }

        public static func == (lhs: Entry, rhs: Entry) -> Bool {
            lhs.version == rhs.version && lhs.resource == rhs.resource
        }
    }

    /// Classifies names the cache does not hold; consulted only for those.
    public typealias NameClassifier = @Sendable (String) -> SecretNameKind

    private var entries: [String: Entry] = [:]
    /// Requested name → the entry this view answers it with: a per-client variant (the all-bundles name as a plain
    /// CA list for an Envoy whose node metadata asks for it). Empty in the service's own cache; set on a copy by
    /// `viewing(_:)`, which shares the entries' storage.
    private var aliases: [String: String] = [:]
    /// Grows by one on every `set` that changes content and every `remove` that removes something.
    public private(set) var revision: UInt64 = 0
    private let classifier: NameClassifier
    /// Set only on the copy a push hands to every stream (`rememberingLastLookup()`): the last name found and its
    /// entry. A push looks the same name up once per stream, and comparing it with the last one is cheaper than
    /// hashing it and probing the table (~340 instructions a stream). `set` and `remove` drop it, so a copy that
    /// changes never answers from it.
    private var lastLookup: LastLookup?

    /// A reference so that lookups (non-mutating) can fill it. Confined to the event loop's push: the copy that
    /// carries it is made, used and dropped within one call, never handed to another thread.
    private final class LastLookup: @unchecked Sendable {
        var name = ""
        var entry: Entry?
    }

    /// - Parameter classifier: says which absent names will be served once issued (`.served` → held as
    ///   `.pending`) and which never will (`.neverServed`).
    public init(classifier: @escaping NameClassifier) {
        self.classifier = classifier
    }

    /// Stores `resource` under `name` at `version`. Returns whether anything changed: the same version again
    /// is not a change (no revision bump, so no stream wakes up for nothing).
    @discardableResult
    public mutating func set(name: String, version: String, resource: AnyMessage) -> Bool {
        if let current = entries[name], current.version == version { return false }
        var entry = Entry(version: version, resource: resource)
        entry.storedDigest = Entry.StoredDigest(name: name, digest: XDS.sotwDigest(name: name, version: version))
        entries[name] = entry
        revision += 1
        lastLookup = nil
        return true
    }

    /// Stops serving `name`. Returns whether it was there.
    @discardableResult
    public mutating func remove(name: String) -> Bool {
        guard entries.removeValue(forKey: name) != nil else { return false }
        revision += 1
        lastLookup = nil
        return true
    }

    /// Bumps the revision without changing content: call it (then notify the streams) when the classifier's
    /// answers changed, e.g. the served identity changed, so Delta streams report newly never-served names.
    public mutating func invalidate() {
        revision += 1
    }

    /// This cache as one client sees it: each name in `aliases` answered with the entry stored under its value.
    /// A copy that shares the entries (copy-on-write), so a per-stream view costs no copy of the secrets.
    public func viewing(_ aliases: [String: String]) -> SecretCache {
        var view = self
        view.aliases = aliases
        return view
    }

    /// (The service's own cache has no aliases: no second hash of the name for it.)
    private func stored(_ name: String) -> Entry? {
        let key = aliases.isEmpty ? name : aliases[name] ?? name
        guard let lastLookup else { return entries[key] }
        if let entry = lastLookup.entry, lastLookup.name == key { return entry }
        let entry = entries[key]
        if entry != nil { (lastLookup.name, lastLookup.entry) = (key, entry) }
        return entry
    }

    /// This cache (sharing its storage) remembering the last name it found: for a push, which asks every stream's
    /// names of one unchanging copy.
    public func rememberingLastLookup() -> SecretCache {
        var copy = self
        copy.lastLookup = LastLookup()
        return copy
    }

    /// The cached secret called `name`, if any.
    public func entry(named name: String) -> Entry? { stored(name) }

    /// The version of the cached secret called `name`, if any.
    public func version(of name: String) -> String? { stored(name)?.version }

    /// A cached secret is available whatever the classifier says; an absent one is pending or never served.
    public func availability(of name: String) -> SecretAvailability {
        if stored(name) != nil { return .available }
        switch classifier(name) {
        case .served: return .pending
        case .neverServed: return .neverServed
        }
    }

    /// The names the cache holds (unordered).
    public var names: Dictionary<String, Entry>.Keys { entries.keys }

    /// How many secrets the cache holds.
    public var count: Int { entries.count }
}
