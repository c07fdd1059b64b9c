#!/bin/sh
# Build the lowtide image from this checkout:
#
#     deploy/build-image.sh [IMAGE]     # default localhost/lowtide:latest
#
# 1. pip writes the wheels of lowtide and of every dependency (with the postgres and s3
#    extras) to deploy/wheels/, for CPython 3.11 on Linux, using this machine's package index
#    settings: the image build itself downloads nothing from a package index.
# 2. podman (or docker) builds deploy/Dockerfile FROM $BASE_IMAGE, a Debian 12 image (its
#    Python is 3.11): docker.io/library/debian:bookworm-slim by default, or one made by
#    deploy/debian-base.sh where no registry is reachable.
#
# Environment: BASE_IMAGE, SOURCE (the lowtide source tree; default this checkout), PYTHON (to run pip; default .venv/bin/python, else python3),
# CONTAINER_ENGINE (podman or docker), ENGINE_ARGS (global engine options, e.g. --runtime runc),
# BUILD_ARGS (build options, e.g. --network host).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
IMAGE=${1:-localhost/lowtide:latest}
BASE_IMAGE=${BASE_IMAGE:-docker.io/library/debian:bookworm-slim}
ENGINE=${CONTAINER_ENGINE:-$(command -v podman || command -v docker)}
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x "$root/.venv/bin/python" ] && PYTHON=$root/.venv/bin/python
fi
case $(uname -m) in
    x86_64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) echo "no wheels for $(uname -m)" >&2; exit 1 ;;
esac

rm -rf "$here/wheels"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$here/wheels" "${SOURCE:-$root}"
lowtide_wheel=$(ls "$here"/wheels/lowtide-*.whl)
"$PYTHON" -m pip download --quiet --dest "$here/wheels" --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform "manylinux_2_36_$arch" --platform "manylinux_2_28_$arch" \
    --platform "manylinux_2_17_$arch" --platform "manylinux2014_$arch" --platform any \
    "$lowtide_wheel[postgres,s3]"

# shellcheck disable=SC2086 # ENGINE_ARGS and BUILD_ARGS are lists of options
"$ENGINE" ${ENGINE_ARGS:-} build ${BUILD_ARGS:-} --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --tag "$IMAGE" --file "$here/Dockerfile" "$here"
echo "built $IMAGE"
