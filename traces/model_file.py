"""The model a user names: a preset, a Hugging Face `config.json`, or a YAML file of `MoEModel` fields.

One reader for `moe-trace import/synth --model` and `moe-sim model=`, so that a model we have no preset for
(a new release, a research model) is described once, in the file its authors publish or in a few lines of ours.

A YAML file holds `MoEModel`'s fields (README "Model files"): `name` defaults to the file's stem and `param_bytes`
to 2 (fp16, as presets and config.json files without a dtype); an unknown key, a missing one or a value out of
range is refused in one line naming the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from simulator.errors import InputError
from simulator.hf_config import model_from_hf_config
from simulator.model import MoEModel
from simulator.presets import DTYPE_BYTES, PRESETS, get_preset, with_dtype
from traces.format import validate_model_dict

SUFFIXES = (".json", ".yaml", ".yml")


def is_model_file(spec: str) -> bool:
    """Whether `spec` names a file rather than a preset: it holds a path separator or ends in .json/.yaml/.yml."""
    return "/" in spec or "\\" in spec or spec.endswith(SUFFIXES)


def load_model(spec: str, dtype: str | None = None) -> MoEModel:
    """The model `spec` names, its expert weights stored as `dtype` if given (else fp16 for a preset, the file's
    type for a file)."""
    if not is_model_file(spec):
        if spec not in PRESETS:
            raise InputError(f"model: unknown preset {spec!r} (known: {', '.join(sorted(PRESETS))}; or a Hugging Face "
                             f"config.json, or a .yaml of MoEModel fields)")
        return get_preset(spec, dtype)
    path = Path(spec)
    if path.suffix not in SUFFIXES:
        raise InputError(f"{spec}: a model file is a Hugging Face config.json (.json) or a .yaml of MoEModel fields")
    text = _read(path, spec)
    if path.suffix == ".json":
        try:
            config = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{spec}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
        return model_from_hf_config(config, spec, _hf_name(config, path), dtype)
    try:
        fields = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"{spec}: not valid YAML: {getattr(err, 'problem', None) or err}{where}") from None
    if not isinstance(fields, dict):
        raise InputError(f"{spec}: expected a mapping of MoEModel fields, got {type(fields).__name__}")
    model = validate_model_dict({"name": path.stem, "param_bytes": DTYPE_BYTES["fp16"], **fields}, spec)
    return model if dtype is None else with_dtype(model, dtype)


def _read(path: Path, spec: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{spec}: no such model file") from None
    except IsADirectoryError:
        raise InputError(f"{spec}: is a folder; give the config.json inside it") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{spec}: unreadable ({type(err).__name__}: {err})") from None


def _hf_name(config, path: Path) -> str:
    """The model's name: the config's `_name_or_path`, else the folder a config.json lies in, else the file's stem."""
    given = config.get("_name_or_path") if isinstance(config, dict) else None
    if isinstance(given, str) and Path(given).name:
        return Path(given).name
    return path.parent.name if path.name == "config.json" and path.parent.name else path.stem
