"""bench/reference.py, its pure parts only (no official install needed): curves from fake run folders,
the CSV and PNG, the official flags and the settings-difference report, skipping finished runs, and the
timing's flags, shapes and table."""

import argparse
import csv
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_reference", ROOT / "bench" / "reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def fake_runs(out: Path) -> None:
    """An official run resumed after a kill (its rows past step 40 superseded) and one of ours."""
    official = reference.run_dir(out, "official", "cartpole", 0) / "episodes.jsonl"
    write_jsonl(official, [
        {"step": 20, "score": 20.0, "time": 60.0},
        {"step": 50, "score": 30.0, "time": 70.0},  # logged after the checkpoint the resume starts from
        {"step": 45, "score": 25.0, "time": 80.0},
        {"step": 90, "score": 45.0, "time": 90.0},
    ])  # fmt: skip
    ours = reference.run_dir(out, "ours", "cartpole", 0) / "metrics.jsonl"
    write_jsonl(ours, [
        {"step": 100, "fps/policy": 50.0},  # 2 s
        {"step": 200, "fps/policy": 25.0, "episode/return": 12.0},  # 4 s more
        {"step": 300, "fps/policy": 10.0, "episode/return": float("nan")},  # 10 s more, no return
        {"step": 400, "fps/policy": 100.0, "episode/return": 30.0},  # 1 s more
    ])  # fmt: skip


def test_curves_from_fake_runs_resume_and_rebuilt_seconds(tmp_path):
    fake_runs(tmp_path)
    curves = reference.collect_curves(tmp_path, ["cartpole"], [0])
    ours = [(r["step"], r["seconds"], r["return"]) for r in curves if r["side"] == "ours"]
    official = [(r["step"], r["seconds"], r["return"]) for r in curves if r["side"] == "official"]
    assert ours == [(200, 6.0, 12.0), (400, 17.0, 30.0)]
    assert official == [(20, 60.0, 20.0), (45, 80.0, 25.0), (90, 90.0, 45.0)]
    assert reference.collect_curves(tmp_path, ["pendulum"], [0]) == []


def test_report_writes_csv_png_and_settings(tmp_path, capsys):
    fake_runs(tmp_path)
    args = argparse.Namespace(
        tasks=["cartpole"], seeds=[0], configs=["small"], steps=3000, set=["run.prefill=0"]
    )
    reference.report(args, tmp_path, official=None)
    with (tmp_path / "reference.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == reference.CURVE_FIELDS and len(rows) == 5
    assert {r["side"] for r in rows} == {"ours", "official"}
    assert (tmp_path / "reference.png").stat().st_size > 0
    settings = json.loads((tmp_path / "settings.json").read_text())
    # With the official's start (prefill 0) and replay context (default) only the unconfigurable ones.
    assert settings["structural_differences"] == list(reference.STRUCTURAL_DIFFERENCES)
    assert "--batch_length" in settings["official_flags"]
    assert "differences no config key expresses" in capsys.readouterr().out


def test_official_flags_carry_our_small_dims_and_batch_length_unchanged(tmp_path):
    ours = reference.our_config(["cartpole", "small"], ["--seed", "2", "--run.steps", "3000"])
    flags = reference.official_flags(ours, "cartpole", tmp_path)
    value = dict(zip(flags[::2], flags[1::2], strict=True))  # flags come in (--key, value) pairs
    assert value["--task"] == "gymnasium_CartPole-v1" and value["--seed"] == "2"
    assert value["--batch_length"] == "32"  # trained steps per sequence on both sides
    assert value["--agent.dyn.rssm.deter"] == "128" and value["--agent.dyn.rssm.classes"] == "8"
    assert value["--agent.policy.units"] == "128" and value["--agent.opt.lr"] == "0.0003"
    assert value["--run.train_ratio"] == "512.0" and value["--run.steps"] == "3000"


def test_differences_name_exactly_the_settings_that_differ():
    ours = reference.our_config(["cartpole", "small"], [])
    official = {pair.official: reference.official_value(pair, ours) for pair in reference.KEY_PAIRS}
    assert reference.differences(ours, official) == []
    assert official["agent.retnorm.rate"] == 1.0 - ours["actor_critic.retnorm_decay"]
    official["agent.opt.lr"] = 4e-5
    official["agent.opt.eps"] = float(ours["optim.eps"]) * (1 + 1e-9)  # float rounding: the same
    del official["agent.horizon"]
    diffs = reference.differences(ours, official)
    assert [(d["ours"], d["official_value"]) for d in diffs] == [
        ("optim.lr", 4e-5),
        ("actor_critic.discount_horizon", None),
    ]
    assert [d["ours"] for d in reference.differences(ours, official, ignore=("optim.lr",))] == [
        "actor_critic.discount_horizon"
    ]
    text = reference.format_differences(diffs)
    assert "optim.lr=0.0003  vs  agent.opt.lr=4e-05" in text
    assert reference.STRUCTURAL_DIFFERENCES[0] in text


def test_a_complete_run_is_skipped_and_an_unfinished_one_runs(tmp_path):
    logdir = tmp_path / "cartpole" / "official" / "seed0"
    skipped = reference.Run("official", "cartpole", 0, logdir, ["false"])
    logdir.mkdir(parents=True)
    reference.mark_complete(logdir, steps=3000, seconds=1.0)
    assert reference.is_complete(logdir, 3000) and reference.execute(skipped, 3000) == 0
    assert not reference.is_complete(logdir, 5000)  # a larger budget continues the run
    assert reference.execute(skipped, 5000) == 1 and not reference.is_complete(logdir, 5000)
    fresh = reference.Run("ours", "cartpole", 0, tmp_path / "fresh", ["true"])
    assert not reference.is_complete(fresh.logdir, 3000)
    assert reference.execute(fresh, 3000) == 0 and reference.is_complete(fresh.logdir, 3000)
    assert fresh.logdir.with_suffix(".log").exists()


def test_the_differences_no_key_expresses_follow_our_start_and_replay_context():
    ours = reference.our_config(["cartpole", "small"], [])  # the reference's start and replay context
    assert reference.structural_differences(ours) == reference.STRUCTURAL_DIFFERENCES
    prefilled = reference.our_config(["cartpole", "small"], reference.set_overrides(["run.prefill=1024"]))
    assert reference.structural_differences(prefilled)[0] == reference.PREFILL
    v1 = reference.our_config(["cartpole", "small"], reference.set_overrides(["replay.context=0"]))
    assert reference.structural_differences(v1) == (
        reference.REPLAY_CONTEXT,
        *reference.STRUCTURAL_DIFFERENCES,
    )


def test_final_returns_of_complete_runs_against_the_official_seed_range(tmp_path):
    """The mean return over the last 20% of each complete run's budget; ours averaged over seeds and
    placed against the official's seed range. An unfinished run is left out."""
    for seed, (official, ours) in enumerate([(100.0, 300.0), (200.0, 150.0), (250.0, 90.0)]):
        for side, final in (("official", official), ("ours", ours)):
            logdir = reference.run_dir(tmp_path, side, "cartpole", seed)
            rows = [
                {"step": 100, "final": 0.0},
                {"step": 850, "final": final - 10},
                {"step": 990, "final": final + 10},
            ]
            if side == "official":
                write_jsonl(
                    logdir / "episodes.jsonl",
                    [{"step": r["step"], "score": r["final"], "time": 1.0} for r in rows],
                )
            else:
                write_jsonl(
                    logdir / "metrics.jsonl",
                    [{"step": r["step"], "fps/policy": 10.0, "episode/return": r["final"]} for r in rows],
                )
            if seed < 2 or side == "official":
                reference.mark_complete(logdir, 1000, 1.0)
    curves = reference.collect_curves(tmp_path, ["cartpole"], [0, 1, 2])
    finals = reference.final_returns(tmp_path, curves, ["cartpole"], [0, 1, 2])
    assert [(f["side"], f["seed"], f["final"]) for f in finals] == [
        ("ours", 0, 300.0), ("ours", 1, 150.0),
        ("official", 0, 100.0), ("official", 1, 200.0), ("official", 2, 250.0),
    ]  # fmt: skip
    (line,) = reference.verdicts(finals, ["cartpole", "pendulum"])
    assert line.startswith(
        "cartpole: last 20% of the budget, ours 225.0 (seeds 300.0, 150.0), official 100.0 to 250.0"
    )
    assert line.endswith("within it")
    above = [dict(f, final=400.0) if f["side"] == "ours" else f for f in finals]
    assert reference.verdicts(above, ["cartpole"])[0].endswith("above the official's range")


def load_bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_timing_runs_the_official_in_the_asked_precision_on_the_shapes_ours_times():
    import gymnasium

    launcher, update = load_bench_module("official_launch"), load_bench_module("update")
    flags = reference.official_time_flags("size12m", "image", "bfloat16")
    value = dict(zip(flags[::2], flags[1::2], strict=True))
    assert flags.count("--jax.compute_dtype") == 1 and value["--jax.compute_dtype"] == "bfloat16"
    assert value["--task"] == f"gymnasium_{launcher.IMAGE_ENV}" and value["--configs"] == "size12m"
    assert value["--batch_size"] == "16" and value["--batch_length"] == "64"
    launcher.register_image_env()
    env = gymnasium.make(launcher.IMAGE_ENV)
    image = update.OBS_SPACES["image"]["image"]
    assert env.observation_space.shape == image.shape and env.observation_space.dtype == image.dtype
    assert update.ACT_SPACE.kind == "discrete" and env.action_space.n == update.ACT_SPACE.dim
    vector = reference.official_time_flags("size1m", "vector", "float32")
    assert vector[vector.index("--task") + 1] == "gymnasium_CartPole-v1"
    cartpole = gymnasium.make("CartPole-v1").observation_space
    assert cartpole.shape == update.OBS_SPACES["vector"]["vector"].shape


def test_the_timing_table_sets_the_fastest_official_precision_against_ours(monkeypatch, capsys):
    seconds = {"ours": 1.0, "official float32": 6.0, "official bfloat16": 4.0}
    monkeypatch.setattr(reference, "time_round", lambda size, obs, args: dict(seconds))
    monkeypatch.setattr(reference, "json_line", lambda command: {})
    args = reference.parse_args(["time", "--official-python", "python", "--sizes", "size1m", "--rounds", "2"])
    assert args.precision == "auto" and args.official_precisions == ["float32", "bfloat16"]
    reference.time_main(args)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("CPU capability") and "run.precision auto ->" in out[0]
    assert out[-1].split() == ["size1m", "vector", "1.000", "6.000", "4.000", "4.00"]
