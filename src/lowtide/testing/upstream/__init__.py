"""A fast fake OpenAI-compatible model server with fault injection.

It answers ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/responses`` and ``GET /v1/models`` the way vLLM or OpenAI would, with bodies derived
deterministically from the request (the answer to a chat line is ``echo: <first 40 characters
of its last user message>``), and injects the faults that ``UpstreamConfig`` asks for:
latency, 5xx errors, 429s with ``Retry-After``, 429 storms, dropped connections, requests that
hang, garbage bodies, a backend that is down for a while, and per-line faults aimed by marker
strings in the content (``FAIL400``, ``FAIL500ONCE``, ``SLOW``, ...).

Control routes (never faulted, never counted): ``GET /_fake/stats[?per_key=1]``,
``GET|POST /_fake/config`` (a JSON object of config fields to change), ``POST /_fake/reset``,
``GET /_fake/bodies`` (the last ``record_bodies`` request bodies it read, oldest first).

In-process::

    async with FakeUpstream(UpstreamConfig(latency=0.01)) as up:
        ...  # point the client at up.url (or up.base_url, which ends in /v1)
        assert up.stats()["max_concurrency_seen"] <= 8

As a process (prints one ``LISTENING http://127.0.0.1:<port>`` line, then nothing)::

    python -m lowtide.testing.upstream --port 0 --rate-429 0.1 --retry-after 0.5

or ``with UpstreamProcess(config) as proc: proc.url``.

The modules, by what they do: ``config`` (UpstreamConfig, its flags and JSON form),
``faults`` (which fault a request gets, its delay, the Retry-After pauses), ``reading`` (a
request's key and size), ``bodies`` (successful answers), ``routes`` (the routes served),
``replies`` (HTTP replies and errors), ``stats`` (the counters), ``server`` (the aiohttp
server, FakeUpstream), ``process`` (UpstreamProcess) and ``cli`` (``python -m``).
"""

from __future__ import annotations

from lowtide.testing.upstream.cli import main
from lowtide.testing.upstream.config import DOWN_MODES, UpstreamConfig
from lowtide.testing.upstream.process import UpstreamProcess
from lowtide.testing.upstream.server import FakeUpstream

__all__ = ["DOWN_MODES", "FakeUpstream", "UpstreamConfig", "UpstreamProcess", "main"]
