#!/usr/bin/env bash
# Property-based API testing with schemathesis against a live
# `snp-vmm --hypervisor mock`: every response must be a documented status
# with a body matching api-server/openapi.yaml, and nothing may be a 5xx.
#
#   scripts/api-fuzz.sh [MAX_EXAMPLES] [MAX_SECONDS]     (defaults: 30, 120)
#
# schemathesis speaks HTTP over TCP only, so a small Python forwarder
# bridges 127.0.0.1:PORT to the Unix socket. schemathesis is installed from
# PyPI into api-fuzz-venv in the Cargo target directory (CARGO_TARGET_DIR
# when set; pinned; reused when already there).
# Installing needs PyPI: if pip fails, this script fails and says why; a
# CI machine reaches PyPI, and a silently skipped fuzz run would hide the
# very violations it exists to catch.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXAMPLES="${1:-30}"
MAX_SECONDS="${2:-120}"
SCHEMATHESIS_VERSION="4.32.5"
TARGET_DIR=$(scripts/target-dir.sh)
VENV="$TARGET_DIR/api-fuzz-venv"
WORK="$(mktemp -d)"
VMM_PID=""
BRIDGE_PID=""

cleanup() {
    [ -n "$BRIDGE_PID" ] && kill "$BRIDGE_PID" 2>/dev/null || true
    [ -n "$VMM_PID" ] && kill "$VMM_PID" 2>/dev/null || true
    [ -n "$VMM_PID" ] && wait "$VMM_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "api-fuzz: installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    if ! "$VENV/bin/pip" install --quiet --retries 5 --timeout 60 \
        "schemathesis==$SCHEMATHESIS_VERSION" >"$WORK/pip.log" 2>&1; then
        echo "api-fuzz: FAILED to install schemathesis from PyPI:" >&2
        tail -20 "$WORK/pip.log" >&2
        exit 1
    fi
fi

cargo build --quiet --bin snp-vmm
SOCKET="$WORK/api.sock"
# An idle VM to start with, so vm.* operations reach more than 404.
"$TARGET_DIR/debug/snp-vmm" --hypervisor mock --api-socket "$SOCKET" --cpus boot=1 2>"$WORK/vmm.log" &
VMM_PID=$!

# A TCP -> Unix socket forwarder; prints its port once listening.
cat >"$WORK/bridge.py" <<'PY'
import socket, sys, threading

def pump(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def serve(path):
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()

serve(sys.argv[1])
PY

deadline=$((SECONDS + 30))
until [ -S "$SOCKET" ]; do
    if ! kill -0 "$VMM_PID" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
        echo "api-fuzz: snp-vmm did not come up:" >&2
        cat "$WORK/vmm.log" >&2
        exit 1
    fi
    sleep 0.1
done
python3 "$WORK/bridge.py" "$SOCKET" >"$WORK/port" &
BRIDGE_PID=$!
deadline=$((SECONDS + 10))
until [ -s "$WORK/port" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "api-fuzz: the TCP bridge did not start" >&2
        exit 1
    fi
    sleep 0.1
done
PORT="$(cat "$WORK/port")"

echo "api-fuzz: at most $MAX_EXAMPLES examples per operation, $MAX_SECONDS s"
# vmm.shutdown would end the VMM under test; it is covered by the
# end-to-end tests instead. positive_data_acceptance is left out on
# purpose: a request valid by the schema may still name a certs file that
# does not exist, which is a documented 400.
status=0
"$VENV/bin/schemathesis" run api-server/openapi.yaml \
    --url "http://127.0.0.1:$PORT/api/v1" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method,allow_header_conformance \
    --exclude-operation-id shutdownVmm \
    --phases examples,coverage,fuzzing \
    --max-examples "$MAX_EXAMPLES" \
    --max-time "$MAX_SECONDS" \
    --request-timeout 30 \
    --workers 1 \
    --seed 20260101 \
    --no-color || status=$?
if ! kill -0 "$VMM_PID" 2>/dev/null; then
    echo "api-fuzz: snp-vmm died during the run:" >&2
    cat "$WORK/vmm.log" >&2
    exit 1
fi
exit "$status"
