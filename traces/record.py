"""Record routing traces from Hugging Face `transformers` MoE models (`moe-trace record`).

The model generates greedily from each prompt while forward hooks listen:
  - a forward pre-hook on the top-level model counts generation steps: step 0 is the prefill (every prompt token,
    phase `prefill`), each later step one new token per sequence (phase `decode`). The last generated token is
    never routed, so a prompt of P tokens and N new tokens gives P + N − 1 routed tokens (fewer if the sequence
    generates an end-of-sequence token: that token and everything after it are not recorded, as a server would
    stop the sequence there; generate() keeps stepping it only because its batch is still running).
  - a forward hook on each router module records the router's own top-k ids, in router order, and its gate
    weights exactly as it returned them (never re-derived from logits: DeepSeek-V3's grouped top-k with score
    correction differs from top-k of the logits). Positions the attention mask marks as padding are dropped.
  - a forward hook on the decoder layer before each MoE layer computes the speculative next-layer prediction.
  - with `candidates` = r > 0, the router hook also keeps the router's runners-up for cache-aware routing: columns
    `candidates` (the routed ids in router order, then the r experts of highest softmax probability among the others)
    and `candidate_scores` (the softmax of the router's logits over all experts at those ids). The softmax is the
    probability Mixtral, Qwen, OLMoE and DeepSeek-V2 route by, taken before their top-k renormalisation or scaling;
    for routers that score otherwise (DeepSeek-V3's sigmoid with group limits, GPT-OSS's softmax over the top-k
    logits) it is the same ranking of the logits in common units, and a runner-up may lie outside a group the router
    allowed.

Routers are found by module path and class name (transformers 5: `…layers.<i>.mlp.gate` or `…layers.<i>.mlp.router`,
a class whose name ends in `Router`), which covers Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3, GPT-OSS and
Phi-MoE. Each returns `(router_logits [N, E], topk_weights [N, k], topk_indices [N, k])` for N = batch × tokens.
Dense layers have no router, so MoE layers are numbered 0..moe_layers−1 and `moe_layer_ids` keeps their model
layer numbers.

Column `pred_speculative` (what a pre-gating prefetcher such as mixtral-offloading's sees): the row of (token t,
MoE layer j) holds the ids that layer j's router picks when it is applied to layer j's pre-MoE norm
(`post_attention_layernorm`) of the *output of the decoder layer just before it* (model layer
`moe_layer_ids[j] − 1`, which may be a dense layer), for the same token t. So the prediction for layer j sits on
layer j's own row, beside the ids it predicts, and it is known one decoder layer before layer j routes. The first
row of a token whose MoE layer is model layer 0 holds null (no layer before it). The norm and router are called
through `.forward()` so that no module hook (ours or transformers' own output recorders) fires for them.

Left padding with the attention mask keeps batched routing equal to one-prompt-at-a-time routing up to floating
point: a near-tie between two experts may resolve differently in a batch of different shape.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from tqdm import tqdm

from simulator.errors import InputError
from simulator.model import MoEModel
from traces.format import PHASES, TraceChunk, TraceMeta
from traces.importers import write_chunks

RECORDER_VERSION = 1
SPECULATIVE = "speculative"
"""Name of the prediction column (`pred_speculative`) holding the speculative next-layer prediction."""
ROUTER_PATH = re.compile(r"^(?P<stack>(?:.+\.)?layers)\.(?P<layer>\d+)\.mlp\.(?:gate|router)$")
PRE_MOE_NORM = "post_attention_layernorm"
ROUTER_CONFIG_KEYS = ("norm_topk_prob", "routed_scaling_factor", "topk_method", "n_group", "topk_group",
                      "scoring_func", "router_aux_loss_coef", "router_jitter_noise")
"""Config keys that say how a family's gate weights were formed; copied into the provenance where present."""
PREFILL, DECODE = PHASES.index("prefill"), PHASES.index("decode")


@dataclass
class MoELayer:
    """One MoE layer of a model: its router and what the speculative prediction for it needs."""

    layer_id: int
    """Model (decoder) layer number."""
    path: str
    router: torch.nn.Module
    norm: torch.nn.Module | None
    """The decoder layer's pre-MoE norm, applied to the previous layer's output for the speculative prediction."""
    previous: torch.nn.Module | None
    """Decoder layer `layer_id − 1`, whose output the speculative prediction starts from; None for layer 0."""
    experts: torch.nn.Module | None
    """The routed experts (`mlp.experts`), to count their parameters."""


@dataclass
class RecordSummary:
    """What a recording wrote, for the command line to report."""

    path: Path
    rows: int
    sequences: int
    tokens: int
    prefill_tokens: int
    decode_tokens: int
    seconds: float
    model: MoEModel


def find_moe_layers(model: torch.nn.Module) -> list[MoELayer]:
    """The model's MoE layers in layer order, found by router module path and class name."""
    found: dict[str, list[tuple[int, str, torch.nn.Module]]] = {}
    for path, module in model.named_modules():
        match = ROUTER_PATH.match(path)
        if match and type(module).__name__.endswith("Router"):
            found.setdefault(match["stack"], []).append((int(match["layer"]), path, module))
    if not found:
        raise InputError(f"model: {type(model).__name__} has no router modules (class name ending in 'Router' at "
                         f"layers.<i>.mlp.gate or layers.<i>.mlp.router); the recorder supports decoder-only "
                         f"transformers MoE models")
    if len(found) > 1:
        raise InputError(f"model: routers in several layer stacks ({', '.join(sorted(found))}); the recorder supports "
                         f"one decoder stack")
    stack_path, routers = next(iter(found.items()))
    stack = model.get_submodule(stack_path)
    layers = []
    for layer_id, path, router in sorted(routers, key=lambda r: r[0]):
        decoder = stack[layer_id]
        layers.append(MoELayer(
            layer_id=layer_id,
            path=path,
            router=router,
            norm=getattr(decoder, PRE_MOE_NORM, None),
            previous=stack[layer_id - 1] if layer_id > 0 else None,
            experts=getattr(decoder.mlp, "experts", None),
        ))
    return layers


def describe_model(model: torch.nn.Module, layers: list[MoELayer], name: str | None = None) -> MoEModel:
    """The model's MoE shape from its config and modules, counted in MoE layers only.

    `param_bytes` is the element size of the loaded expert weights; `non_expert_params_per_layer` is every
    parameter that is neither a routed expert nor an embedding (attention, norms, routers, shared experts and the
    dense layers), spread over the MoE layers, as the presets fold them.
    """
    config = model.config
    router = layers[0].router
    experts = {int(getattr(l.router, "num_experts", 0) or _config_int(config, "num_local_experts", "num_experts", "n_routed_experts")) for l in layers}
    top_k = {int(getattr(l.router, "top_k", 0) or _config_int(config, "num_experts_per_tok", "moe_topk")) for l in layers}
    if len(experts) != 1 or len(top_k) != 1:
        raise InputError(f"model: MoE layers differ in experts {sorted(experts)} or top-k {sorted(top_k)}; the trace format needs one shape")
    hidden = int(config.hidden_size)
    ffn = int(getattr(config, "moe_intermediate_size", None) or config.intermediate_size)
    shared = int(getattr(config, "n_shared_experts", None) or (1 if getattr(config, "shared_expert_intermediate_size", 0) else 0))
    (n_experts,), (k,) = experts, top_k

    params = {id(p): p for p in model.parameters()}
    routed_ids = {id(p) for l in layers if l.experts is not None for p in l.experts.parameters()}
    routed = sum(params[i].numel() for i in routed_ids)
    routed += sum(n_experts * 3 * hidden * ffn for l in layers if l.experts is None)
    embed_ids = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None for p in m.parameters()}
    total = sum(p.numel() for p in params.values())
    non_expert = total - routed - sum(params[i].numel() for i in embed_ids)
    sample = next((params[i] for i in routed_ids), router.weight)
    return MoEModel(
        name=name or Path(getattr(config, "_name_or_path", "") or "").name or config.model_type,
        moe_layers=len(layers),
        experts_per_layer=n_experts,
        top_k=k,
        shared_experts=shared,
        hidden_size=hidden,
        expert_intermediate_size=ffn,
        param_bytes=float(sample.element_size()),
        non_expert_params_per_layer=max(0, non_expert // len(layers)),
        gated=True,
    )


def record(
    model,
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    output: str | Path,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    device: str = "auto",
    *,
    progress: bool = True,
    provenance: dict | None = None,
    candidates: int = 0,
) -> RecordSummary:
    """Generate from `prompts` with `model` and write the routing trace to `output` (atomically).

    Args:
        model: a transformers causal-LM MoE model (it is put in eval mode and, unless already dispatched, moved to
            `device`).
        tokenizer: turns text prompts into ids; None when `prompts` are lists of token ids already.
        prompts: texts, or token-id lists; sequence i of the trace is prompt i.
        max_new_tokens: tokens generated per prompt (≥ 1; 1 records the prefill only).
        batch_size: prompts per generate() call, left-padded to the longest.
        device: "auto" (CUDA when torch sees a GPU, else CPU), "cpu", "cuda" or "cuda:N".
        provenance: extra provenance entries (e.g. where the prompts came from).
        candidates: runners-up r kept per row beyond the top-k (0: no candidates columns).
    """
    if max_new_tokens < 1:
        raise InputError(f"record: max_new_tokens {max_new_tokens} must be at least 1")
    if batch_size < 1:
        raise InputError(f"record: batch_size {batch_size} must be at least 1")
    if not prompts:
        raise InputError("record: no prompts")
    device = resolve_device(device)
    if not getattr(model, "hf_device_map", None):
        model.to(device)
    model.eval()
    layers = find_moe_layers(model)
    shape = describe_model(model, layers)
    if not 0 <= candidates <= shape.experts_per_layer - shape.top_k:
        raise InputError(f"record: candidates {candidates} must be 0..{shape.experts_per_layer - shape.top_k} (experts "
                         f"{shape.experts_per_layer} less top_k {shape.top_k})")
    token_lists = [_token_ids(tokenizer, p, i) for i, p in enumerate(prompts)]
    pad_id = _pad_id(model, tokenizer)
    eos_ids = _eos_ids(model)
    speculative = all(l.norm is not None for l in layers)
    meta = TraceMeta(model=shape, moe_layer_ids=[l.layer_id for l in layers], provenance={
        **_provenance(model, layers, device, max_new_tokens, batch_size, len(prompts), eos_ids, speculative),
        **({"candidates": f"top_k + {candidates} per row: the routed ids in router order, then the {candidates} others "
                          "of highest softmax(router logits); candidate_scores: softmax(router logits) over all "
                          "experts at those ids"} if candidates else {}),
        **(provenance or {}),
    })
    capture = _Capture(layers, eos_ids, speculative, candidates)
    counts = {PREFILL: 0, DECODE: 0}

    def chunks() -> Iterator[TraceChunk]:
        bar = tqdm(total=len(token_lists), unit="prompt", desc="record", disable=not progress)
        try:
            for first in range(0, len(token_lists), batch_size):
                batch = token_lists[first:first + batch_size]
                ids, mask = _left_pad(batch, pad_id, model.device)
                capture.begin(mask)
                with torch.no_grad():
                    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                   num_beams=1, pad_token_id=pad_id, use_cache=True)
                chunk = capture.assemble(first)
                for phase in counts:
                    counts[phase] += int(np.count_nonzero(chunk.phase == phase)) // len(layers)
                bar.update(len(batch))
                yield chunk
        finally:
            bar.close()

    start = time.perf_counter()
    handles = capture.attach(model)
    try:
        rows, sequences, tokens = write_chunks(output, meta, chunks(), weights=True, token_id=True, phase=True,
                                               predictions=[SPECULATIVE] if speculative else [],
                                               candidates=shape.top_k + candidates if candidates else 0)
    finally:
        for handle in handles:
            handle.remove()
    return RecordSummary(Path(output), rows, sequences, tokens, counts[PREFILL], counts[DECODE],
                         time.perf_counter() - start, shape)


DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def load_pretrained(name: str, dtype: str = "auto", allow_download: bool = False):
    """(model, tokenizer) from a local folder or the user's hub cache; nothing is downloaded unless allowed."""
    if dtype not in DTYPES:
        raise InputError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    where = "local folder or hub cache" if not allow_download else "hub"
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(name, dtype=DTYPES[dtype], local_files_only=not allow_download)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, local_files_only=not allow_download)
    except (OSError, ValueError, KeyError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        hint = "" if allow_download else " (nothing is downloaded without --allow-download)"
        raise InputError(f"{name}: model: cannot load from the {where}{hint}: {text[:300]}") from None
    return model, tokenizer


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" is CUDA when torch sees a GPU and the CPU otherwise; a CUDA device without a GPU is refused."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device: {device!r} is not a torch device (auto, cpu, cuda, cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device: {device!r} asked for, but torch sees no CUDA GPU here")
    return resolved


@dataclass
class _Step:
    """What one forward pass (one generation step) of a batch recorded."""

    valid: torch.Tensor
    """[B, S] bool: a real token of an unfinished sequence (not padding, not at or after end-of-sequence)."""
    positions: torch.Tensor
    """[B, S] position of each token among its sequence's real tokens."""
    token_ids: torch.Tensor
    ids: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    predicted: list = field(default_factory=list)
    candidates: list = field(default_factory=list)
    scores: list = field(default_factory=list)


class _Capture:
    """The hooks and what they gather for the batch being generated."""

    def __init__(self, layers: list[MoELayer], eos_ids: list[int], speculative: bool, candidates: int = 0):
        self.layers = layers
        self.eos_ids = eos_ids
        self.speculative = speculative
        self.candidates = candidates
        self.steps: list[_Step] = []
        self.mask: torch.Tensor | None = None
        self.done: torch.Tensor | None = None

    def attach(self, model) -> list:
        handles = [model.register_forward_pre_hook(self._on_step, with_kwargs=True)]
        for j, layer in enumerate(self.layers):
            handles.append(layer.router.register_forward_hook(self._router_hook(j)))
            if self.speculative and layer.previous is not None:
                handles.append(layer.previous.register_forward_hook(self._speculative_hook(j)))
        return handles

    def begin(self, mask: torch.Tensor) -> None:
        """A new batch; `mask` is its prompts' attention mask (left padding is 0)."""
        self.steps = []
        self.mask = mask.detach().cpu().bool()
        self.done = torch.zeros(len(mask), dtype=torch.bool)

    def _on_step(self, module, args, kwargs) -> None:
        # The mask is kept here rather than read from the call: generate() leaves it out when nothing is padded.
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise RuntimeError("record: generate() called the model without input_ids")
        ids = input_ids.detach().cpu()
        batch, width = ids.shape
        if self.steps:  # decode: every sequence appends the token the previous step generated
            self.mask = torch.cat([self.mask, torch.ones((batch, width), dtype=torch.bool)], dim=1)
        elif width != self.mask.shape[1]:
            raise RuntimeError(f"record: the prefill has {width} positions, the prompts {self.mask.shape[1]}")
        real = self.mask[:, -width:]
        positions = self.mask.long().cumsum(dim=1)[:, -width:] - 1
        if self.steps:  # a sequence ends at an end-of-sequence token, which is not routed
            ended = torch.isin(ids[:, -1], torch.tensor(self.eos_ids, dtype=ids.dtype)) if self.eos_ids else torch.zeros(batch, dtype=torch.bool)
            self.done |= ended
            real = real & ~self.done[:, None]
        n = len(self.layers)
        self.steps.append(_Step(real, positions, ids, [None] * n, [None] * n, [None] * n, [None] * n, [None] * n))

    def _router_hook(self, j: int):
        def hook(module, args, output):
            step = self.steps[-1]
            if step.ids[j] is not None:
                raise RuntimeError(f"record: the router of layer {self.layers[j].layer_id} ran twice in one forward pass")
            _, weights, ids = output[:3]
            step.ids[j] = self._per_token(ids, step, j).to(torch.int32)
            step.weights[j] = self._per_token(weights, step, j).float()
            if self.candidates:
                probs = self._per_token(output[0], step, j).float().softmax(dim=-1)
                routed = step.ids[j].long()
                runners = probs.scatter(-1, routed, -1.0).topk(self.candidates, dim=-1).indices  # routed ones left out
                ids = torch.cat([routed, runners], dim=-1)
                step.candidates[j] = ids.to(torch.int32)
                step.scores[j] = probs.gather(-1, ids)
        return hook

    def _speculative_hook(self, j: int):
        layer = self.layers[j]

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            x = layer.norm.forward(hidden.reshape(-1, hidden.shape[-1]))
            ids = layer.router.forward(x)[2]
            self.steps[-1].predicted[j] = self._per_token(ids, self.steps[-1], j).to(torch.int32)
        return hook

    def _per_token(self, values: torch.Tensor, step: _Step, j: int) -> torch.Tensor:
        batch, width = step.token_ids.shape
        if values.shape[0] != batch * width and values.shape[:2] != (batch, width):
            raise RuntimeError(f"record: the router of layer {self.layers[j].layer_id} returned {tuple(values.shape)} "
                               f"for a batch of {batch}×{width} tokens")
        return values.detach().reshape(batch, width, -1).cpu()

    def assemble(self, first_sequence: int) -> TraceChunk:
        """The batch's rows in trace order (sequence, token, layer)."""
        n_layers = len(self.layers)
        parts = []
        for number, step in enumerate(self.steps):
            missing = [self.layers[j].layer_id for j in range(n_layers) if step.ids[j] is None]
            if missing:
                raise RuntimeError(f"record: generation step {number}: the routers of layers {missing} did not run")
            b, t = torch.nonzero(step.valid, as_tuple=True)
            ids = torch.stack(step.ids, dim=2)[b, t]  # [n, layers, k]
            k = ids.shape[-1]
            rows = len(b) * n_layers
            predicted = None
            if self.speculative:
                fill = torch.full_like(step.ids[0], -1)
                predicted = torch.stack([p if p is not None else fill for p in step.predicted], dim=2)[b, t]
            parts.append(dict(
                sequence=np.repeat(first_sequence + b.numpy(), n_layers),
                token=np.repeat(step.positions[b, t].numpy(), n_layers),
                layer=np.tile(np.arange(n_layers), len(b)),
                experts=ids.reshape(rows, k).numpy(),
                weights=torch.stack(step.weights, dim=2)[b, t].reshape(rows, -1).numpy(),
                token_id=np.repeat(step.token_ids[b, t].numpy(), n_layers),
                phase=np.full(rows, PREFILL if number == 0 else DECODE, dtype=np.int8),
                predicted=None if predicted is None else predicted.reshape(rows, k).numpy(),
                candidates=torch.stack(step.candidates, dim=2)[b, t].reshape(rows, -1).numpy() if self.candidates else None,
                scores=torch.stack(step.scores, dim=2)[b, t].reshape(rows, -1).numpy() if self.candidates else None,
            ))
        cat = {key: None if parts[0][key] is None else np.concatenate([p[key] for p in parts]) for key in parts[0]}
        order = np.lexsort((cat["layer"], cat["token"], cat["sequence"]))
        chunk = TraceChunk(
            sequence=cat["sequence"][order], token=cat["token"][order], layer=cat["layer"][order],
            experts=cat["experts"][order], weights=cat["weights"][order], token_id=cat["token_id"][order],
            phase=cat["phase"][order],
        )
        if self.candidates:
            chunk.candidates, chunk.candidate_scores = cat["candidates"][order], cat["scores"][order]
        if cat["predicted"] is not None:
            predicted = cat["predicted"][order].tolist()
            chunk.predictions = {SPECULATIVE: [p if p[0] >= 0 else None for p in predicted]}
        return chunk


def _token_ids(tokenizer, prompt, index: int) -> list[int]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise InputError(f"prompt {index}: a text prompt needs a tokenizer (or give token ids)")
        ids = list(tokenizer(prompt)["input_ids"])
    else:
        ids = [int(i) for i in prompt]
    if not ids:
        raise InputError(f"prompt {index}: has no tokens")
    return ids


def _left_pad(batch: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, tokens in enumerate(batch):
        ids[row, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
        mask[row, width - len(tokens):] = 1
    return ids.to(device), mask.to(device)


def _eos_ids(model) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _pad_id(model, tokenizer) -> int:
    """Any id works for padding (the mask hides it); prefer the tokenizer's, then the model's, then end-of-sequence."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(model.generation_config, "pad_token_id", None),
                      *(_eos_ids(model)[:1])):
        if candidate is not None:
            return int(candidate)
    return 0


def _config_int(config, *names: str) -> int:
    for name in names:
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise InputError(f"model: config has none of {', '.join(names)}")


def _provenance(model, layers, device, max_new_tokens, batch_size, prompts, eos_ids, speculative) -> dict:
    config = model.config
    first = layers[0]
    return {
        "source_format": "hf-transformers",
        "recorder": __name__,
        "recorder_version": RECORDER_VERSION,
        "model": getattr(config, "_name_or_path", "") or config.model_type,
        "model_type": config.model_type,
        "architecture": type(model).__name__,
        "router_class": type(first.router).__name__,
        "router_path": re.sub(r"layers\.\d+\.", "layers.<i>.", first.path),
        "router_config": {key: getattr(config, key) for key in ROUTER_CONFIG_KEYS if getattr(config, key, None) is not None},
        "weights": "gate weights exactly as the router returned them (see router_class and router_config for the family's convention)",
        "speculative": ("pred_speculative at row (token, MoE layer j): layer j's router applied to layer j's "
                        "post_attention_layernorm of model layer moe_layer_ids[j]-1's output for the same token; "
                        "null where j is model layer 0") if speculative else "not recorded (no post_attention_layernorm)",
        "decoding": "greedy",
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "padding": "left, masked positions dropped",
        "eos_token_ids": eos_ids,
        "prompts": prompts,
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
