"""Test support, for the tests, the benchmarks and scripts; never for the product itself.

``upstream`` (a fake OpenAI-compatible server with fault injection), ``engine_sim`` (a
simulated inference engine), ``harness`` (the real processes on loopback: the fake upstream,
``lowtide serve``, ``lowtide worker``), ``children`` (child processes that never outlive their
parent, with ``parentdeath``), ``forkserver`` (those children forked from a preloaded
interpreter), ``invariants`` (each line once, billed once) and ``postgres`` (throwaway
databases).
import-linter forbids every product module to import this package (pyproject.toml).
"""
