"""Shared parts of the scheduling benchmarks (``prefix_order``, ``adaptive``, ``budgets``): the
simulated engine as a process, ``lowtide serve`` pointed at it, and the same-run baselines (a
bare aiohttp loop, an interactive client, a self-pacing client).

Figures come from the engine's own records, in model seconds (``lowtide.testing.engine_sim``
runs ``speed`` times faster than real time): the engine sees lowtide and a baseline alike, and a
busy machine that delays an answer in real time does not change the model's clock. The speed-up
applies to the engine only: lowtide's own work (validation, finalisation, its reaction to an
answer) takes real time, which counts ``speed`` times more in model seconds; the figures that
compare a sender's effect on the engine therefore run from the first request the engine saw to
its last answer, and lowtide's create → completed is given beside them for context.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import platform
import random
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from common import ENDPOINT, BatchRun, check_completed, client, run_batch, server, upload

from lowtide.testing.engine_sim import TAG_HEADER, EngineConfig, SimEngineProcess
from lowtide.testing.engine_sim.stats import percentile
from lowtide.testing.harness import Lowtide

SIM_MODEL = "sim-model"
INTERACTIVE = "interactive"

# ------------------------------------------------------------------------------- text


# Common English words, the shortest (commonest) first. Drawn with Zipf-like weights they give
# about 1.3 tokens per word with the engine's stand-in tokenizer (a token per 4 characters of a
# word), as a BPE tokenizer does for English.
_WORD_TEXT = (
    "the of and to in is was for on that with as by at from it his an were are which this "
    "be or has had not have but one new first also after who its they two their been more "
    "other time year world during used only most city some when would between over into "
    "states several later may three many part such national school where since people state "
    "these high known both under well then early united group then before while company "
    "system number second called until member government however around because house "
    "work through against family series could music film being same history league each "
    "released season south north including public university following city area record "
    "american during born began game club four country played long main team named river "
    "total population report market quarter revenue costs figures growth analysis summary "
    "customer product service order support account payment delivery request question"
)
_WORDS = _WORD_TEXT.split()


_WEIGHTS = [1 / (rank + 1) ** 0.7 for rank in range(len(_WORDS))]


def words(rng: random.Random, n: int) -> str:
    """``n`` words of ordinary English, drawn at random (about 1.3 tokens each)."""
    return " ".join(rng.choices(_WORDS, weights=_WEIGHTS, k=n))


def chat_body(system: str | None, user: str, max_tokens: int) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": user})
    return {"model": SIM_MODEL, "messages": messages, "max_tokens": max_tokens}


def write_lines(path: Path, bodies: Sequence[dict[str, Any]]) -> None:
    with path.open("wb") as f:
        for i, body in enumerate(bodies):
            line = {"custom_id": f"req-{i:06d}", "method": "POST", "url": ENDPOINT, "body": body}
            f.write(orjson.dumps(line) + b"\n")


# ------------------------------------------------------------------------------- flags


def add_lowtide_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lowtide-extra",
        action="append",
        default=[],
        metavar="TOML",
        help="a line for the simulated engine's [[backends]] table of lowtide's config, e.g. "
        "'concurrency = \"adaptive\"' ({engine_url} is replaced); repeatable",
    )
    p.add_argument(
        "--lowtide-section",
        action="append",
        default=[],
        metavar="TOML",
        help="top-level TOML for lowtide's config, e.g. '[scheduling]\\nprefix_order = true'; "
        "repeatable",
    )


def python_note() -> str:
    return f"ran on python {platform.python_version()} ({sys.executable})"


# ------------------------------------------------------------------------------- processes


@contextlib.contextmanager
def engine(workdir: Path, config: EngineConfig) -> Iterator[SimEngineProcess]:
    """The simulated engine as its own process (it has its own CPU, as a real engine has)."""
    with SimEngineProcess(config, log=workdir / "engine.log") as eng:
        yield eng


def backend_toml(eng: SimEngineProcess, max_concurrency: int, extra: Sequence[str]) -> str:
    lines = "\n".join(line.replace("{engine_url}", eng.url) for line in extra)
    return f"""
[[backends]]
name = "sim"
base_url = "{eng.base_url}"
api_key = "EMPTY"
models = ["{SIM_MODEL}"]
max_concurrency = {max_concurrency}
timeout = 3600
{lines}
"""


@contextlib.contextmanager
def lowtide_for(
    workdir: Path,
    eng: SimEngineProcess,
    max_concurrency: int,
    backend_extra: Sequence[str] = (),
    sections: Sequence[str] = (),
) -> Iterator[Lowtide]:
    """``lowtide serve`` with one backend, the simulated engine; keys it does not know yet are
    written only when a flag asks for them (``--lowtide-extra``, ``--lowtide-section``)."""
    extra = backend_toml(eng, max_concurrency, backend_extra) + "\n".join(sections)
    with server(workdir, None, extra=extra) as lt:
        yield lt


def lowtide_batch(
    workdir: Path,
    eng: SimEngineProcess,
    path: Path,
    n: int,
    max_concurrency: int,
    backend_extra: Sequence[str] = (),
    sections: Sequence[str] = (),
) -> BatchRun:
    """Run ``path`` as one batch through lowtide, through the ``openai`` SDK; it must complete."""
    with lowtide_for(workdir, eng, max_concurrency, backend_extra, sections) as lt:
        c = client(lt)
        run = run_batch(c, upload(c, path), poll=0.1, timeout=7200)
    check_completed(run, n)
    return run


# ------------------------------------------------------------------------------- bare loops


def _runner() -> asyncio.Runner:
    try:
        import uvloop  # lowtide serve runs on uvloop too

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


@dataclass(frozen=True, slots=True)
class LoopResult:
    sent: int  # requests sent, 429s included
    ok: int
    refused: int  # 429s
    seconds: float  # real seconds


async def _retry_wait(resp: aiohttp.ClientResponse) -> float:
    ms = resp.headers.get("retry-after-ms")
    if ms is not None:
        return float(ms) / 1000
    return float(resp.headers.get("retry-after", "1"))


async def _send_all(
    url: str, bodies: Sequence[bytes], concurrency: int, headers: dict[str, str]
) -> LoopResult:
    """POST each body in order, ``concurrency`` at a time; a 429 waits its Retry-After and is
    sent again (the wait holds its slot, as a naive client's would)."""
    todo = iter(bodies)
    sent = ok = refused = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent, ok, refused
        for body in todo:
            while True:
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    sent += 1
                    if resp.status == 429:
                        refused += 1
                        await asyncio.sleep(await _retry_wait(resp))
                        continue
                    if resp.status != 200:
                        raise RuntimeError(f"the engine answered {resp.status}")
                    ok += 1
                    break

    t0 = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as s:
        await asyncio.gather(*(worker(s) for _ in range(concurrency)))
    return LoopResult(sent, ok, refused, time.perf_counter() - t0)


_JSON = {"Content-Type": "application/json", "Authorization": "Bearer EMPTY"}


def bare_loop(
    eng: SimEngineProcess, bodies: Sequence[dict[str, Any]], concurrency: int
) -> LoopResult:
    """What a batch client does at its barest: the bodies in order, at a fixed concurrency."""
    data = [orjson.dumps(b) for b in bodies]
    with _runner() as runner:
        return runner.run(_send_all(eng.base_url + "/chat/completions", data, concurrency, _JSON))


class _Window:
    """A client-side rolling window of requests and tokens, in real seconds."""

    def __init__(self, rpm: int, tpm: int, window_s: float) -> None:
        self.rpm, self.tpm, self.window_s = rpm, tpm, window_s
        self.log: list[tuple[float, int]] = []

    def wait(self, now: float, tokens: int) -> float:
        self.log = [(t, n) for t, n in self.log if t > now - self.window_s]
        waits = [0.0]
        if self.rpm and len(self.log) + 1 > self.rpm:
            waits.append(self.log[len(self.log) - self.rpm][0] + self.window_s - now)
        used = sum(n for _, n in self.log)
        if self.tpm and used + tokens > self.tpm:
            excess, freed = used + tokens - self.tpm, 0
            for t, n in self.log:
                freed += n
                if freed >= excess:
                    waits.append(t + self.window_s - now)
                    break
        return max(waits)


async def _room_for(window: _Window, cost: int) -> None:
    """Sleep until the window has room for a request of ``cost`` tokens."""
    for _ in range(1_000_000):
        delay = window.wait(time.monotonic(), cost)
        if delay <= 0:
            return
        await asyncio.sleep(delay)


async def _send_paced(
    url: str,
    bodies: Sequence[bytes],
    costs: Sequence[int],
    concurrency: int,
    window: _Window,
) -> LoopResult:
    """Send in order, each request only once the client's own window has room for it."""
    lock = asyncio.Lock()
    todo = iter(zip(bodies, costs, strict=True))
    sent = ok = refused = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent, ok, refused
        for body, cost in todo:
            while True:
                async with lock:  # one request at a time through the window, in order
                    await _room_for(window, cost)
                    window.log.append((time.monotonic(), cost))
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    sent += 1
                    if resp.status == 429:
                        refused += 1
                        await asyncio.sleep(await _retry_wait(resp))
                        continue
                    ok += 1
                    break

    t0 = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, headers=_JSON, timeout=timeout) as s:
        await asyncio.gather(*(worker(s) for _ in range(concurrency)))
    return LoopResult(sent, ok, refused, time.perf_counter() - t0)


def paced_loop(
    eng: SimEngineProcess,
    bodies: Sequence[dict[str, Any]],
    costs: Sequence[int],
    concurrency: int,
    margin: float = 0.02,
) -> LoopResult:
    """A client that keeps to the engine's rpm/tpm itself (its window ``margin`` longer, for
    the time a request takes to reach the engine), so that it is never refused."""
    cfg = eng.config
    window = _Window(cfg.rpm, cfg.tpm, 60.0 / cfg.speed * (1 + margin))
    data = [orjson.dumps(b) for b in bodies]
    url = eng.base_url + "/chat/completions"
    with _runner() as runner:
        return runner.run(_send_paced(url, data, costs, concurrency, window))


class Interactive:
    """A user beside the batch: requests straight to the engine, tagged ``interactive``, at
    random (Poisson) times averaging ``rate`` per model second, until the ``with`` ends."""

    def __init__(
        self, eng: SimEngineProcess, bodies: Sequence[dict[str, Any]], rate: float, seed: int = 7
    ) -> None:
        self._url = eng.base_url + "/chat/completions"
        self._bodies = [orjson.dumps(b) for b in bodies]
        self._mean_gap_s = 1.0 / (rate * eng.config.speed)  # real seconds
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="interactive", daemon=True)
        self.sent = 0
        self.failed: list[str] = []

    def __enter__(self) -> Interactive:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.failed:
            raise RuntimeError(f"interactive requests failed: {self.failed[:3]}")

    def _main(self) -> None:
        with _runner() as runner:
            runner.run(self._send())

    async def _send(self) -> None:
        headers = {**_JSON, TAG_HEADER: INTERACTIVE}
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(headers=headers) as session:

            async def one(body: bytes) -> None:
                async with session.post(self._url, data=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        self.failed.append(f"status {resp.status}")

            while not self._stop.is_set():
                await asyncio.sleep(self._rng.expovariate(1.0 / self._mean_gap_s))
                task = asyncio.create_task(one(self._bodies[self.sent % len(self._bodies)]))
                self.sent += 1
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)


# ------------------------------------------------------------------------------- engine figures


@dataclass(frozen=True, slots=True)
class Window:
    """What the engine saw of one sender's requests (model seconds)."""

    requests: int
    first_arrival: float
    last_finish: float
    completion_tokens: int

    @property
    def seconds(self) -> float:
        return self.last_finish - self.first_arrival

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.nan


def window(records: Sequence[dict[str, Any]], tag: str = "default") -> Window:
    mine = [r for r in records if r["tag"] == tag]
    if not mine:
        raise RuntimeError(f"the engine saw no request tagged {tag!r}")
    return Window(
        len(mine),
        min(r["arrival"] for r in mine),
        max(r["finish"] for r in mine),
        sum(r["completion_tokens"] for r in mine),
    )


def latencies(
    records: Sequence[dict[str, Any]], tag: str, within: Window | None = None
) -> list[float]:
    """Latencies of ``tag``'s requests (model s), only those that arrived ``within`` a window."""
    out = []
    for r in records:
        if r["tag"] != tag:
            continue
        if within is not None and not within.first_arrival <= r["arrival"] <= within.last_finish:
            continue
        out.append(r["finish"] - r["arrival"])
    return out


def p99(values: Sequence[float]) -> float:
    return percentile(values, 99)


def behind_note(name: str, behind_max_s: float, speed: float) -> str:
    """Whether the engine kept up with real time: if not, answers reached senders late."""
    return (
        f"{name}: the engine's stepping fell at most {behind_max_s:.3f} model s "
        f"({behind_max_s / speed * 1000:.0f} ms real) behind the real clock at speed {speed:g}"
    )
