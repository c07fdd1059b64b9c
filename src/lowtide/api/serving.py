"""Process-wide settings of ``lowtide serve`` that make uploads cheaper: call ``tune_serving()``
once, before uvicorn starts.

An upload's body goes through buffers of a few hundred KB each: uvloop's read (256,000 bytes),
httptools' body callback, uvicorn's request body and the bytes its ``receive()`` hands over.

1. glibc's malloc serves buffers of that size from the top of its heap, and gives that top
   back to the kernel whenever more than twice its (self-adjusted) mmap threshold is free,
   which it can be between two reads. Whether it is depends on what else sits at the top of
   the heap, so it is luck: in some processes every read's buffers are handed back and faulted
   in again (100,000 page faults per 500 MB: +35 % CPU per upload), in others never. Fixed
   thresholds keep the buffers on the heap and its top in place, in every process.
2. uvicorn pauses reading the socket once it holds 64 KiB of a body the app has not taken:
   less than one read, so it paused, resumed and woke the app after every read. With 1 MiB it
   reads on while the app works on the previous bytes, and the app takes several reads at a
   time: a tenth less CPU per upload (``bench/upload.py``, 500 MB). Larger buffers pay only
   with fixed malloc thresholds (without them, they are the ones handed back and faulted in),
   so this is done only where the first one took.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Allocations up to this size come from the heap: the body buffers, 1 MiB download reads.
MMAP_THRESHOLD = 4 * 1024 * 1024
#: Free memory at the top of the heap that stays mapped. It bounds what the process keeps
#: of a past peak, as glibc's default does (it then adjusts itself up to 64 MiB).
TRIM_THRESHOLD = 32 * 1024 * 1024

#: Bytes of a request body uvicorn buffers before it pauses reading the socket.
BODY_BUFFER = 1024 * 1024
# uvicorn has no option for it: each of its HTTP protocols compares with a module constant,
# imported from ``flow_control`` (where it is set too, for any module imported later).
_FLOW_CONTROL_MODULES = (
    "uvicorn.protocols.http.flow_control",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.http.h11_impl",
)


def tune_serving() -> None:
    """Both settings of the module's docstring (the second only if the first took)."""
    if tune_allocator():
        raise_body_buffer()


def tune_allocator() -> bool:
    """Fix glibc's malloc thresholds; True if the C library took them (only glibc has
    these knobs: elsewhere nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Setting either threshold also stops glibc from adjusting both by itself.
    took: bool = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    took = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and took
    if not took:
        logger.debug("the C library did not take malloc thresholds: left as they were")
    return took


def raise_body_buffer(limit: int = BODY_BUFFER) -> bool:
    """Let uvicorn buffer up to ``limit`` bytes of a request body (never less than its own
    default); True if its protocols have the constant this sets."""
    found = False
    for name in _FLOW_CONTROL_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # httptools is optional; h11 is always there
            continue
        current = getattr(module, "HIGH_WATER_LIMIT", None)
        if isinstance(current, int):
            setattr(module, "HIGH_WATER_LIMIT", max(current, limit))  # noqa: B010
            found = True
    if not found:
        logger.debug("uvicorn has no HIGH_WATER_LIMIT any more: its body buffer is unchanged")
    return found
