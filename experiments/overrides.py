"""`moe-sim`'s command line checked before Hydra starts, so that a typo costs one line, not Hydra's page.

Group choices (`policy=NAME`, ...) must name a registered or user-supplied option; every other `key=value` must name
a key of the composed config (Hydra's struct mode refuses the rest, with a multi-line error, inside every job).
Which keys a group holds depends on its choice (`policy.period` exists for `lfu-aging`, not for `lru`), so a key under
a group is checked against each option the command line (or a `+sweep=NAME` config) chooses. `+key=value` adds a key
and `~key` deletes one, as Hydra allows; `hydra.*` is Hydra's own.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from simulator.errors import InputError
from traces.model_file import is_model_file

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("trace", "model", "hardware", "policy", "prefetch", "miss", "placement", "routing", "serve", "scheduler")
SWEEP_SYNTAX = ("choice(", "range(", "glob(", "interval(")


def rewrite_args(argv: list[str]) -> list[str]:
    """Check group choices and keys (one `InputError` line per mistake); let `hardware=FILE.yaml` name a profile
    file and `model=FILE` a model file (config.json or .yaml)."""
    config_dirs = [Path(a.split("=", 1)[1]) for a in argv if a.startswith(("--config-dir=", "-cd="))]
    config_dirs += [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a in ("--config-dir", "-cd")]
    choices = _default_choices()
    choices.update(_sweep_choices(argv))
    out = []
    for arg in argv:
        group, eq, value = arg.partition("=")
        if eq and group in GROUPS and not value.startswith(SWEEP_SYNTAX):
            if group == "hardware" and ("/" in value or value.endswith((".yaml", ".yml"))):
                out.append(f"hardware.profile={value}")
                choices["hardware"] = ["rtx4090_pcie4"]  # a profile file fills the same one key
                continue
            if group == "model" and is_model_file(value):
                out.append(f"model.preset={value}")
                choices["model"] = ["from_trace"]  # a model file fills the key a preset fills
                continue
            known = known_options(group, config_dirs)
            for choice in value.split(","):
                if choice not in known:
                    raise InputError(f"{group}={choice}: unknown {group} (known: {', '.join(sorted(known))})")
            choices[group] = value.split(",")
        out.append(arg)
    for arg in out:
        key, eq, _ = arg.partition("=")
        if eq and not key.startswith(("-", "+", "~", "hydra.", "hydra/")) and key not in GROUPS and "@" not in key:
            check_key(key, choices, config_dirs)
    return out


def known_options(group: str, config_dirs: list[Path]) -> set[str]:
    try:
        names = {n.removesuffix(".yaml") for n in ConfigStore.instance().list(group)}
    except OSError:  # a group only the shipped YAML files hold (trace, serve)
        names = set()
    for d in [CONF_DIR, *config_dirs]:
        names |= {p.stem for p in (d / group).glob("*.yaml")}
    return names


def check_key(key: str, choices: dict[str, list[str]], config_dirs: list[Path]) -> None:
    """Refuse `key` in one line, with the closest valid keys, unless the config (under every chosen option of its
    group) has it."""
    group = key.split(".", 1)[0]
    for option in choices.get(group, [None]) if group in GROUPS else [None]:
        keys = _keys(choices, config_dirs, {group: option} if option is not None else {})
        if any(k == key or k.startswith(key + ".") for k in keys):
            continue
        if group in GROUPS:
            own = sorted(k for k in keys if k.startswith(group + "."))
            raise InputError(f"{key}: not a key of {group}={option}{_closest(key, own)} (it takes: {', '.join(own)})")
        raise InputError(f"{key}: unknown config key{_closest(key, sorted(keys))} "
                         f"(moe-sim --help lists them; +{key}=VALUE adds a new one)")


def _closest(key: str, keys: list[str]) -> str:
    close = difflib.get_close_matches(key, keys, n=2, cutoff=0.75)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _keys(choices: dict[str, list[str]], config_dirs: list[Path], pick: dict[str, str]) -> set[str]:
    """Every dotted key of the config composed from the base config and, per group, the option in `pick` or the
    first chosen one."""
    keys = _flatten({k: v for k, v in _load(CONF_DIR / "config.yaml").items() if k not in ("defaults", "hydra")})
    for group in GROUPS:
        option = pick.get(group) or choices.get(group, [None])[0]
        if option is not None:
            keys |= {f"{group}.{k}" for k in _flatten(_group_node(group, option, config_dirs))}
    return keys


def _group_node(group: str, option: str, config_dirs: list[Path]) -> dict:
    for d in reversed([CONF_DIR, *config_dirs]):  # a user's config dir overrides the shipped one
        path = d / group / f"{option}.yaml"
        if path.is_file():
            return _load(path)
    try:
        node = ConfigStore.instance().load(f"{group}/{option}.yaml").node
    except Exception:  # an option no store or folder holds: refused as a group choice already
        return {}
    return OmegaConf.to_container(node, resolve=False)


def _flatten(node, prefix: str = "") -> set[str]:
    out = set()
    for key, value in (node or {}).items():
        if key == "defaults":
            continue
        dotted = f"{prefix}{key}"
        out.add(dotted)
        if isinstance(value, dict):
            out |= _flatten(value, dotted + ".")
    return out


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _default_choices() -> dict[str, list[str]]:
    """The base config's default option of each group (`policy: lru`, ...)."""
    choices = {}
    for entry in _load(CONF_DIR / "config.yaml").get("defaults", []):
        if isinstance(entry, dict):
            for group, option in entry.items():
                if group in GROUPS:
                    choices[group] = [str(option)]
    return choices


def _sweep_choices(argv: list[str]) -> dict[str, list[str]]:
    """The group options a `+sweep=NAME` config sweeps over (`hydra.sweeper.params`)."""
    out: dict[str, list[str]] = {}
    for arg in argv:
        key, _, name = arg.partition("=")
        if key.lstrip("+") != "sweep":
            continue
        path = CONF_DIR / "sweep" / f"{name}.yaml"
        params = ((_load(path).get("hydra") or {}).get("sweeper") or {}).get("params") or {} if path.is_file() else {}
        for group, values in params.items():
            if group in GROUPS and not str(values).startswith(SWEEP_SYNTAX):
                out[group] = [v.strip() for v in str(values).split(",")]
    return out
