"""The SCH and mixtral-offloading reproductions run from one command on the shared traces (skipped without them)."""

from experiments.reproduce import mixtral_offloading, sch


def test_sch_reproduction_prints_ours_next_to_the_published_rows(shared_traces, capsys):
    assert sch.main(["--shared", str(shared_traces.parent.parent)]) == 0
    lines = capsys.readouterr().out.splitlines()
    ours = [line for line in lines[1:] if not line.startswith("  published")]
    assert len(ours) == 3
    for line in ours:
        values = [float(v) for v in line.split()[-6:]]
        assert all(0 < v < 1 for v in values)
        assert values[1] > values[0]  # SCH grows with the cache ratio


def test_mixtral_offloading_reproduction(shared_traces, capsys):
    assert mixtral_offloading.main(["--shared", str(shared_traces.parent.parent)]) == 0
    rows = {tuple(line.split()[:2]): line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert float(rows[("oracle", "fp16")][3]) == 1.0  # a perfect one-layer guess with unbounded bandwidth
    assert float(rows[("none", "int4")][5]) < float(rows[("none", "fp16")][5])  # smaller experts, less time
