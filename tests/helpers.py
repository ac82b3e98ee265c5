"""Small builders shared by tests: a toy model and trace chunks from plain lists."""

import numpy as np

from simulator.model import MoEModel
from traces.format import TraceChunk


def toy_model(layers=1, experts=4, top_k=2, hidden=2, ffn=2, param_bytes=2.0) -> MoEModel:
    """bytes_per_expert = 3·hidden·ffn·param_bytes (24 bytes with the defaults)."""
    return MoEModel("toy", layers, experts, top_k, 0, hidden, ffn, param_bytes, 0)


def chunk(rows, token_ids=None) -> TraceChunk:
    """rows: (sequence, token, layer, [expert ids]) in trace order; `token_ids`: one per row, if given."""
    seq, tok, lay, ex = zip(*rows)
    return TraceChunk(
        sequence=np.array(seq, dtype=np.int32),
        token=np.array(tok, dtype=np.int32),
        layer=np.array(lay, dtype=np.int16),
        experts=np.array(ex, dtype=np.int16),
        token_id=None if token_ids is None else np.array(token_ids, dtype=np.int32),
    )


def compose_run(*overrides: str):
    """The `RunConfig` that `moe-sim OVERRIDES` would run, composed in-process (the command line's checks included):
    fast enough to try many configurations."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from experiments.app import register_config_groups
    from experiments.config import RunConfig
    from experiments.overrides import CONF_DIR, rewrite_args

    register_config_groups()
    args = rewrite_args(list(overrides))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return RunConfig.from_hydra(compose(config_name="config", overrides=args))
