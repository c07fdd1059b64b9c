"""Process-wide settings for serving uploads (``lowtide.api.serving``). Each test runs in a
child process: the settings are the process's, and must not leak into the test runner's."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="malloc thresholds are glibc's"
)

# Allocates and frees what a 50 MB upload does: per read, a 256,000-byte buffer copied twice
# (uvicorn's body, then the bytes its receive() gives); prints the page faults that cost.
CHURN = """
import resource
chunk = bytes(256_000)

def churn(reads):
    for _ in range(reads):
        body = bytearray()
        body += chunk
        bytes(body)

churn(10)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn(200)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


@glibc_only
def test_fixed_malloc_thresholds_stop_body_buffers_being_faulted_in_again() -> None:
    untuned = int(run(CHURN))
    tuned = int(
        run("from lowtide.api.serving import tune_allocator\nassert tune_allocator()\n" + CHURN)
    )
    # Untuned, glibc gives the freed buffers back to the kernel after each read and faults
    # them in again at the next (in a server: about 100,000 faults per 500 MB uploaded).
    assert untuned > 200 * 20
    assert tuned < untuned / 20


@glibc_only
def test_tune_serving_raises_uvicorn_s_body_buffer() -> None:
    out = run(
        """
        from lowtide.api.serving import BODY_BUFFER, tune_serving
        from uvicorn.protocols.http import flow_control, h11_impl, httptools_impl
        tune_serving()
        print(BODY_BUFFER, flow_control.HIGH_WATER_LIMIT, h11_impl.HIGH_WATER_LIMIT,
              httptools_impl.HIGH_WATER_LIMIT)
        """
    )
    limit, *seen = map(int, out.split())
    assert limit >= 1024 * 1024
    assert seen == [limit, limit, limit]


def test_the_body_buffer_is_never_lowered() -> None:
    out = run(
        """
        from lowtide.api.serving import raise_body_buffer
        from uvicorn.protocols.http import httptools_impl
        assert raise_body_buffer(1024)
        print(httptools_impl.HIGH_WATER_LIMIT)
        """
    )
    assert int(out) == 65536  # uvicorn's own default stays
