"""The MoE-Beyond reproduction runs from one command on the shared test set (skipped without ../shared)."""

from experiments.reproduce import moe_beyond


def test_moe_beyond_reproduction_runs(shared_traces, capsys):
    assert moe_beyond.main(["--shared", str(shared_traces.parent.parent)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if "prompt" in line and ("none" in line or "recorded" in line)]
    rates = {(r[0], r[-4]): float(r[-3]) for r in rows}
    assert len(rates) == 4
    for cache in ("reset", "kept"):
        assert rates[(cache, "recorded")] > rates[(cache, "none")] + 0.3  # the predictor's gain is large
