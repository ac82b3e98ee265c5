"""The recorder against tiny randomly initialised models of each MoE family, on the CPU.

Every expectation comes from an independent witness: hooks of the test's own on the top-level model (the ids each
forward pass saw), on the routers (their inputs and outputs) and on the decoder layers (their outputs). Routing is
checked twice: the trace's ids equal the router's own output, and as sets they equal the top-k recomputed here from
the captured router input and the router's weights (DeepSeek-V3: its grouped top-k with score-correction bias,
recomputed here too, which a plain top-k of the logits does not match). The speculative column is checked against
the next layer's top-k recomputed from the captured output of the layer before it.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from simulator.errors import InputError  # noqa: E402
from traces import cli  # noqa: E402
from traces.format import PHASES, TraceFile  # noqa: E402
from traces.record import SPECULATIVE, find_moe_layers, record, resolve_device  # noqa: E402

COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128, max_position_embeddings=256, num_experts_per_tok=2,
              eos_token_id=None, bos_token_id=None, pad_token_id=None)
DEEPSEEK_MLA = dict(num_key_value_heads=4, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)
FAMILIES = {
    # family: (config overrides, expected model layer numbers of the MoE layers)
    "mixtral": (dict(num_local_experts=8), [0, 1, 2]),
    "qwen2_moe": (dict(num_experts=8, moe_intermediate_size=32, shared_expert_intermediate_size=48, mlp_only_layers=[1]), [0, 2]),
    "qwen3_moe": (dict(num_experts=8, moe_intermediate_size=32, head_dim=16, norm_topk_prob=True), [0, 1, 2]),
    "olmoe": (dict(num_experts=8), [0, 1, 2]),
    "deepseek_v2": (dict(n_routed_experts=8, moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
                         q_lora_rank=None, **DEEPSEEK_MLA), [1, 2]),
    "deepseek_v3": (dict(n_routed_experts=8, moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
                         q_lora_rank=24, n_group=4, topk_group=2, **DEEPSEEK_MLA), [1, 2]),
    "gpt_oss": (dict(num_local_experts=8, head_dim=16, layer_types=["sliding_attention", "full_attention", "sliding_attention"]), [0, 1, 2]),
    "phimoe": (dict(num_local_experts=8), [0, 1, 2]),
}
AVAILABLE = [f for f in FAMILIES if f in transformers.CONFIG_MAPPING]
PROMPTS = [[5, 6, 7, 8, 9], [11, 12, 13], [20, 21, 22, 23, 24, 25, 26]]
NEW_TOKENS = 4
BATCH = 2  # batches [0, 1] (padded) and [2]


def tiny_model(family: str, seed: int = 0):
    overrides, _ = FAMILIES[family]
    config = transformers.AutoConfig.for_model(family, **{**COMMON, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms start at weight 1, which leaves top-k unchanged: make leaving one out visible
        for layer in model.model.layers:
            layer.post_attention_layernorm.weight.normal_(1, 0.5)
        if family == "deepseek_v3":  # a score-correction bias makes grouped top-k differ from top-k of the logits
            for layer in model.model.layers:
                if hasattr(layer.mlp, "gate"):
                    layer.mlp.gate.e_score_correction_bias.normal_(0, 0.05)
    return model


def router_of(decoder_layer):
    """The router module of a decoder layer, or None for a dense layer (found independently of the recorder)."""
    for name in ("gate", "router"):
        module = getattr(decoder_layer.mlp, name, None)
        if module is not None and type(module).__name__.endswith("Router"):
            return module
    return None


def independent_topk(family: str, router, x: torch.Tensor) -> torch.Tensor:
    """Top-k expert ids for router inputs x [N, H], recomputed from the router's weights."""
    logits = x.float() @ router.weight.float().T
    if getattr(router, "bias", None) is not None:
        logits = logits + router.bias.float()
    k = router.top_k
    if family != "deepseek_v3":
        return logits.topk(k, dim=-1).indices
    groups, keep = router.num_group, router.topk_group
    scores = logits.sigmoid() + router.e_score_correction_bias.float()
    group_score = scores.view(len(x), groups, -1).topk(2, dim=-1).values.sum(-1)
    chosen = torch.zeros(len(x), groups, dtype=torch.bool).scatter(1, group_score.topk(keep, dim=-1).indices, True)
    scores = scores.masked_fill(~chosen.repeat_interleave(scores.shape[1] // groups, dim=1), float("-inf"))
    return scores.topk(k, dim=-1).indices


class Witness:
    """The test's own capture of every forward pass: input ids, router inputs/outputs, decoder layer outputs."""

    def __init__(self, model):
        self.calls = []
        self.hidden = model.config.hidden_size
        self.handles = [model.register_forward_pre_hook(self._call, with_kwargs=True)]
        for i, layer in enumerate(model.model.layers):
            self.handles.append(layer.register_forward_hook(self._layer(i)))
            router = router_of(layer)
            if router is not None:
                self.handles.append(router.register_forward_hook(self._router(i)))

    def _call(self, module, args, kwargs):
        self.calls.append({"input_ids": kwargs["input_ids"].clone(), "router_in": {}, "router_out": {}, "layer_out": {}})

    def _router(self, i):
        def hook(module, args, output):
            self.calls[-1]["router_in"][i] = args[0].detach().reshape(-1, self.hidden).clone()
            self.calls[-1]["router_out"][i] = (output[1].detach().float().clone(), output[2].detach().clone())
        return hook

    def _layer(self, i):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            self.calls[-1]["layer_out"][i] = hidden.detach().reshape(-1, self.hidden).clone()
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def read(path, predictions=(SPECULATIVE,)):
    trace = TraceFile(path)
    rows = {}
    for c in trace.chunks(extras=True, predictions=list(predictions)):  # streaming validates every row
        for i in range(len(c)):
            rows[(int(c.sequence[i]), int(c.token[i]), int(c.layer[i]))] = dict(
                experts=c.experts[i].tolist(), weights=c.weights[i], token_id=int(c.token_id[i]),
                phase=PHASES[c.phase[i]], pred=c.predictions[SPECULATIVE][i] if predictions else None)
    return trace, rows


@pytest.fixture(scope="module", params=AVAILABLE)
def recorded(request, tmp_path_factory):
    family = request.param
    model = tiny_model(family)
    witness = Witness(model)
    path = tmp_path_factory.mktemp(family) / "trace.parquet"
    summary = record(model, None, PROMPTS, path, max_new_tokens=NEW_TOKENS, batch_size=BATCH, device="cpu", progress=False)
    witness.remove()
    return family, model, witness, summary, *read(path)


def expected_rows(model, witness):
    """(sequence, token) -> (forward call, flat index into that call's tokens, token id), from the witness alone."""
    out = {}
    call = 0
    for first in range(0, len(PROMPTS), BATCH):
        batch = PROMPTS[first:first + BATCH]
        width = max(map(len, batch))
        assert witness.calls[call]["input_ids"].shape == (len(batch), width)
        for r, prompt in enumerate(batch):
            for pos in range(len(prompt)):
                out[(first + r, pos)] = (call, r * width + width - len(prompt) + pos, prompt[pos])
        for step in range(1, NEW_TOKENS):
            ids = witness.calls[call + step]["input_ids"]
            assert ids.shape == (len(batch), 1)
            for r, prompt in enumerate(batch):
                out[(first + r, len(prompt) + step - 1)] = (call + step, r, int(ids[r, 0]))
        call += NEW_TOKENS
    assert call == len(witness.calls)
    return out


def test_families_under_test():
    assert len(AVAILABLE) >= 4, AVAILABLE


def test_shape_and_metadata(recorded):
    family, model, _, summary, trace, _ = recorded
    layer_ids = FAMILIES[family][1]
    m = trace.meta.model
    assert (m.moe_layers, m.experts_per_layer, m.top_k, m.hidden_size) == (len(layer_ids), 8, 2, 64)
    assert trace.meta.moe_layer_ids == layer_ids
    assert m.shared_experts == (1 if family in ("qwen2_moe", "deepseek_v2", "deepseek_v3") else 0)
    assert m.param_bytes == 4.0  # float32 weights
    assert trace.meta.provenance["model_type"] == family
    assert trace.meta.provenance["source_format"] == "hf-transformers"
    assert trace.has_weights and trace.has_token_id and trace.has_phase and trace.prediction_columns == [SPECULATIVE]
    tokens = sum(len(p) + NEW_TOKENS - 1 for p in PROMPTS)  # the last generated token is never routed
    assert (summary.tokens, summary.sequences, summary.rows) == (tokens, len(PROMPTS), tokens * len(layer_ids))
    assert (summary.prefill_tokens, summary.decode_tokens) == (sum(map(len, PROMPTS)), len(PROMPTS) * (NEW_TOKENS - 1))


def test_routing_phases_and_token_ids(recorded):
    family, model, witness, _, trace, rows = recorded
    layer_ids = trace.meta.moe_layer_ids
    routers = {i: router_of(model.model.layers[i]) for i in layer_ids}
    places = expected_rows(model, witness)
    assert len(rows) == len(places) * len(layer_ids)
    plain_topk_differs = 0
    for (seq, tok), (call, index, token_id) in places.items():
        prompt_len = len(PROMPTS[seq])
        for j, layer_id in enumerate(layer_ids):
            row = rows[(seq, tok, j)]
            assert row["token_id"] == token_id
            assert row["phase"] == ("prefill" if tok < prompt_len else "decode")
            weights, ids = witness.calls[call]["router_out"][layer_id]
            assert row["experts"] == ids[index].tolist()  # the router's own ids, in its order
            np.testing.assert_allclose(row["weights"], weights[index].numpy(), rtol=1e-6)
            x = witness.calls[call]["router_in"][layer_id][index:index + 1]
            assert sorted(row["experts"]) == sorted(independent_topk(family, routers[layer_id], x)[0].tolist())
            plain = x.float() @ routers[layer_id].weight.float().T
            plain_topk_differs += sorted(row["experts"]) != sorted(plain.topk(2).indices[0].tolist())
    if family == "deepseek_v3":
        assert plain_topk_differs > 0  # so the grouped recomputation above was really needed


def test_speculative_column(recorded):
    family, model, witness, _, trace, rows = recorded
    layer_ids = trace.meta.moe_layer_ids
    for (seq, tok), (call, index, _) in expected_rows(model, witness).items():
        for j, layer_id in enumerate(layer_ids):
            pred = rows[(seq, tok, j)]["pred"]
            if layer_id == 0:
                assert pred is None
                continue
            decoder = model.model.layers[layer_id]
            previous_out = witness.calls[call]["layer_out"][layer_id - 1][index:index + 1]
            x = decoder.post_attention_layernorm.forward(previous_out)
            assert sorted(pred) == sorted(independent_topk(family, router_of(decoder), x)[0].tolist())


def test_padding_does_not_change_routing(tmp_path):
    model = tiny_model("mixtral", seed=1)
    record(model, None, PROMPTS, tmp_path / "batched.parquet", max_new_tokens=NEW_TOKENS, batch_size=3, device="cpu", progress=False)
    record(model, None, PROMPTS, tmp_path / "single.parquet", max_new_tokens=NEW_TOKENS, batch_size=1, device="cpu", progress=False)
    _, batched = read(tmp_path / "batched.parquet")
    _, single = read(tmp_path / "single.parquet")
    assert batched.keys() == single.keys()
    assert all(batched[key]["experts"] == single[key]["experts"] and batched[key]["token_id"] == single[key]["token_id"]
               for key in batched)


def test_end_of_sequence_ends_recording(tmp_path):
    model = tiny_model("olmoe")
    record(model, None, PROMPTS, tmp_path / "free.parquet", max_new_tokens=NEW_TOKENS, batch_size=3, device="cpu", progress=False)
    _, free = read(tmp_path / "free.parquet")
    first_generated = free[(0, len(PROMPTS[0]), 0)]["token_id"]
    model.generation_config.eos_token_id = first_generated
    record(model, None, PROMPTS, tmp_path / "eos.parquet", max_new_tokens=NEW_TOKENS, batch_size=3, device="cpu", progress=False)
    _, ended = read(tmp_path / "eos.parquet")
    kept = set()  # each sequence as the free run recorded it, up to (not including) its first end-of-sequence input
    for seq, prompt in enumerate(PROMPTS):
        for tok in range(len(prompt) + NEW_TOKENS - 1):
            if tok >= len(prompt) and free[(seq, tok, 0)]["token_id"] == first_generated:
                break
            kept |= {(seq, tok, j) for j in range(3)}
    assert max(tok for seq, tok, _ in kept if seq == 0) == len(PROMPTS[0]) - 1  # its first generated token ended it
    assert ended.keys() == kept
    assert all(ended[key]["experts"] == free[key]["experts"] for key in kept)


def test_prefill_only_and_text_prompts(tmp_path):
    model = tiny_model("qwen3_moe")
    summary = record(model, None, PROMPTS, tmp_path / "p.parquet", max_new_tokens=1, batch_size=2, device="cpu", progress=False)
    assert summary.decode_tokens == 0 and summary.prefill_tokens == sum(map(len, PROMPTS))
    with pytest.raises(InputError, match="needs a tokenizer"):
        record(model, None, ["some text"], tmp_path / "t.parquet", device="cpu", progress=False)
    with pytest.raises(InputError, match="max_new_tokens"):
        record(model, None, PROMPTS, tmp_path / "t.parquet", max_new_tokens=0, device="cpu", progress=False)
    assert not (tmp_path / "t.parquet").exists()


def test_auto_device_is_the_cpu_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_dense_model_is_refused():
    config = transformers.AutoConfig.for_model("llama", **{k: v for k, v in COMMON.items() if k != "num_experts_per_tok"})
    with pytest.raises(InputError, match="no router modules"):
        find_moe_layers(transformers.AutoModelForCausalLM.from_config(config))


def save_tiny_checkpoint(folder):
    """A tiny OLMoE and a word-level tokenizer over 'w0'..'w61', saved as a local checkpoint (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tiny_model("olmoe").save_pretrained(folder)
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>"] + [f"w{i}" for i in range(126)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(folder)


def test_cli_records_a_local_checkpoint(tmp_path, capsys):
    save_tiny_checkpoint(tmp_path / "model")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"text": "w1 w2 w3"}\n{"text": "w10 w11"}\n')
    out = tmp_path / "out.parquet"
    rc = cli.main(["record", "--model", str(tmp_path / "model"), "--prompts", str(prompts), "-o", str(out),
                   "--max-new-tokens", "3", "--batch-size", "2", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    trace, rows = read(out)
    assert trace.meta.provenance["prompts_file"] == str(prompts)
    assert [rows[(0, t, 0)]["token_id"] for t in range(3)] == [3, 4, 5]  # w1 w2 w3
    assert [rows[(1, t, 0)]["token_id"] for t in range(2)] == [12, 13]
    assert len({key[:2] for key in rows}) == 3 + 2 + 2 * 2


def test_cli_never_downloads(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    rc = cli.main(["record", "--model", "no-such-org/no-such-model", "--prompts", str(prompts), "-o", str(tmp_path / "o.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot load" in err and "--allow-download" in err
