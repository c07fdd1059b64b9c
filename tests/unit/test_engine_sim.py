"""The simulated engine's model, driven step by step without any clock: FCFS and max_seqs,
block keys, the prefix cache and its LRU eviction, preemption, step costs, output lengths,
the rpm/tpm budget, the metrics and the /tokenize answer."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lowtide.testing.engine_sim import EngineConfig, EngineCore, Seq, wire
from lowtide.testing.engine_sim import metrics as sim_metrics
from lowtide.testing.engine_sim.blocks import BlockPool
from lowtide.testing.engine_sim.limits import RollingBudget
from lowtide.testing.engine_sim.tokens import block_keys, chat_tokens, text_tokens

# Round numbers, so that a step's cost can be worked out by hand: 10 ms + 1 ms per sequence,
# 1,000 prompt tokens per second.
COSTS = {"step_fixed_ms": 10.0, "step_per_seq_ms": 1.0, "prefill_tokens_per_s": 1000.0}


def engine(**overrides: object) -> EngineCore:
    settings: dict[str, object] = {"block_size": 4, "kv_tokens": 4096, "max_model_len": 1024}
    settings.update(COSTS)
    settings.update(overrides)
    return EngineCore(EngineConfig().updated(settings))


def prompt(name: str, n: int) -> tuple[int, ...]:
    """``n`` distinct tokens, the same for the same ``name``."""
    return tuple(hash((name, i)) % 100_000 for i in range(n))


def request(core: EngineCore, tokens: tuple[int, ...], max_tokens: int = 1, at: float = 0.0) -> Seq:
    return core.add(Seq.of(tokens, max_tokens, at, core.config.block_size))


def run_until_idle(core: EngineCore, limit: int = 10_000) -> list[Seq]:
    finished: list[Seq] = []
    for _ in range(limit):
        if core.next_step_at() is None:
            return finished
        finished += core.step().finished
    raise AssertionError("the engine did not become idle")


# ------------------------------------------------------------------ scheduling


def test_at_most_max_seqs_run_and_the_rest_are_admitted_first_come_first_served() -> None:
    core = engine(max_seqs=2)
    seqs = [request(core, prompt(f"p{i}", 8), max_tokens=3 + i % 2) for i in range(5)]
    admitted_order: list[Seq] = []
    while core.next_step_at() is not None:
        before = set(core.running)
        result = core.step()
        assert result.running <= 2 and len(core.running) <= 2
        admitted_order += [s for s in seqs if s.admitted_at == result.start and s not in before]
    assert admitted_order == seqs  # admitted in the order they arrived
    assert all(s.finished_at is not None for s in seqs)
    assert core.counters.peak_running == 2 and core.counters.peak_waiting == 3


def test_a_request_is_not_admitted_before_it_arrives() -> None:
    core = engine()
    first = request(core, prompt("a", 8), max_tokens=2, at=0.0)
    late = request(core, prompt("b", 8), max_tokens=1, at=5.0)
    core.step()
    assert first in core.running and late in core.waiting
    assert core.counters.peak_waiting == 0  # it waits for its arrival, not for room
    core.step()  # the first finishes; the next step waits for the late one's arrival
    assert core.next_step_at() == 5.0
    result = core.step()
    assert result.start == 5.0 and late.admitted_at == 5.0 and late.finished_at == result.end


def test_the_head_of_the_queue_blocks_the_rest_when_its_blocks_do_not_fit() -> None:
    # 8 blocks of 4 tokens. A long request holds 6 of them while it runs; the next one needs 4
    # and must wait, even though a small one behind it would fit: first come first served.
    core = engine(kv_tokens=32, max_model_len=32)
    long = request(core, prompt("long", 20), max_tokens=4)  # 20 + 4 tokens: 6 blocks at most
    core.step()
    big = request(core, prompt("big", 16), max_tokens=1)
    small = request(core, prompt("small", 4), max_tokens=1)
    core.step()
    assert big in core.waiting and small in core.waiting and long in core.running
    run_until_idle(core)
    assert big.admitted_at is not None and small.admitted_at is not None
    assert big.admitted_at <= small.admitted_at
    assert long.finished_at is not None and long.finished_at <= big.admitted_at


def test_every_running_sequence_gets_one_token_per_step_and_stops_at_max_tokens() -> None:
    core = engine()
    seqs = [request(core, prompt(f"q{i}", 10), max_tokens=n) for i, n in enumerate((1, 4, 7))]
    results = []
    while core.next_step_at() is not None:
        results.append(core.step())
    assert [s.output for s in seqs] == [1, 4, 7]
    assert len(results) == 7
    for seq in seqs:
        assert seq.finished_at == results[seq.max_tokens - 1].end
        assert seq.first_token_at == results[0].end
    assert core.counters.generation_tokens == 12 and core.counters.finished == 3


# ------------------------------------------------------------------ step costs


def test_a_step_costs_a_fixed_part_a_part_per_sequence_and_its_uncached_prompt_tokens() -> None:
    core = engine()
    request(core, prompt("a", 100), max_tokens=3)
    request(core, prompt("b", 50), max_tokens=2)
    first = core.step()
    assert first.prefill_tokens == 150 and first.running == 2 and first.admitted == 2
    assert first.duration == pytest.approx(0.010 + 2 * 0.001 + 150 / 1000)
    second = core.step()
    assert second.start == pytest.approx(first.end)
    assert second.duration == pytest.approx(0.010 + 2 * 0.001)
    third = core.step()  # "b" finished after two tokens: one sequence left
    assert third.duration == pytest.approx(0.010 + 0.001)
    assert core.counters.busy_s == pytest.approx(first.duration + second.duration + third.duration)
    assert core.counters.seq_s == pytest.approx(
        2 * first.duration + 2 * second.duration + third.duration
    )


def test_a_cached_prefix_is_not_computed_again() -> None:
    core = engine()
    shared = prompt("system", 64)  # 16 full blocks
    first = request(core, (*shared, *prompt("q1", 10)))
    run_until_idle(core)
    second = request(core, (*shared, *prompt("q2", 10)))
    result = core.step()
    assert first.cached_tokens == 0
    assert second.cached_tokens == 64
    assert result.prefill_tokens == 10
    assert result.duration == pytest.approx(0.010 + 0.001 + 10 / 1000)
    assert core.counters.prefix_queries == 2 * 74 and core.counters.prefix_hits == 64


def test_a_fully_cached_prompt_still_computes_its_last_token_s_block() -> None:
    core = engine()
    tokens = prompt("exact", 64)  # exactly 16 blocks
    request(core, tokens)
    run_until_idle(core)
    again = request(core, tokens)
    result = core.step()
    assert again.cached_tokens == 60  # 15 blocks: vLLM needs the last token's logits
    assert result.prefill_tokens == 4


# ------------------------------------------------------------------ blocks and eviction


def test_a_block_key_stands_for_its_tokens_and_everything_before_them() -> None:
    a = prompt("a", 12)
    keys = block_keys(a, 4)
    assert len(keys) == 3 and len(set(keys)) == 3
    assert block_keys((*a, 1, 2), 4) == keys  # a partial last block has no key
    changed = (*a[:5], a[5] + 1, *a[6:])  # a token of the second block differs
    other = block_keys(changed, 4)
    assert other[0] == keys[0] and other[1] != keys[1] and other[2] != keys[2]
    # The same block after a different prefix is a different block.
    b = prompt("b", 4)
    assert block_keys((*b, *a[4:8]), 4)[1] != keys[1]
    assert block_keys(a, 4) == keys  # deterministic


def test_the_least_recently_freed_block_is_evicted_first_and_its_prefix_recomputed() -> None:
    # 10 blocks of 4 tokens; each prompt is 16 tokens (4 blocks) and runs for one step.
    core = engine(kv_tokens=40, max_model_len=40)
    a, b, c = prompt("a", 16), prompt("b", 16), prompt("c", 16)
    for tokens in (a, b):
        request(core, tokens)
        run_until_idle(core)
    assert core.pool.cached_blocks == 8 and core.evicted_blocks == 0
    # "c" needs 4 blocks: the 2 never used, then the 2 least recently freed. "a" was freed
    # first, its last blocks first (vLLM frees a sequence's blocks in reverse order).
    request(core, c)
    run_until_idle(core)
    assert core.evicted_blocks == 2
    assert len(core.pool.cached_prefix(block_keys(a, 4))) == 2
    assert len(core.pool.cached_prefix(block_keys(b, 4))) == 4
    assert len(core.pool.cached_prefix(block_keys(c, 4))) == 4
    again = request(core, a)
    result = core.step()
    assert again.cached_tokens == 8  # its first 2 blocks survived; the rest is recomputed
    assert result.prefill_tokens == 8


def test_a_prefix_evicted_before_its_reuse_is_computed_again_in_full() -> None:
    core = engine(kv_tokens=40, max_model_len=40)
    a = prompt("a", 16)
    request(core, a)
    run_until_idle(core)
    for other in ("x", "y"):  # 5 blocks each: together they take every block of "a"
        request(core, prompt(other, 20))
        run_until_idle(core)
    assert core.pool.cached_prefix(block_keys(a, 4)) == []
    again = request(core, a)
    result = core.step()
    assert again.cached_tokens == 0 and result.prefill_tokens == 16


def test_blocks_of_running_sequences_are_never_evicted() -> None:
    pool = BlockPool(4)
    held = pool.allocate(2)
    for i, block in enumerate(held):
        pool.register(block, 100 + i)
    spare = pool.allocate(2)
    pool.register(spare[0], 200)
    pool.release(spare)  # key 200 is cached but free: evictable
    assert not pool.can_allocate(3)
    assert len(pool.allocate(2)) == 2  # takes the two free blocks, evicting key 200
    assert pool.evicted == 1 and pool.cached_prefix([100, 101]) == held
    assert pool.cached_prefix([200]) == []
    assert pool.usage() == 1.0


def test_when_blocks_run_out_the_latest_admitted_sequence_is_preempted_and_recomputed() -> None:
    # 6 blocks of 4 tokens; two sequences of 8-token prompts each want 8 tokens of output, 4
    # blocks each by their end: they cannot both finish without one giving way.
    core = engine(kv_tokens=24, max_model_len=24)
    first = request(core, prompt("first", 8), max_tokens=8)
    second = request(core, prompt("second", 8), max_tokens=8)
    run_until_idle(core)
    assert first.preemptions == 0 and second.preemptions >= 1
    assert core.counters.preemptions == second.preemptions
    assert first.output == 8 and second.output == 8
    assert first.finished_at is not None and second.finished_at is not None
    assert first.finished_at < second.finished_at
    # Its prompt and output so far were computed again when it was admitted again.
    assert core.counters.prefill_tokens > 16


def test_empty_cache_reset_only_while_idle() -> None:
    core = engine()
    request(core, prompt("a", 16), max_tokens=2)
    core.step()
    with pytest.raises(RuntimeError):
        core.reset(cache=True)
    run_until_idle(core)
    core.reset(cache=True)
    assert core.pool.cached_blocks == 0 and core.counters.steps == 0


def test_every_request_fits_in_the_cache_or_the_engine_does_not_start() -> None:
    with pytest.raises(ValueError, match="larger than the KV cache"):
        EngineConfig(kv_tokens=1000, max_model_len=2048)


# ------------------------------------------------------------------ budgets


def test_the_request_budget_admits_rpm_per_rolling_minute_and_says_when_to_come_back() -> None:
    budget = RollingBudget(rpm=3, tpm=0)
    assert all(budget.try_admit(t, 10).ok for t in (0.0, 10.0, 20.0))
    refused = budget.try_admit(30.0, 10)
    assert not refused.ok and refused.limit == "requests"
    assert refused.retry_after == pytest.approx(30.0)  # the one admitted at 0 expires at 60
    assert not budget.try_admit(59.9, 10).ok
    assert budget.try_admit(60.0, 10).ok
    assert not budget.try_admit(60.0, 10).ok  # a refusal cost nothing, but the window is full


def test_the_token_budget_counts_prompt_and_max_tokens_at_admission() -> None:
    budget = RollingBudget(rpm=0, tpm=1000)
    assert budget.try_admit(0.0, 400).ok
    assert budget.try_admit(5.0, 500).ok
    refused = budget.try_admit(6.0, 300)  # 1,200 > 1,000: the first 400 must expire first
    assert not refused.ok and refused.limit == "tokens"
    assert refused.retry_after == pytest.approx(54.0)
    assert budget.try_admit(60.0, 300).ok
    too_big = budget.try_admit(200.0, 1001)
    assert not too_big.ok and too_big.retry_after == 60.0


def test_a_refusal_is_a_429_with_retry_after_in_real_seconds() -> None:
    config = EngineConfig(rpm=1, speed=10.0)
    budget = RollingBudget(config.rpm, config.tpm)
    budget.try_admit(0.0, 5)
    verdict = budget.try_admit(15.0, 5)
    error = wire.refused(verdict, config, 5)
    assert error.status == 429 and error.body()["error"]["code"] == "rate_limit_exceeded"
    assert error.body()["error"]["type"] == "requests"
    assert error.headers["retry-after-ms"] == "4501"  # 45 model s at 10x: 4.5 s, plus 1 ms
    assert error.headers["retry-after"] == "5"
    assert error.headers["x-ratelimit-limit-requests"] == "1"


# ------------------------------------------------------------------ wire, metrics


def test_max_tokens_max_completion_tokens_and_the_default() -> None:
    config = EngineConfig(default_max_tokens=17)
    messages = [{"role": "user", "content": "hello there"}]
    assert wire.chat_request({"messages": messages}, config).max_tokens == 17
    assert wire.chat_request({"messages": messages, "max_tokens": 5}, config).max_tokens == 5
    both = {"messages": messages, "max_tokens": 5, "max_completion_tokens": 9}
    assert wire.chat_request(both, config).max_tokens == 9
    for bad in (0, -1, "7", True, 1.5):
        with pytest.raises(wire.HttpError) as caught:
            wire.chat_request({"messages": messages, "max_tokens": bad}, config)
        assert caught.value.status == 400


def test_a_request_longer_than_max_model_len_is_refused_as_vllm_refuses_it() -> None:
    config = EngineConfig(max_model_len=64, kv_tokens=64)
    with pytest.raises(wire.HttpError, match="maximum context length is 64 tokens") as caught:
        wire.completion_request({"prompt": "word " * 60, "max_tokens": 10}, config)
    assert caught.value.status == 400


def test_tokenize_answers_as_vllm_does() -> None:
    config = EngineConfig(max_model_len=4096)
    answer = wire.tokenize({"prompt": "Hello, wonderful world"}, config)
    assert set(answer) >= {"count", "max_model_len", "tokens"}
    assert answer["max_model_len"] == 4096
    assert answer["count"] == len(answer["tokens"]) == 1 + 2 + 3 + 2  # BOS, 4-char pieces
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    chat = wire.tokenize({"messages": messages}, config)
    assert chat["tokens"] == list(chat_tokens(messages))
    # BOS, 2 x (3 header + content + end of turn), the assistant's 3-token header; "be" is
    # one token and "brief" two.
    assert chat["count"] == 1 + (3 + 3 + 1) + (3 + 1 + 1) + 3
    with pytest.raises(wire.HttpError):
        wire.tokenize({"prompt": 42}, config)


def test_text_tokens_are_one_per_four_characters_of_each_word() -> None:
    assert len(text_tokens("a bb ccc dddd eeeee")) == 1 + 1 + 1 + 1 + 2
    assert text_tokens("same words here") == text_tokens("same  words\nhere")
    assert text_tokens("same") != text_tokens("sane")


def _samples(text: str) -> dict[str, tuple[float, dict[str, str]]]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = (sample.value, sample.labels)
    return out


def test_metrics_carry_vllm_s_names_and_the_engine_s_state() -> None:
    core = engine(max_seqs=2, kv_tokens=400, max_model_len=400)
    shared = prompt("system", 40)
    request(core, (*shared, *prompt("x", 4)), max_tokens=1)
    run_until_idle(core)
    for i in range(3):
        request(core, (*shared, *prompt(f"y{i}", 4)), max_tokens=5)
    core.step()
    samples = _samples(sim_metrics.render(core, "m-1").decode())
    label = {"model_name": "m-1"}
    assert samples["vllm:num_requests_running"] == (2.0, label)
    assert samples["vllm:num_requests_waiting"] == (1.0, label)
    held = 100 - core.pool.free_blocks  # 100 blocks of 4 tokens
    assert samples["vllm:kv_cache_usage_perc"][0] == pytest.approx(held / 100)
    assert 0 < samples["vllm:kv_cache_usage_perc"][0] < 1
    assert samples["vllm:prefix_cache_queries_total"] == (float(3 * 44), label)
    assert samples["vllm:prefix_cache_hits_total"] == (float(2 * 40), label)
    assert math.isclose(samples["vllm:generation_tokens_total"][0], 3.0)
