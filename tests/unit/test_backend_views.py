"""How the engines' reports on a backend become the one view the API shows."""

from __future__ import annotations

from lowtide.domain.backends import BackendReport, summarize, waiting_for

MODELS = {"gpu-1": ("m",), "gpu-2": ("m", "n"), "idle": ("z",)}


def report(
    backend: str, owner: str, up: bool, since: float, error: str | None = None
) -> BackendReport:
    return BackendReport(backend, owner, up, since, error, 8, 3, updated_at=since + 1)


def test_up_if_any_engine_reaches_it_down_if_none_unknown_if_none_reported() -> None:
    views = summarize(
        MODELS,
        [
            report("gpu-1", "w1", up=False, since=100, error="refused"),
            report("gpu-1", "w2", up=True, since=50),
            report("gpu-2", "w1", up=False, since=120, error="timed out"),
            report("gpu-2", "w2", up=False, since=110, error="reset"),
        ],
    )
    by_name = {v.name: v for v in views}
    assert [v.name for v in views] == ["gpu-1", "gpu-2", "idle"]  # the configured order
    assert by_name["gpu-1"].state == "up" and by_name["gpu-1"].since == 50
    assert by_name["gpu-1"].error == "refused"  # the last trouble stays visible
    assert by_name["gpu-2"].state == "down" and by_name["gpu-2"].since == 110
    assert by_name["gpu-2"].limit == 16 and by_name["gpu-2"].in_flight == 6  # the fleet's
    assert by_name["idle"].state == "unknown" and by_name["idle"].since is None


def test_a_batch_waits_only_when_every_backend_of_its_model_is_down() -> None:
    down_1 = report("gpu-1", "w", up=False, since=100, error="refused")
    down_2 = report("gpu-2", "w", up=False, since=90, error="reset")
    up_2 = report("gpu-2", "w", up=True, since=90)
    both_down = summarize(MODELS, [down_1, down_2])
    waiting = waiting_for(both_down, "m")
    assert waiting is not None and waiting.name == "gpu-2" and waiting.error == "reset"
    assert waiting_for(summarize(MODELS, [down_1, up_2]), "m") is None
    assert waiting_for(both_down, "z") is None  # its backend never reported: not known down
    assert waiting_for(both_down, "unserved") is None
