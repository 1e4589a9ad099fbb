#!/usr/bin/env bash
# Stages the image context from local files and builds speedmimi:VERSION and
# speedmimi:latest. Usage: deploy/docker/build.sh BIN_DIR VERSION
# BIN_DIR holds statically linked speedmimi, loadgen and tuner (make
# docker-build builds them with -C target-feature=+crt-static).
set -euo pipefail
bin=${1:?usage: build.sh BIN_DIR VERSION}
version=${2:?usage: build.sh BIN_DIR VERSION}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
image=${IMAGE:-speedmimi}

for b in speedmimi loadgen tuner; do
    [ -x "$bin/$b" ] || { echo "build.sh: $bin/$b missing" >&2; exit 1; }
    # A scratch image has no libc: a dynamic binary would not start.
    if ldd "$bin/$b" >/dev/null 2>&1 && ! ldd "$bin/$b" 2>&1 | grep -q 'statically linked'; then
        echo "build.sh: $bin/$b is dynamically linked:" >&2
        ldd "$bin/$b" >&2
        exit 1
    fi
done

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/rootfs/run/speedmimi-tuner"
cp "$bin/speedmimi" "$bin/loadgen" "$bin/tuner" "$ctx/bin/"
# Debug info is for profiles on the build host; the image ships without it.
if command -v strip >/dev/null; then strip "$ctx/bin/"*; fi
cp "$here/Dockerfile" "$ctx/"
cp "$repo/deploy/speedmimi.yaml" "$ctx/"
printf 'root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ctx/rootfs/etc/group"
chmod 1777 "$ctx/rootfs/tmp"
chmod 0777 "$ctx/rootfs/run/speedmimi-tuner"

docker build --quiet \
    --label "org.opencontainers.image.title=speedmimi" \
    --label "org.opencontainers.image.version=$version" \
    -t "$image:$version" -t "$image:latest" "$ctx" >/dev/null
size=$(docker image inspect "$image:$version" --format '{{.Size}}')
echo "built $image:$version and $image:latest ($((size / 1024 / 1024)) MiB)"
