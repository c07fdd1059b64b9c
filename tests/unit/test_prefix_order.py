"""The order key (lowtide.domain.prefix) and the validator that computes it: lines that share a
prompt prefix are sent together, the longest first within a group; a short shared prefix makes
no group; ``prefix_order = false`` leaves file order."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import orjson

from lowtide.domain.prefix import LEVELS, PrefixOrder, estimate, level_hashes, prompt_bytes
from lowtide.domain.validation import RequestLine, Validator

CHAT = "/v1/chat/completions"
MODEL = "m"
_TEXT = """the of and to in is was for on that with as by at from it his an were are which this be
or has had not have but one new first also after who its they two their been more other report
market quarter revenue costs figures growth analysis summary customer product"""
_WORDS = _TEXT.split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def chat(system: str | None, user: str, max_tokens: int = 64) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    return {"model": MODEL, "messages": [*messages, {"role": "user", "content": user}],
            "max_tokens": max_tokens}  # fmt: skip


def line(i: int, body: dict[str, Any], url: str = CHAT) -> dict[str, Any]:
    return {"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}


def validate(
    bodies: Sequence[dict[str, Any]], url: str = CHAT, *, prefix_order: bool = True
) -> list[RequestLine]:
    v = Validator(url, lambda model: model == MODEL, prefix_order=prefix_order)
    v.feed(b"".join(orjson.dumps(line(i, b, url)) + b"\n" for i, b in enumerate(bodies)))
    result = v.finish()
    assert result.ok, result.errors
    return result.requests


def sent(requests: Sequence[RequestLine]) -> list[RequestLine]:
    """The requests in the order they are claimed (send order, then line)."""
    return sorted(requests, key=lambda r: (r.send_order, r.line))


def runs(labels: Sequence[object]) -> int:
    """How many runs of equal labels a sequence has (one per group when grouped)."""
    return sum(1 for i, label in enumerate(labels) if i == 0 or label != labels[i - 1])


# --- grouping --------------------------------------------------------------------------------


def test_lines_sharing_a_long_system_prompt_group_whatever_their_questions() -> None:
    rng = random.Random(1)
    systems = [f"You are assistant {k}. " + words(rng, 600) for k in range(5)]
    drawn = [rng.randrange(5) for _ in range(200)]  # shuffled, as a bulk file is
    requests = validate([chat(systems[k], f"Q{i}: " + words(rng, 20)) for i, k in enumerate(drawn)])
    prompt_of = {r.line: drawn[r.line - 1] for r in requests}
    in_order = [prompt_of[r.line] for r in sent(requests)]
    assert runs(in_order) == 5  # each prompt's lines one after another
    assert runs(drawn) > 100  # (they were not, in the file)
    for k in range(5):
        groups = {r.prefix_group for r in requests if prompt_of[r.line] == k}
        assert len(groups) == 1 and groups != {0}
    assert len({r.prefix_group for r in requests}) == 5
    assert sorted(r.send_order for r in requests) == list(range(200))  # a rank each


def test_within_a_group_longer_requests_go_first() -> None:
    rng = random.Random(2)
    system = words(rng, 600)
    outputs = [16, 512, 64, 2048, 128, 8]
    requests = validate([chat(system, "Same question?", n) for n in outputs])
    assert len({r.prefix_group for r in requests}) == 1
    assert [outputs[r.line - 1] for r in sent(requests)] == sorted(outputs, reverse=True)
    # The prompt counts as well as the output: a longer question, same max_tokens, goes first.
    requests = validate([chat(system, "Short?"), chat(system, "Long " + words(rng, 300) + "?")])
    assert [r.line for r in sent(requests)] == [2, 1]


def test_a_short_generic_system_prompt_before_distinct_documents_makes_no_group() -> None:
    rng = random.Random(3)
    generic = "You are a helpful assistant."
    bodies = [chat(generic, f"Document {i}: " + words(rng, 800), 10 + i) for i in range(30)]
    requests = validate(bodies)
    assert {r.prefix_group for r in requests} == {0}
    # Nothing to reuse: the longest first (JSON bytes / 4 + max_tokens).
    sizes = [estimate(bodies[r.line - 1], r.length) for r in sent(requests)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) > 20


def test_a_document_asked_several_questions_groups_inside_its_system_prompt() -> None:
    rng = random.Random(4)
    system = "Answer from the document. " + words(rng, 400)
    docs = ["Document A. " + words(rng, 1500), "Document B. " + words(rng, 1500)]
    other = "Another system prompt entirely. " + words(rng, 400)
    bodies = []
    for i in range(24):
        which = rng.randrange(3)
        if which == 2:
            bodies.append(chat(other, f"Q{i} " + words(rng, 10)))
        else:
            bodies.append(chat(system, docs[which] + f"\nQuestion {i}: " + words(rng, 10)))
    kinds = [
        "other" if b["messages"][0]["content"] == other else b["messages"][1]["content"][:10]
        for b in bodies
    ]
    requests = validate(bodies)
    in_order = [kinds[r.line - 1] for r in sent(requests)]
    assert runs(in_order) == 3, in_order  # each document's questions together...
    doc_positions = [i for i, kind in enumerate(in_order) if kind != "other"]
    assert doc_positions == list(range(doc_positions[0], doc_positions[-1] + 1))  # ...side by side
    group_of = {kinds[r.line - 1]: r.prefix_group for r in requests}
    assert len(set(group_of.values())) == 3


def test_what_comes_before_the_messages_in_a_line_does_not_matter() -> None:
    rng = random.Random(5)
    system = words(rng, 600)
    text = []
    for i in range(6):
        body: dict[str, Any] = {"max_tokens": 10 + i, "model": MODEL, "temperature": i / 10}
        body["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": "?"}]
        head = {"custom_id": f"c{i}" * (i + 1), "method": "POST", "url": CHAT}
        ordered = {**head, "body": body} if i % 2 else {"body": body, **head}
        text.append(orjson.dumps(ordered))
    v = Validator(CHAT, lambda model: True)
    v.feed(b"\n".join(text))
    requests = v.finish().requests
    assert len(requests) == 6 and len({r.prefix_group for r in requests}) == 1
    assert requests[0].prefix_group != 0


def test_prefix_order_off_leaves_file_order() -> None:
    rng = random.Random(6)
    systems = [words(rng, 600) for _ in range(3)]
    bodies = [chat(systems[i % 3], f"Q{i}") for i in range(12)]
    requests = validate(bodies, prefix_order=False)
    assert [(r.send_order, r.prefix_group) for r in requests] == [(0, 0)] * 12
    assert [r.line for r in sent(requests)] == list(range(1, 13))


def test_a_failed_file_gets_no_order() -> None:
    rng = random.Random(7)
    system = words(rng, 600)
    v = Validator(CHAT, lambda model: model == MODEL)
    v.feed(
        orjson.dumps(line(1, chat(system, "a"))) + b"\n" + orjson.dumps(line(2, chat(system, "b")))
    )
    v.feed(b"\nnot json\n")
    result = v.finish()
    assert not result.ok
    assert {r.send_order for r in result.requests} == {0}


# --- other endpoints -------------------------------------------------------------------------


def test_completions_group_by_prompt_text_and_by_token_ids() -> None:
    rng = random.Random(8)
    shared = words(rng, 400)
    bodies: list[dict[str, Any]] = [
        {"model": MODEL, "prompt": shared + f" question {i}", "max_tokens": 5} for i in range(4)
    ]
    tokens = list(range(1000, 1400))
    bodies += [{"model": MODEL, "prompt": [*tokens, i], "max_tokens": 5} for i in range(4)]
    bodies += [{"model": MODEL, "prompt": [shared + " in a list", "second prompt"]}]
    requests = validate(bodies, "/v1/completions")
    groups = [r.prefix_group for r in requests]
    assert len(set(groups[:4])) == 1 and len(set(groups[4:8])) == 1
    assert groups[0] != groups[4] and 0 not in groups[:8]
    assert groups[8] == groups[0]  # the first prompt of a list is its prefix


def test_responses_group_by_instructions() -> None:
    rng = random.Random(9)
    instructions = words(rng, 500)
    bodies = [
        {"model": MODEL, "instructions": instructions, "input": f"Question {i}"} for i in range(3)
    ]
    bodies.append({"model": MODEL, "input": [{"role": "user", "content": words(rng, 5)}]})
    requests = validate(bodies, "/v1/responses")
    groups = [r.prefix_group for r in requests]
    assert groups[0] == groups[1] == groups[2] != 0 and groups[3] == 0


def test_embeddings_have_no_prefix_group_and_go_longest_first() -> None:
    bodies = [{"model": MODEL, "input": "x" * n} for n in (10, 3000, 200)]
    requests = validate(bodies, "/v1/embeddings")
    assert {r.prefix_group for r in requests} == {0}
    assert [r.line for r in sent(requests)] == [2, 3, 1]


# --- the pieces ------------------------------------------------------------------------------


def test_level_hashes_stand_for_everything_before_their_end() -> None:
    a = b"x" * 300 + b"a" * 2000
    b = b"x" * 300 + b"b" * 2000
    ha, hb = level_hashes(a), level_hashes(b)
    assert len(ha) == len(hb) == 4  # 256, 512, 1024, 2048 fit in 2,300 bytes
    assert ha[0] == hb[0] and all(x != y for x, y in zip(ha[1:], hb[1:], strict=True))
    assert level_hashes(b"short") == [] and 0 not in level_hashes(bytes(70_000))
    assert len(level_hashes(bytes(70_000))) == len(LEVELS)


def test_prompt_bytes_of_a_chat_start_at_its_messages() -> None:
    body = chat("sys", "hi")
    raw = orjson.dumps({"custom_id": "x", "body": body})
    assert bytes(prompt_bytes(CHAT, raw, body) or b"") == raw[raw.index(b'"messages"') :]
    assert prompt_bytes("/v1/embeddings", raw, body) is None


def test_a_line_costs_a_few_bytes_while_the_file_streams() -> None:
    order = PrefixOrder(CHAT)
    body = chat("s" * 5000, "q")
    raw = orjson.dumps(body)
    for _ in range(1000):
        order.add(raw, body, len(raw))
    assert len(order) == 1000
    # Level hashes (8 bytes each) and an estimate: no copy of any text is kept.
    assert order._hashes.itemsize * len(order._hashes) == 1000 * len(LEVELS) * 8
    ranks, groups = order.ranks()
    assert sorted(ranks) == list(range(1000)) and len(set(groups)) == 1
