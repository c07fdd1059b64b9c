#!/bin/sh
# Make a Debian 12 base image from Debian's own packages, for machines that reach Debian's
# package mirror but no image registry:
#
#     deploy/debian-base.sh [IMAGE]     # default localhost/debian:bookworm-minbase
#
# debootstrap writes a minimal root filesystem, which is imported as an image; the other
# images are then built FROM it (BASE_IMAGE=... for build-image.sh). Needs root, debootstrap
# and podman (or docker). Where a registry is reachable, docker.io/library/debian:bookworm-slim
# does the same job and this script is not needed.
set -eu

IMAGE=${1:-localhost/debian:bookworm-minbase}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ENGINE=${CONTAINER_ENGINE:-$(command -v podman || command -v docker)}

if "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE exists"
    exit 0
fi
rootfs=$(mktemp -d /var/tmp/lowtide-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR"
# The downloaded packages and the package lists are not needed in the image.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" --numeric-owner -c . | "$ENGINE" import \
    --change 'CMD ["/bin/bash"]' - "$IMAGE"
echo "made $IMAGE"
