"""A fake hosted Batch API (OpenAI's Files and Batches routes) with faults, for the offload
tests and ``bench/offload_chaos.py``: uploads, creates with ``Idempotency-Key`` and metadata,
lists, cancels, downloads; batches that validate slowly, fail, expire, lose their output file;
429s on create, creates and uploads whose answer is lost. Its lines are answered as the fake
upstream (``lowtide.testing.upstream``) answers requests.

In-process::

    async with FakeBatchApi(BatchApiConfig(run_seconds=0.1)) as api:
        ...  # a batch backend with base_url = api.base_url

As a process (prints one ``LISTENING http://127.0.0.1:<port>`` line)::

    python -m lowtide.testing.batch_api --port 0 --config-json '{"hold_creates": 0.5}'

or ``BatchApiProcess(config)`` (``stats()``, ``configure(...)``), which dies with its parent.
"""

from __future__ import annotations

from lowtide.testing.batch_api.process import BatchApiProcess
from lowtide.testing.batch_api.server import FakeBatchApi
from lowtide.testing.batch_api.state import BatchApiConfig

__all__ = ["BatchApiConfig", "BatchApiProcess", "FakeBatchApi"]
