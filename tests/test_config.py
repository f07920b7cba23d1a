"""The config tree: merge order, key, type, choice and bound errors, shared sizes, frozen configs, save ->
load round trip."""

import dataclasses
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from configs import schema
from configs.loader import (
    ConfigError,
    _check_values,
    help_text,
    load_config,
    parse_cli,
    parse_overrides,
    presets,
    save_config,
)
from configs.schema import SHARED, Config

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


def test_every_schema_field_has_a_valid_default():
    # The defaults live in the schema: the bare Config is complete, within its bounds and choices.
    defaults = OmegaConf.structured(Config)
    assert not OmegaConf.missing_keys(defaults)
    _check_values(defaults, "the schema")
    assert OmegaConf.to_object(defaults) == Config()


def test_shared_sizes_fill_every_sub_config_and_an_own_value_wins():
    for name in [None, *presets()]:
        cfg = load_config([name] if name else [])
        for group, keys in SHARED.items():
            for key, subs in keys.items():
                for sub in subs:
                    value = getattr(getattr(getattr(cfg, group), sub), key)
                    assert value == getattr(getattr(cfg, group), key), (name, group, sub, key)
    cfg = load_config(["size1m"], {"world_model": {"reward_head": {"units": 32}}})
    assert cfg.world_model.reward_head.units == 32 and cfg.world_model.cont_head.units == 64
    # A later preset's shared value reaches every sub-config, as the per-head values used to.
    assert load_config(["small", "size50m"]).actor_critic.critic.units == 512


def test_every_preset_loads():
    for name in presets():
        load_config([name])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--configs", "debug", "--nosuch.key", "1"], "nosuch.key"),
        (["--configs", "nosuch"], "available: "),
        (["--run.steps", "abc"], "run.steps"),
        (["--configs", "debug", "--world_model.norm", "batch"], "world_model.norm must be one of rms, layer"),
        (["--configs", "debug", "--replay.batch_size", "0"], "replay.batch_size must be >= 1; got 0"),
    ],
)
def test_cli_errors_exit_2_with_one_line(args, needle):
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_logdir_with_nothing_to_resume_exits_2_and_creates_nothing(tmp_path):
    typo = tmp_path / "typo"
    proc = subprocess.run(
        [sys.executable, "train.py", "--logdir", str(typo)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"train.py: error: nothing to resume in {typo}: it has no config.yaml; ")
    assert "--configs cartpole debug" in line
    assert not typo.exists()
    # Presets or any other option still start a run on that folder.
    assert parse_cli(["--configs", "debug", "--logdir", str(typo)]).run.steps == 300
    assert parse_cli(["--logdir", str(typo), "--run.steps", "5"]).run.steps == 5


def quick_examples() -> list[list[str]]:
    """The `train.py` command lines naming the `debug` preset in the README and in `--help`."""
    lines = (ROOT / "README.md").read_text().splitlines() + help_text("train.py").splitlines()
    examples = []
    for line in lines:
        if "train.py --configs " in line:
            args = line.split("#")[0].split("train.py", 1)[1].split()
            if "debug" in itertools.takewhile(lambda arg: not arg.startswith("--"), args[1:]):
                examples.append(args)
    return examples


def test_quick_examples_keep_the_debug_schedule():
    # A task preset after `debug` brings back its own steps and train ratio (cartpole: 32x the updates).
    debug = load_config(["debug"]).run
    examples = quick_examples()
    assert examples
    for args in examples:
        run = parse_cli(args).run
        steps = int(args[args.index("--run.steps") + 1]) if "--run.steps" in args else debug.steps
        assert (run.steps, run.train_ratio) == (steps, debug.train_ratio), args


def test_help_lists_presets_and_groups():
    proc = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0
    for word in ["size12m", "cartpole", "debug", "world_model", "actor_critic", "replay", "run"]:
        assert word in proc.stdout


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (
            {"world_model": {"latent": "beta"}},
            "world_model.latent must be one of categorical, gaussian; got 'beta'",
        ),
        (
            {"run": {"precision": "float16"}},
            "run.precision must be one of auto, float32, bfloat16; got 'float16'",
        ),
        ({"optim": {"kind": "sgd"}}, "optim.kind must be one of laprop, adam; got 'sgd'"),
        ({"env": {"obs": 3}}, "env.obs must be one of state, pixels, both; got 3"),
        ({"logger": {"wandb": {"mode": "on"}}}, "logger.wandb.mode must be one of online, offline, disabled"),
        ({"run": {"device": "tpu"}}, r"run.device must match auto\|cpu\|cuda\(:\[0-9\]\+\)\?; got 'tpu'"),
        ({"replay": {"batch_size": 0}}, "replay.batch_size must be >= 1; got 0 in the command line"),
        ({"actor_critic": {"imag_horizon": 0}}, "actor_critic.imag_horizon must be >= 1; got 0"),
        ({"optim": {"lr": -1e-4}}, "optim.lr must be >= 0; got -0.0001"),
        ({"optim": {"beta2": 1.0}}, "optim.beta2 must be < 1; got 1.0"),
        ({"world_model": {"obs_std": 0.0}}, "world_model.obs_std must be > 0; got 0.0"),
        ({"replay": {"recency": 1.5}}, "replay.recency must be <= 1; got 1.5"),
    ],
)
def test_bad_choice_or_number_names_key_value_and_what_is_allowed(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(["debug"], overrides)


def test_good_choices_load():
    cfg = load_config(
        ["debug"], {"run": {"device": "cuda:1", "precision": "bfloat16"}, "env": {"obs": "both"}}
    )
    assert (cfg.run.device, cfg.run.precision, cfg.env.obs) == ("cuda:1", "bfloat16", "both")
    assert schema.LATENTS == ("categorical", "gaussian") and "rms" in schema.NORM_KINDS


def test_a_bad_value_in_a_preset_or_saved_file_names_its_source(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("world_model: {gru: lstm}\n")
    message = f"^world_model.gru must be one of block, plain; got 'lstm' in {path}$"
    with pytest.raises(ConfigError, match=message):
        load_config(base=path)
    path.write_text("run: {steps: -3}\n")
    with pytest.raises(ConfigError, match=f"^run.steps must be >= 0; got -3 in {path}$"):
        load_config(base=path)
    monkeypatch.setattr("configs.loader.presets", lambda: {"bad": {"replay": {"chunk_size": 0}}})
    with pytest.raises(ConfigError, match="^replay.chunk_size must be >= 1; got 0 in preset 'bad'$"):
        load_config(["bad"])


def test_discount_horizon_is_the_key_and_the_old_name_points_to_it():
    assert load_config().actor_critic.discount_horizon == 333
    with pytest.raises(
        ConfigError, match=r"'actor_critic\.horizon'.*did you mean 'actor_critic\.discount_horizon'"
    ):
        load_config(overrides={"actor_critic": {"horizon": 100}})
