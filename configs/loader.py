"""Load a Config: the schema's defaults, then named presets in order, then dotted command-line overrides.

OmegaConf structured configs do the merging and type checking against `configs/schema.py`; this
module checks keys, string choices and number bounds, turns every error into one clear line
(`ConfigError`), fills the shared sizes (`fill_shared`) and parses the command line.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from configs.schema import SHARED, Config
from util.files import write_atomic

CONFIG_DIR = Path(__file__).resolve().parent
PRESETS_FILE = CONFIG_DIR / "presets.yaml"
# Keys renamed since configs were first saved (old dotted key -> new): the error for an old key in a
# preset, an override or a saved config.yaml names the new one.
RENAMED = {"actor_critic.horizon": "actor_critic.discount_horizon"}


class ConfigError(ValueError):
    """A bad key, value, preset or file; its message is one line meant for the user."""


def presets() -> dict[str, dict]:
    """All named presets from presets.yaml, in file order."""
    return yaml.safe_load(PRESETS_FILE.read_text())


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, groups and leaves (e.g. 'run', 'run.steps')."""
    keys = []
    for name, hint in typing.get_type_hints(cls).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(hint):
            keys += valid_keys(hint, prefix + name + ".")
    return keys


def _check_tree(tree: dict, source: str, cls: type = Config, prefix: str = "") -> None:
    """Raise a ConfigError for the first key of `tree` that the schema does not have, or the first value
    of a string option (a `Literal` field) that is not one of its choices."""
    hints = typing.get_type_hints(cls)
    for key, value in tree.items():
        full = prefix + str(key)
        if key not in hints:
            while isinstance(value, dict) and len(value) == 1:  # name the whole dotted key
                ((sub, value),) = value.items()
                full += f".{sub}"
            close = difflib.get_close_matches(full, valid_keys(), n=1, cutoff=0.5)
            close = [RENAMED[full]] if full in RENAMED else close
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{full}' in {source}{hint}")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' in {source} is a group; got {value!r}")
            _check_tree(value, source, hints[key], full + ".")
        elif typing.get_origin(hints[key]) is typing.Literal and value not in typing.get_args(hints[key]):
            choices = ", ".join(typing.get_args(hints[key]))
            raise ConfigError(f"{full} must be one of {choices}; got {value!r} in {source}")


# Bound name -> (how the error message says it, the test a valid value passes).
BOUNDS = {
    "ge": (">=", lambda v, limit: v >= limit),
    "gt": (">", lambda v, limit: v > limit),
    "le": ("<=", lambda v, limit: v <= limit),
    "lt": ("<", lambda v, limit: v < limit),
}


def _check_values(node: DictConfig, source: str, cls: type = Config, prefix: str = "") -> None:
    """Raise a ConfigError for the first number outside its schema bounds or string not matching its
    pattern (field metadata `bounds` / `pattern`, see `configs.schema.bounded`)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value, key = node[f.name], prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            _check_values(value, source, hints[f.name], key + ".")
        elif "pattern" in f.metadata and not re.fullmatch(f.metadata["pattern"], value):
            raise ConfigError(f"{key} must match {f.metadata['pattern']}; got {value!r} in {source}")
        elif value is not None:
            for bound, limit in f.metadata.get("bounds", {}).items():
                if not BOUNDS[bound][1](value, limit):
                    raise ConfigError(f"{key} must be {BOUNDS[bound][0]} {limit}; got {value!r} in {source}")


def _merge(cfg: DictConfig, tree: dict, source: str) -> DictConfig:
    """`tree` merged over `cfg`; every value it sets checked (keys, types, choices, bounds)."""
    _check_tree(tree, source)
    try:
        cfg = OmegaConf.merge(cfg, tree)
    except ValidationError as e:
        raise ConfigError(_type_message(e, source)) from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {e.msg if hasattr(e, 'msg') else e}") from None
    # The config was valid before this merge, so a value out of bounds now came from `tree`.
    _check_values(cfg, source)
    return cfg


def fill_shared(cfg: DictConfig) -> DictConfig:
    """Give every sub-config whose shared size is None its group's value, per `configs.schema.SHARED`:
    e.g. `world_model.encoder.units` None -> `world_model.units`. Values given explicitly are kept."""
    fills: dict = {}
    for group, keys in SHARED.items():
        for key, subs in keys.items():
            for sub in subs:
                if cfg[group][sub][key] is None:
                    fills.setdefault(group, {}).setdefault(sub, {})[key] = cfg[group][key]
    return OmegaConf.merge(cfg, fills)  # a merge: the structured config itself is read-only


def _type_message(e: ValidationError, source: str) -> str:
    return (
        f"config key '{e.full_key}' in {source}: value {_value_of(e)!r} is not {_expected_type(e.full_key)}"
    )


def _value_of(e: ValidationError) -> Any:
    # OmegaConf keeps the offending value in its message: "Value 'abc' of type 'str' ...".
    msg = str(e.msg)
    if msg.startswith("Value '"):
        return msg[len("Value '") :].split("' of type", 1)[0]
    return msg.split("\n", 1)[0]


def _expected_type(full_key: str) -> str:
    cls: Any = Config
    for part in full_key.split("[")[0].split("."):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return "of the expected type"
        cls = hints[part]
    if "[" in full_key:  # an element of a List[X]
        cls = typing.get_args(cls)[0]
    return f"of type {getattr(cls, '__name__', None) or str(cls).replace('typing.', '')}"


def parse_overrides(args: Sequence[str]) -> dict:
    """`--a.b value` / `--a.b=value` pairs -> a nested dict; values are parsed as YAML scalars."""
    tree: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"expected an option like --run.steps 300, got '{arg}'")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and len(args[i + 1]) > 2):
                raise ConfigError(f"option '--{key}' needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"option '--{key}' conflicts with an earlier one")
        node[leaf] = _parse_value(value)
    return tree


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def load_config(
    preset_names: Sequence[str] = (), overrides: dict | None = None, base: str | os.PathLike | None = None
) -> Config:
    """Build the frozen Config.

    Args:
        preset_names: presets from presets.yaml, applied in this order.
        overrides: a nested dict of values applied last (e.g. from `parse_overrides`).
        base: a saved `config.yaml` merged over the schema's defaults before the presets.
    """
    cfg = OmegaConf.structured(Config)
    if base:
        cfg = _merge(cfg, _read_yaml(Path(base)), str(base))
    available = presets()
    for name in preset_names:
        if name not in available:
            raise ConfigError(f"unknown preset '{name}'; available: {', '.join(available)}")
        cfg = _merge(cfg, available[name] or {}, f"preset '{name}'")
    if overrides:
        cfg = _merge(cfg, overrides, "the command line")
    return OmegaConf.to_object(fill_shared(cfg))


def _read_yaml(path: Path) -> dict:
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}".splitlines()[0]) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(tree).__name__}")
    return tree


def to_yaml(config: Config) -> str:
    """The resolved config as YAML text; `load_config(base=file)` reads it back to an equal Config."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config atomically (temporary file, fsync, then rename)."""
    text = to_yaml(config).encode()
    write_atomic(Path(path), lambda f: f.write(text))


HELP = """usage: {prog} [--configs PRESET [PRESET ...]] [--logdir DIR] [--GROUP.KEY VALUE ...]

Configuration: the defaults of configs/schema.py, then the presets in the order given, then the dotted
overrides (`--run.steps 300` or `--run.steps=300`). A saved run folder restarts from its config.yaml.

presets: {presets}
groups:
{groups}
example: {prog} --configs cartpole debug --logdir runs/x
"""


def help_text(prog: str) -> str:
    hints = typing.get_type_hints(Config)
    groups = []
    for name, cls in hints.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if dataclasses.is_dataclass(cls) else ""
        groups.append(f"  {name:<14}{doc or cls.__name__}")
    return HELP.format(prog=prog, presets=" ".join(presets()), groups="\n".join(groups))


def parse_cli(argv: Sequence[str], prog: str = "train.py") -> Config:
    """Parse `[--configs a b ...] [--key value ...]` into a Config; `--help` prints and exits 0.

    When no presets are named and `<logdir>/config.yaml` exists, that file is the base: starting
    the same command again on a run folder resumes it with its own settings. With no presets, no
    config.yaml and no option but `--logdir`, there is nothing to resume (most likely a mistyped path):
    a ConfigError, rather than a new run on the defaults.
    """
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        print(help_text(prog))
        raise SystemExit(0)
    names: list[str] = []
    if argv and argv[0] == "--configs":
        argv.pop(0)
        while argv and not argv[0].startswith("--"):
            names.append(argv.pop(0))
        if not names:
            raise ConfigError(f"--configs needs at least one preset; available: {', '.join(presets())}")
    elif argv and argv[0].startswith("--configs="):
        names = [n for n in argv.pop(0).split("=", 1)[1].split(",") if n]
    if any(a == "--configs" or a.startswith("--configs=") for a in argv):
        raise ConfigError("--configs must come before the other options")
    overrides = parse_overrides(argv)
    base = None
    if not names:
        logdir = overrides.get("logdir") or load_config().logdir
        saved = Path(str(logdir)) / "config.yaml"
        base = saved if saved.exists() else None
        if base is None and set(overrides) <= {"logdir"}:
            raise ConfigError(
                f"nothing to resume in {logdir}: it has no config.yaml; to start a run there, name its "
                f"presets, e.g. {prog} --configs cartpole debug --logdir {logdir} ({prog} --help lists them)"
            )
    return load_config(names, overrides, base)


def main_config(argv: Sequence[str] | None = None, prog: str = "train.py") -> Config:
    """parse_cli for entry points: a ConfigError prints one line and exits with status 2."""
    try:
        return parse_cli(sys.argv[1:] if argv is None else argv, prog)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
