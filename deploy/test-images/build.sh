#!/bin/sh
# Build the stand-in images that deploy/compose.yaml is tested with where no registry is
# reachable: localhost/lowtide-test-postgres and localhost/lowtide-test-s3, FROM $BASE_IMAGE.
# Same environment as deploy/build-image.sh.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$(dirname "$here")")
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

rm -rf "$here/s3/wheels"
"$PYTHON" -m pip download --quiet --dest "$here/s3/wheels" --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform "manylinux_2_36_$arch" --platform "manylinux_2_28_$arch" \
    --platform "manylinux_2_17_$arch" --platform "manylinux2014_$arch" --platform any \
    'moto[server]>=5.0'

for name in postgres s3; do
    # shellcheck disable=SC2086 # ENGINE_ARGS and BUILD_ARGS are lists of options
    "$ENGINE" ${ENGINE_ARGS:-} build ${BUILD_ARGS:-} --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --tag "localhost/lowtide-test-$name:latest" "$here/$name"
done
