"""The LRU vs LFU reproduction runs from one command on the shared traces (skipped without ../shared); here on the
Mixtral trace alone, at mixtral-offloading's 4 of 8 experts, to stay fast."""

import pandas as pd

from experiments.reproduce import lru_vs_lfu
from traces.importers import vllm_jsonl


def test_lru_vs_lfu_reproduction_runs(shared_traces, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(lru_vs_lfu, "TRACES", {"mixtral": (vllm_jsonl, lru_vs_lfu.TRACES["mixtral_humaneval0"][1], (4,))})
    out = tmp_path / "table.csv"
    assert lru_vs_lfu.main(["--shared", str(shared_traces.parent.parent), "--out", str(out)]) == 0
    assert "mixtral" in capsys.readouterr().out
    (row,) = pd.read_csv(out).itertuples()
    assert row.belady_hit >= max(row.lru_hit, row.lfu_hit) and 0 < row.lru_hit < 1
