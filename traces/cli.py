"""`moe-trace`: import public routing traces, record them from transformers models, generate synthetic ones, describe any
trace, draw its one-pass hit-rate curve, and train and score expert predictors (`prefetch=learned`).

Every bad input ends the same way: one line `moe-trace: <file>: <field>: <value> ...` on stderr and exit status 2,
never a traceback. Trace outputs appear complete or not at all (TraceWriter writes to a temporary file).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path

from simulator import stack_distance
from simulator.cache import SCOPES
from simulator.errors import InputError
from simulator.expert_predictor import ExpertPredictor, Features, Training
from traces import info as trace_info
from traces import predictor_training
from traces.format import TraceFile
from traces.importers import IMPORTERS
from traces.model_file import load_model
from traces.prompts import load_prompts
from traces.synth import SynthParams, write_synthetic

SYNTH_DEFAULT_MODEL = "deepseek-v2-lite"
BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one InputError line instead of usage text."""

    def error(self, message: str):
        raise InputError(f"arguments: {message}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        args.run(args)
    except InputError as err:
        _say(str(err))
        return BAD_INPUT
    except OSError as err:  # an output that cannot be written: same one-line treatment as bad input
        _say(f"{err.filename2 or err.filename or 'output'}: {err.strerror or err}")
        return BAD_INPUT
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moe-trace", description="Import public routing traces, generate synthetic ones, describe any trace, draw its hit-rate curve.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("import", help="convert a public trace format into our Parquet trace")
    p.add_argument("--format", required=True, choices=sorted(IMPORTERS), help="the input format")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, or folders of them (taken in numeric name order)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.parquet")
    p.add_argument("--model", metavar="PRESET|FILE",
                   help="model preset, Hugging Face config.json or .yaml of MoEModel fields (default: moe-beyond and "
                        "moe-infinity-eam deepseek-v2-lite, vllm-jsonl mixtral-8x7b; required for the others)")
    p.add_argument("--dtype", help="stored expert weight type, e.g. fp16, fp8, int4 (default: fp16 for a preset, the "
                                   "file's for a file)")
    p.add_argument("--columns", metavar="FIELD=SOURCE,...",
                   help="--format long only: where each field comes from, e.g. experts=indices,weights=scores,"
                        "layer=@file,sequence=@row//2048,token=@row%%2048 (sources: a column, @file, @row, @row//N, "
                        "@row%%N, a number)")
    p.set_defaults(run=_import)

    d = SynthParams()
    p = sub.add_parser("synth", help="generate a seeded synthetic trace")
    p.add_argument("-o", "--output", required=True, metavar="OUT.parquet")
    p.add_argument("--model", default=SYNTH_DEFAULT_MODEL, metavar="PRESET|FILE",
                   help=f"model preset, config.json or .yaml (default {SYNTH_DEFAULT_MODEL})")
    p.add_argument("--dtype", help="stored expert weight type (default: fp16 for a preset, the file's for a file)")
    p.add_argument("--sequences", type=int, default=d.sequences, help=f"number of sequences (default {d.sequences})")
    p.add_argument("--tokens", type=int, default=d.tokens_per_sequence, help=f"tokens per sequence (default {d.tokens_per_sequence})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--skew", type=float, default=d.skew, help=f"Zipf exponent of per-layer popularity, 0 = uniform (default {d.skew})")
    p.add_argument("--reuse", type=float, default=d.reuse, help=f"probability a slot repeats the previous token's expert (default {d.reuse})")
    p.add_argument("--cross-layer", type=float, default=d.cross_layer,
                   help=f"probability a slot follows the fixed map from the layer below (default {d.cross_layer})")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help=f"token id range (default {d.vocab_size})")
    p.add_argument("--fit", metavar="REAL.parquet|FIT.json",
                   help="fit the generator to a real trace (or load a saved fit): per-layer LRU reuse, popularity and "
                        "cross-layer map; the model is the trace's, --skew/--reuse/--cross-layer/--model are ignored")
    p.add_argument("--save-fit", metavar="FIT.json", help="with --fit REAL.parquet: also save the fitted parameters")
    p.set_defaults(run=_synth)

    p = sub.add_parser("info", help="describe a trace: shape, size, popularity, overlap, columns")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", metavar="OUT", help="also write the full summary as JSON")
    p.set_defaults(run=_info)

    p = sub.add_parser("analyze", help="routing locality: SCH, SRP, LRU/LFU/Belady hit rates, popularity, reuse, co-activation")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", required=True, metavar="OUT", help="write the results as JSON (model level and per layer)")
    p.add_argument("--segment", type=int, nargs="+", default=[16], metavar="M", help="segment lengths m (default 16)")
    p.add_argument("--rho", type=float, nargs="+", default=[1.0, 2.0, 4.0], metavar="RHO",
                   help="cache ratios: C = ρ·k per layer, ρ·L·k model level (default 1 2 4)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples of the sequences (default 1000, 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--split", type=int, metavar="TOKENS", help="cut sequences into pieces of at most TOKENS tokens first")
    p.add_argument("--min-tokens", type=int, default=1, metavar="N", help="leave out sequences shorter than N tokens")
    p.add_argument("--out-dir", metavar="DIR", help="also write tables (Parquet and CSV) and figures here")
    p.set_defaults(run=_analyze)

    p = sub.add_parser("curve", help="a policy's exact hit rate at every cache size, in one pass over the trace")
    p.add_argument("file", metavar="TRACE")
    p.add_argument("--policy", default="lru", choices=stack_distance.POLICIES, help="the cache policy (default lru)")
    p.add_argument("--scope", default="layer", choices=SCOPES,
                   help="layer: capacities top_k .. experts per layer; global: top_k .. all experts (default layer)")
    p.add_argument("--json", required=True, metavar="OUT",
                   help='write {"policy", "scope", "capacities", "hit_rate"} as JSON')
    p.set_defaults(run=_curve)

    p = sub.add_parser("record", help="record a trace from a Hugging Face transformers MoE model (needs the 'record' extra)")
    p.add_argument("--model", required=True, metavar="PATH_OR_NAME", help="a local model folder, or a name in your hub cache")
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help="prompts: text (one per line), JSONL, Parquet/CSV/Arrow, or a data set folder on disk")
    p.add_argument("-o", "--output", required=True, metavar="OUT.parquet")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt (default 32)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate() call (default 8)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"], help="weights as loaded (default auto: the checkpoint's)")
    p.add_argument("--text-field", default="text", help="the prompt field of JSONL or table prompts (default text)")
    p.add_argument("--limit", type=int, help="record at most this many prompts")
    p.add_argument("--allow-download", action="store_true", help="let transformers download the model (default: local files only)")
    p.add_argument("--candidates", type=int, default=0, metavar="R",
                   help="also keep the router's R runners-up and every candidate's router probability per row "
                        "(columns candidates, candidate_scores; for routing=cache-aware; default 0: none)")
    p.set_defaults(run=_record)

    f, t = Features(), Training()
    p = sub.add_parser("train-predictor", help="train an expert predictor on traces (one MLP per MoE layer), for prefetch=learned")
    p.add_argument("--train", required=True, nargs="+", metavar="TRACE", help="training traces (our Parquet format, one model)")
    p.add_argument("--out", required=True, metavar="PREDICTOR.json", help="the predictor file to write")
    p.add_argument("--horizon", type=_whole(1), default=1, metavar="H", help="predict the next H layers (default 1)")
    p.add_argument("--current-layers", type=_whole(0), default=f.current_layers, metavar="C",
                   help=f"inputs: this token's last C routed layers (default {f.current_layers})")
    p.add_argument("--previous-tokens", type=_whole(0), default=f.previous_tokens, metavar="P",
                   help=f"inputs: the P previous tokens' experts at the predicted layers (default {f.previous_tokens})")
    p.add_argument("--previous-at-current", action="store_true",
                   help="inputs: the previous tokens' experts at this token's C input layers too")
    p.add_argument("--no-history", dest="history", action="store_false",
                   help="leave out the sequence's mean routing so far at the predicted layers")
    p.add_argument("--hidden", type=_whole(1), default=t.hidden, help=f"hidden units per layer's MLP (default {t.hidden})")
    p.add_argument("--epochs", type=_whole(1), default=t.epochs, help=f"passes over the tokens (default {t.epochs})")
    p.add_argument("--batch-size", type=_whole(1), default=t.batch_size, help=f"tokens per Adam step (default {t.batch_size})")
    p.add_argument("--learning-rate", type=float, default=t.learning_rate, help=f"Adam's step size (default {t.learning_rate})")
    p.add_argument("--seed", type=int, default=t.seed, help=f"seeds initial weights and batch order (default {t.seed})")
    p.set_defaults(run=_train_predictor)

    p = sub.add_parser("eval-predictor", help="precision, recall, F1 and accuracy per layer of a predictor on a test trace")
    p.add_argument("predictor", metavar="PREDICTOR.json")
    p.add_argument("--test", required=True, metavar="TRACE", help="the test trace")
    p.add_argument("--ahead", type=_whole(1), default=1, metavar="N",
                   help="score layer l by its prediction N layers before (1: after layer l-1's router; default 1)")
    p.add_argument("--recorded", metavar="COLUMN", help="also score the test trace's recorded predictions pred_COLUMN")
    p.add_argument("--json", metavar="OUT", help="also write the scores as JSON")
    p.set_defaults(run=_eval_predictor)
    return parser


def _whole(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is below {least}")
        return value
    return parse


def _import(args) -> None:
    importer = IMPORTERS.load(args.format)
    if args.columns is not None and args.format != "long":
        raise InputError(f"arguments: --columns applies to --format long only, not {args.format}")
    name = args.model or importer.DEFAULT_MODEL
    if name is None:
        raise InputError(f"arguments: --model is required for --format {args.format} (its files do not name the model)")
    model = load_model(name, args.dtype)
    start = time.perf_counter()
    options = {} if args.columns is None else {"columns": args.columns}
    summary = importer.import_files(args.inputs, _output(args.output), model, **options)
    for note in summary.notes:
        _say(f"note: {note}")
    print(f"wrote {summary.path}: {summary.rows:,} rows, {summary.sequences:,} sequence(s), {summary.tokens:,} tokens "
          f"({model.name}) in {time.perf_counter() - start:.2f} s")


def _synth(args) -> None:
    if args.fit:
        return _synth_fitted(args)
    model = load_model(args.model, args.dtype)
    params = SynthParams(sequences=args.sequences, tokens_per_sequence=args.tokens, seed=args.seed, skew=args.skew,
                         reuse=args.reuse, cross_layer=args.cross_layer, vocab_size=args.vocab_size)
    start = time.perf_counter()
    rows = write_synthetic(_output(args.output), model, params)
    settings = ", ".join(f"{f.name}={getattr(params, f.name)}" for f in fields(params))
    print(f"wrote {args.output}: {rows:,} rows ({model.name}; {settings}) in {time.perf_counter() - start:.2f} s")


def _synth_fitted(args) -> None:
    from traces import synth_fit

    start = time.perf_counter()
    if args.fit.endswith(".json"):
        fit = synth_fit.load_fit(args.fit)
    else:
        fit = synth_fit.fit_trace(args.fit, seed=args.seed)
        if args.save_fit:
            synth_fit.save_fit(fit, args.save_fit)
    rows = synth_fit.write_fitted(_output(args.output), fit, sequences=args.sequences, tokens_per_sequence=args.tokens,
                                  seed=args.seed, vocab_size=args.vocab_size, fit_file=Path(args.fit).name)
    print(f"wrote {args.output}: {rows:,} rows ({fit.model['name']}, fitted to {fit.source.get('file')}; "
          f"sequences={args.sequences}, tokens={args.tokens}, seed={args.seed}) in {time.perf_counter() - start:.2f} s")


def _info(args) -> None:
    summary = trace_info.summarize(args.file)
    print(trace_info.format_summary(summary))
    if args.json:
        trace_info.write_json(summary, args.json)


def _analyze(args) -> None:
    from traces.locality import analyze

    doc, tables = analyze.analyze(args.file, segments=args.segment, rhos=args.rho, bootstrap=args.bootstrap,
                                  seed=args.seed, split=args.split, min_tokens=args.min_tokens)
    if args.out_dir:
        analyze.write_outputs(doc, tables, args.out_dir)
    trace_info.write_json(doc, args.json)
    print(analyze.format_report(doc))


def _curve(args) -> None:
    output = _output(args.json)
    trace = TraceFile(args.file)
    model = trace.meta.model
    start = time.perf_counter()
    curve = stack_distance.hit_curve(trace.chunks(), model, args.scope, args.policy)
    doc = curve.to_dict()
    trace_info.write_json(doc, output)
    rates = doc["hit_rate"]
    print(f"wrote {output}: {args.policy} hit rate at {len(rates)} sizes ({args.scope} scope, {doc['capacities'][0]}.."
          f"{doc['capacities'][-1]}: {rates[0]:.4f}..{rates[-1]:.4f}) over {int(curve.accesses.sum()):,} accesses "
          f"in {time.perf_counter() - start:.2f} s")


RECORD_INSTALL = "pip install -e '.[record]' (in a checkout) or pip install 'torch==2.13.0' 'transformers>=5.23,<6'"


def _record(args) -> None:
    try:
        from traces import record
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in ("torch", "transformers"):
            raise
        raise InputError(f"record: needs torch and transformers, which are not installed; install them with {RECORD_INSTALL}") from None
    prompts = load_prompts(args.prompts, args.text_field, args.limit)
    output = _output(args.output)
    device = record.resolve_device(args.device)
    model, tokenizer = record.load_pretrained(args.model, args.dtype, args.allow_download)
    summary = record.record(model, tokenizer, prompts, output, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            device=device, provenance={"prompts_file": str(args.prompts), "model_argument": args.model},
                            candidates=args.candidates)
    print(f"wrote {summary.path}: {summary.rows:,} rows, {summary.sequences:,} sequence(s), {summary.tokens:,} tokens "
          f"({summary.prefill_tokens:,} prefill, {summary.decode_tokens:,} decode; {summary.model.name}, "
          f"{summary.model.moe_layers} MoE layers × {summary.model.experts_per_layer} experts, top-{summary.model.top_k}) "
          f"on {device} in {summary.seconds:.2f} s")


def _train_predictor(args) -> None:
    output = _output(args.out)
    start = time.perf_counter()
    features = Features(args.current_layers, args.previous_tokens, args.history, args.previous_at_current)
    training = Training(hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
                        learning_rate=args.learning_rate, seed=args.seed)
    p = predictor_training.train_files(args.train, output, horizon=args.horizon, features=features, training=training)
    print(f"wrote {output}: {p.model_name}, {p.moe_layers} MoE layers × {p.experts} experts, horizon {p.horizon}, "
          f"{p.w1.shape[1]} inputs × {p.w1.shape[2]} hidden per layer, {args.epochs} epochs on {len(args.train)} "
          f"trace(s) in {time.perf_counter() - start:.1f} s")


def _eval_predictor(args) -> None:
    predictor = ExpertPredictor.load(args.predictor)
    scores = predictor_training.evaluate_predictor(predictor, args.test, ahead=args.ahead)
    doc = {"predictor": args.predictor, "test": args.test, "ahead": args.ahead, "learned": scores.to_dict()}
    print(predictor_training.format_scores(scores, f"{args.predictor} on {args.test}, top-{predictor.top_k} "
                                                   f"{args.ahead} layer(s) ahead"))
    if args.recorded:
        recorded = predictor_training.evaluate_recorded(args.test, args.recorded)
        doc["recorded"] = recorded.to_dict()
        print(predictor_training.format_scores(recorded, f"recorded pred_{args.recorded} on {args.test}"))
    if args.json:
        predictor_training.write_scores(_output(args.json), doc)


def _output(path: str) -> str:
    """The output path, refused early where it names a folder (the atomic rename would fail only at the end)."""
    if Path(path).is_dir():
        raise InputError(f"{path}: output: is a folder, expected a file path such as OUT.parquet")
    return path


def _say(message: str) -> None:
    """One line on stderr, whatever the message holds."""
    print("moe-trace: " + " ".join(message.split("\n")), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
