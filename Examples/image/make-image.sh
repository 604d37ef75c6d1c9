#!/usr/bin/env bash
# Builds the sds-agent OCI image without a container daemon (`make image` calls it after `make build`):
#
#   .build/release/sds-agent --strip--> staging tree (sds-dump: a link to it) --GNU tar--> one layer (fixed owners, mtimes, order)
#       --umoci--> OCI layout  $OUT/oci  (gzip layer, config: user, entrypoint, labels)
#       --skopeo--> docker-archive  $OUT/sds-agent.tar  (for `podman load` / `docker load`)
#
# "FROM scratch": no shell, no libc, no package manager; the binaries are fully static. Every file, owner and
# timestamp is fixed (SOURCE_DATE_EPOCH, default the last commit's time), so the same binaries give the same digest.
#
# Environment: RELEASE_DIR, OUT, IMAGE_NAME, IMAGE_VERSION, IMAGE_UID, IMAGE_SOURCE, IMAGE_REVISION,
# IMAGE_LICENSES, SOURCE_DATE_EPOCH (all set by the Makefile).
set -euo pipefail

: "${RELEASE_DIR:?}" "${OUT:?}" "${IMAGE_NAME:?}" "${IMAGE_VERSION:?}" "${IMAGE_UID:?}" "${SOURCE_DATE_EPOCH:?}"
: "${IMAGE_SOURCE:?}" "${IMAGE_REVISION:?}" "${IMAGE_LICENSES:?}"
# The trust store `file-root:system` serves (SecretName.systemTrustStore): Debian's path, from ca-certificates.
TRUST_STORE=/etc/ssl/certs/ca-certificates.crt

created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
rm -rf "$OUT" && mkdir -p "$OUT"
root="$OUT/rootfs"

# Staging tree. Binaries are stripped here only (the release build keeps its symbols for backtraces): ~40 % smaller.
install -d -m 0755 "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/var/lib" "$root/run/secrets"
strip --strip-all -o "$root/usr/local/bin/sds-agent" "$RELEASE_DIR/sds-agent"
chmod 0555 "$root/usr/local/bin/sds-agent"
# sds-agent called as sds-dump is sds-dump: one copy of libcrypto, glibc and the Swift runtime instead of two
# (the separate sds-dump binary would add 5.1 MB compressed).
ln -s sds-agent "$root/usr/local/bin/sds-dump"
install -m 0444 "$TRUST_STORE" "$root$TRUST_STORE"
# A name for the UID (ps, logs, `id` in a debug container); no shell, no home.
printf 'root:x:0:0:root:/root:/sbin/nologin\nsds-agent:x:%s:%s:sds-agent:/nonexistent:/sbin/nologin\n' \
  "$IMAGE_UID" "$IMAGE_UID" > "$root/etc/passwd"
printf 'root:x:0:\nsds-agent:x:%s:\n' "$IMAGE_UID" > "$root/etc/group"
chmod 0444 "$root/etc/passwd" "$root/etc/group"
# The default --state-dir and --socket directory, owned by the agent's UID (0700: the agent refuses a state dir
# others can write), so the image runs with no flag and no volume. A volume mounted there replaces them.
install -d -m 0700 "$root/var/lib/sds-agent"
install -d -m 0755 "$root/run/secrets/workload-spiffe-uds"

# One layer: everything root-owned except the agent's two directories; sorted names and fixed mtimes.
layer="$OUT/layer.tar"
tar_fixed=(--sort=name --mtime="@$SOURCE_DATE_EPOCH" --numeric-owner --format=posix
           --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -C "$root")
tar -cf "$layer" "${tar_fixed[@]}" --owner=0 --group=0 \
  --exclude=./var/lib/sds-agent --exclude=./run/secrets/workload-spiffe-uds .
tar -rf "$layer" "${tar_fixed[@]}" --owner="$IMAGE_UID" --group="$IMAGE_UID" \
  ./var/lib/sds-agent ./run/secrets/workload-spiffe-uds

oci="$OUT/oci"
image="$oci:$IMAGE_VERSION"
umoci init --layout "$oci"
umoci new --image "$image"
umoci raw add-layer --image "$image" --history.created "$created" \
  --history.created_by "make image (sds-agent, sds-dump, CA bundle)" "$layer"
labels=(
  "org.opencontainers.image.title=$IMAGE_NAME"
  "org.opencontainers.image.description=Envoy SDS provider sidecar: SPIFFE X.509-SVIDs over a Unix socket"
  "org.opencontainers.image.version=$IMAGE_VERSION"
  "org.opencontainers.image.revision=$IMAGE_REVISION"
  "org.opencontainers.image.source=$IMAGE_SOURCE"
  "org.opencontainers.image.licenses=$IMAGE_LICENSES"
  "org.opencontainers.image.created=$created"
)
config=(--image "$image" --created "$created" --author "$IMAGE_NAME" --os linux --architecture amd64
        --config.user "$IMAGE_UID:$IMAGE_UID" --config.workingdir / --config.env PATH=/usr/local/bin
        --config.entrypoint /usr/local/bin/sds-agent --config.entrypoint run --config.stopsignal SIGTERM
        --no-history)
for label in "${labels[@]}"; do config+=(--config.label "$label" --manifest.annotation "$label"); done
umoci config "${config[@]}"
umoci gc --layout "$oci"

archive="$OUT/$IMAGE_NAME.tar"
skopeo copy --quiet "oci:$image" "docker-archive:$archive:$IMAGE_NAME:$IMAGE_VERSION"
rm -rf "$root" "$layer"

# What a registry would store and a node pull: the compressed layer plus config and manifest.
compressed=$(find "$oci/blobs/sha256" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
printf 'image %s:%s  %s (OCI layout), %s (docker-archive)\n' "$IMAGE_NAME" "$IMAGE_VERSION" "$oci" "$archive"
awk -v c="$compressed" -v u="$(stat -c %s "$archive")" \
  'BEGIN {printf "compressed size: %d bytes (%.1f MB); docker-archive: %d bytes\n", c, c / 1e6, u}'
