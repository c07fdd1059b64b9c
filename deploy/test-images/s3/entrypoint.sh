#!/bin/sh
# MinIO's `server DIR [--address HOST:PORT]`, served by moto on that address (default :9000).
set -eu
address=:9000
while [ $# -gt 0 ]; do
    case $1 in
        --address) address=$2; shift ;;
    esac
    shift
done
host=${address%:*}
exec /opt/moto/bin/moto_server --host "${host:-0.0.0.0}" --port "${address##*:}"
