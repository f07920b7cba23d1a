"""The config tree: merge order, type and key errors, frozen configs, save -> load round trip."""

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from configs.loader import (
    DEFAULTS_FILE,
    ConfigError,
    load_config,
    parse_cli,
    parse_overrides,
    presets,
    save_config,
    valid_keys,
)
from configs.schema import Config

ROOT = Path(__file__).resolve().parents[1]


def test_merge_order_defaults_then_presets_in_order_then_overrides():
    defaults = load_config()
    assert defaults.world_model.deter == 2048
    assert load_config(["size1m"]).world_model.deter == 512
    # Later presets win over earlier ones.
    assert load_config(["size1m", "size50m"]).world_model.deter == 4096
    assert load_config(["size50m", "size1m"]).world_model.deter == 512
    # Overrides win over presets; untouched keys keep the preset's value.
    cfg = load_config(["size1m"], {"world_model": {"deter": 96}})
    assert cfg.world_model.deter == 96 and cfg.world_model.hidden == 64


def test_presets_change_only_what_they_name():
    base, cfg = load_config(), load_config(["cartpole"])
    assert cfg.env.id == "CartPole-v1" and cfg.run.train_ratio == 512
    assert cfg.world_model == base.world_model


@pytest.mark.parametrize(
    "name, deter, hidden, classes, units",
    [
        ("size1m", 512, 64, 4, 64),
        ("size12m", 2048, 256, 16, 256),
        ("size25m", 3072, 384, 24, 384),
        ("size50m", 4096, 512, 32, 512),
        ("size100m", 6144, 768, 48, 768),
        ("size200m", 8192, 1024, 64, 1024),
        ("size400m", 12288, 1536, 96, 1536),
    ],
)
def test_size_presets_match_the_reference(name, deter, hidden, classes, units):
    cfg = load_config([name])
    wm = cfg.world_model
    assert (wm.deter, wm.hidden, wm.classes, wm.stoch) == (deter, hidden, classes, 32)
    assert wm.encoder.units == wm.decoder.units == cfg.actor_critic.actor.units == units
    assert wm.encoder.depth == classes  # the reference ties depth and classes per size


def test_task_presets_exist():
    for name in ["cartpole", "pendulum", "dmc_proprio", "dmc_vision", "atari100k", "debug", "v1"]:
        assert name in presets()
    assert load_config(["dmc_proprio"]).env.action_repeat == 2
    assert load_config(["atari100k"]).run.train_ratio == 256


def test_override_parsing_both_forms_and_yaml_values():
    tree = parse_overrides(["--run.steps", "300", "--logdir=runs/x", "--env.size", "[32, 32]"])
    assert tree == {"run": {"steps": 300}, "logdir": "runs/x", "env": {"size": [32, 32]}}
    cfg = parse_cli(["--configs", "debug", "cartpole", "--run.steps", "300", "--logdir", "/tmp/nowhere/x"])
    assert (cfg.run.steps, cfg.env.id, cfg.logdir) == (300, "CartPole-v1", "/tmp/nowhere/x")


def test_unknown_key_names_it_and_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"'run\.stpes'.*did you mean 'run\.steps'"):
        load_config(overrides={"run": {"stpes": 3}})
    with pytest.raises(ConfigError, match=r"'nosuch\.key'"):
        parse_cli(["--configs", "debug", "--nosuch.key", "1"])


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(ConfigError, match=r"'run\.steps'.*'abc'.*int"):
        parse_cli(["--run.steps", "abc"])
    with pytest.raises(ConfigError, match=r"'env\.size\[1\]'.*int"):
        parse_cli(["--env.size", "[64, x]"])
    with pytest.raises(ConfigError, match=r"'run' .* is a group"):
        parse_cli(["--run", "3"])


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown preset 'nosuch'; available: .*size1m.*debug"):
        load_config(["nosuch"])


def test_config_is_frozen():
    cfg = load_config(["debug"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.steps = 5  # type: ignore[misc]


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(["debug", "pendulum"], {"env": {"kwargs": {"g": 9.0}}, "logdir": str(tmp_path)})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(base=tmp_path / "config.yaml") == cfg
    # Starting again on the same run folder resumes with its own settings (no presets named).
    assert parse_cli(["--logdir", str(tmp_path)]) == cfg


def test_every_schema_field_has_a_default_and_no_default_is_unknown():
    tree = yaml.safe_load(DEFAULTS_FILE.read_text())

    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and k != "kwargs":
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield prefix + k

    schema_leaves = {k for k in valid_keys() if k not in _groups()}
    assert set(leaves(tree)) == schema_leaves


def _groups(cls=Config, prefix=""):
    out = set()
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out.add(prefix + name)
            out |= _groups(hint, prefix + name + ".")
    return out


def test_every_preset_loads():
    for name in presets():
        load_config([name])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--configs", "debug", "--nosuch.key", "1"], "nosuch.key"),
        (["--configs", "nosuch"], "available: "),
        (["--run.steps", "abc"], "run.steps"),
    ],
)
def test_cli_errors_exit_2_with_one_line(args, needle):
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_presets_and_groups():
    proc = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0
    for word in ["size12m", "cartpole", "debug", "world_model", "actor_critic", "replay", "run"]:
        assert word in proc.stdout
