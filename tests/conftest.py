"""Rules that every test of lowtide follows, and the check that keeps one of them.

Time. No test asserts that something happened within a wall-clock time that a loaded machine
can exceed: CI runs on shared two-core machines, three times slower than a developer's laptop
on a bad day, with other processes competing for both cores (``make test-stress`` reproduces
that). Time-dependent behaviour is tested

- with a clock the test controls (the code under test takes a clock or a ``now``),
- or by order and causality: this happened before that, that never happened, nothing came
  early (a lower bound on a delay is a causal fact; an upper bound is a guess about the
  machine),
- or, where a real duration is the point, against a baseline measured in the same test, on the
  same machine at the same moment, with a generous factor and a comment that says why.

Waiting. A test waits for something with an event, by polling with a deadline of tens of
seconds (the deadline only turns a hang into a failure; it is never the thing tested), or with
the process's own signals (a ready line, a socket that accepted). Never a fixed ``sleep``.

Leftovers. Every process, thread, port and temporary directory a test starts is gone when it
ends: processes are started through ``lowtide.testing.harness`` (they die with the test run even
when it is killed) and stopped by the fixture that started them. ``pytest_sessionfinish`` below
fails the run if any child process of pytest, or of its fork server, is still alive at the end,
and names it.

Starting. The Python children that can be are forked from a preloaded interpreter
(``lowtide.testing.forkserver``), not started afresh: about a second of CPU less for each of the
two hundred ``python -m lowtide`` a run starts, the benchmark and chaos scripts' included
(``pytest_configure`` below).

Signals. The processes the tests start get Ctrl-C's signals with their default meaning, as
from a shell, however the test run was started (``pytest_configure`` below).

Coverage. The Python processes a test starts are measured only where the test is marked
``measure_children``: the tests of a process's own command line, start and exit (one or two
per kind of process). Everything else a child runs (the API, the engine, the stores) is
measured where it runs in the tests' own processes. Measuring every child (about 240 in a
run) cost about 190 s of the suite's 710 s of CPU; with only the marked tests' children
measured, coverage is 93.3% where it was 93.4% (``pytest_runtest_setup`` below). A test marked
``untraced`` runs without coverage's tracer, which doubles the CPU of a large input: only
where smaller tests cover every line and branch it runs (``pytest_runtest_call`` below).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections import Counter
from collections.abc import Generator
from pathlib import Path

import coverage
import pytest

from lowtide.testing import children
from lowtide.testing.children import COVERAGE_START


def pytest_configure(config: pytest.Config) -> None:
    """A test run started with SIGINT or SIGQUIT ignored (a background job of a script, as
    ``nohup make test-stress &``) would hand that on to every process it starts, and the tests
    that interrupt one would wait for it for ever: handled here, they reach children as
    their defaults, since a handler is reset by ``exec`` but an ignored signal is not."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    os.environ[children.FORK_SERVER] = "1"  # for this process and the scripts it starts


# The tiers whose modules start processes and wait on them: a served lowtide, a fleet, a browser,
# schemathesis, llama.cpp.
PROCESS_TIERS = frozenset({"schema", "acceptance", "realengine", "browser"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first: those with the most tests marked ``slow``, then those of the
    process tiers, then the others, each part by its number of tests. pytest-xdist hands out
    whole modules in this order (``--no-loadscope-reorder``), so the many short modules fill
    the end of the run on every worker; in xdist's own order (by number of tests) a one-test
    module of 18 s started 163 s into a run of 187 s, and its worker ended last, alone."""
    sizes = Counter(item.path for item in items)
    slow = Counter(item.path for item in items if item.get_closest_marker("slow") is not None)

    def order(item: pytest.Item) -> tuple[int, bool, int]:
        tier = item.path.parent.name
        return -slow[item.path], tier not in PROCESS_TIERS, -sizes[item.path]

    items.sort(key=order)  # stable: the tests of a module keep their order


# Coverage's start-up for children (set by ``[tool.coverage.run] patch``), kept aside here and
# put back in the environment only for the tests marked ``measure_children``.
_child_coverage: dict[str, str] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the test's fixtures start anything: its children are measured or not."""
    for name in COVERAGE_START:
        if name in os.environ:
            _child_coverage[name] = os.environ.pop(name)
    if item.get_closest_marker("measure_children") is not None:
        os.environ.update(_child_coverage)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """The test's body without coverage's tracer, if it is marked ``untraced`` and coverage
    runs (pytest-cov's own ``no_cover`` fails under ``--no-cov``)."""
    measuring = coverage.Coverage.current()
    if measuring is None or item.get_closest_marker("untraced") is None:
        yield
        return
    measuring.stop()
    _stop_tracing_other_threads()
    yield
    measuring.start()


def _stop_tracing_other_threads() -> None:
    """From Python 3.12, a trace function set in any thread keeps every function of the process
    instrumented, and the thread without one pays for it too: an ``untraced`` test took 5.5
    times its CPU while the harness's threads (started under coverage) were alive. So the
    tracer is taken from every thread; those threads stay unmeasured from then on (their code
    ran measured before), and the ones started after the test are measured as usual."""
    settrace_all_threads = getattr(threading, "settrace_all_threads", None)
    if settrace_all_threads is not None:  # Python 3.12+; before it, tracing was per thread
        settrace_all_threads(None)


@pytest.hookimpl(hookwrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    yield  # after every session-scoped fixture has been torn down
    forked = children.close_fork_server()
    if not Path("/proc").is_dir():
        return
    left = children.live_children_of(os.getpid()) + forked
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in left)
    message = f"processes started by the tests outlived them:\n{lines}"
    if reporter is not None:
        reporter.write_line(message, red=True)
    for pid, _ in left:  # clean up after reporting, so the next run starts clean
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
