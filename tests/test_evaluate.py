"""Evaluation: return statistics, episode collection, world-model bounds and open-loop errors on a trained
model, the evaluate.py entry point on a debug run (files, plots, videos), comparison of runs, bad input."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import evaluate
import train
from agent import make_agent
from configs.loader import load_config, save_config, to_yaml
from envs import make_vec_env
from evaluation import compare
from evaluation.policy import collect_episodes, quotas, summary_stats, t_quantile_975
from evaluation.world_model import episode_windows, open_loop_errors, valid_after_context
from run.checkpoint import Checkpointer
from run.driver import Driver, random_policy
from run.stop import StopFlag

POSITIONS = 32
QUIET = {"logger": {"terminal": False, "wandb": {"mode": "disabled"}}}


class RingEnv(gym.Env):
    """A point on a ring of 32 positions: each step moves it 1 (action 0) or 2 (action 1) positions.
    obs = [cos, sin] of its angle (deterministic given the actions); reward 1 at position 0; episodes
    truncate after `length` steps; renders a 16x16 frame with a white 4x4 square at its cell."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, length=40, render_mode=None):
        self.length, self.render_mode = length, render_mode
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.p, self.t = int(self.np_random.integers(POSITIONS)), 0
        return self._obs(), {}

    def step(self, action):
        self.p = (self.p + 1 + int(action)) % POSITIONS
        self.t += 1
        return self._obs(), float(self.p == 0), False, self.t >= self.length, {}

    def render(self):
        frame = np.zeros((16, 16, 3), np.uint8)
        row, col = divmod(self.p % 16, 4)
        frame[4 * row : 4 * row + 4, 4 * col : 4 * col + 4] = 255
        return frame

    def _obs(self):
        angle = 2 * np.pi * self.p / POSITIONS
        return np.array([np.cos(angle), np.sin(angle)], np.float32)


class CountingRing(RingEnv):
    """The ring, counting its render() calls (all instances together)."""

    renders = 0

    def render(self):
        CountingRing.renders += 1
        return super().render()


class CameraRing(RingEnv):
    """The ring seen through a 16x16 camera image under the key `camera` (beside `pos`); no render()."""

    metadata = {"render_modes": []}

    def __init__(self, length=40):
        super().__init__(length)
        self.observation_space = spaces.Dict(
            {"camera": spaces.Box(0, 255, (16, 16, 3), np.uint8), "pos": self.observation_space}
        )

    def _obs(self):
        return {"camera": super().render(), "pos": super()._obs()}


gym.register("EvalRing-v0", entry_point=RingEnv)
gym.register("EvalCountingRing-v0", entry_point=CountingRing)
gym.register("EvalCameraRing-v0", entry_point=CameraRing)


def ring_config(logdir, **env) -> object:
    tree = {**QUIET, "logdir": str(logdir), "env": {"id": "EvalRing-v0", **env}}
    return load_config(["debug"], tree)


def run_main(*args) -> int:
    return evaluate.main([str(a) for a in args])


# --- statistics -------------------------------------------------------------------------------------


def test_t_quantiles_match_tables_and_approach_the_normal():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(9) == 2.262 and t_quantile_975(30) == 2.042
    assert t_quantile_975(40) == pytest.approx(2.0211, abs=2e-4)  # table value 2.021
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=2e-4)  # table value 1.980
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)


def test_summary_stats_golden_values():
    s = summary_stats([4.0, 1.0, 3.0, 2.0])
    std = math.sqrt(5 / 3)
    assert (s["n"], s["mean"], s["min"], s["max"], s["median"]) == (4, 2.5, 1.0, 4.0, 2.5)
    assert s["std"] == pytest.approx(std)
    assert s["ci95_low"] == pytest.approx(2.5 - 3.182 * std / 2)
    assert s["ci95_high"] == pytest.approx(2.5 + 3.182 * std / 2)
    single = summary_stats([7.0])
    assert single["std"] == 0.0 and single["ci95_low"] is None and single["ci95_high"] is None


def test_quotas_spread_episodes_over_envs():
    assert quotas(10, 3) == [4, 3, 3] and quotas(2, 4) == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="evaluation episodes must be >= 1"):
        quotas(0, 2)


def test_collect_episodes_keeps_each_envs_quota_and_matches_the_drivers_returns():
    config = ring_config("unused", kwargs={"length": 7})
    env = make_vec_env(config.env, seed=3, num_envs=3)
    episodes = collect_episodes(env, random_policy(env.act_space, 3, np.random.default_rng(0)), 5)
    assert [e.env for e in episodes] == [0, 0, 1, 1, 2]
    for e in episodes:
        assert e.length == 7 and len(e.steps["is_first"]) == 8
        assert e.steps["is_first"][0] and not e.steps["is_first"][1:].any() and e.steps["is_last"][-1]
        assert e.ret == pytest.approx(float(e.steps["reward"][1:].sum()))
    # The same returns as the driver's own episode accounting, on the same seeds and actions.
    returns = []
    driver = Driver(make_vec_env(config.env, seed=3, num_envs=3))
    driver.on_episode(lambda stats: returns.append((stats["env"], stats["return"])))
    driver(random_policy(env.act_space, 3, np.random.default_rng(0)), steps=16)
    firsts = {i: [r for j, r in returns if j == i] for i in range(3)}
    expected = firsts[0][:2] + firsts[1][:2] + firsts[2][:1]
    assert [e.ret for e in episodes] == pytest.approx(expected)


def test_open_loop_mask_stops_at_a_restart_after_the_context():
    is_first = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0], [1, 0, 0, 0, 1, 0]], dtype=torch.bool)
    valid = valid_after_context(is_first, 2)
    expected = [[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]]
    assert valid.int().tolist() == expected


# --- a world model trained on the toy env, saved as a run ------------------------------------------


def train_world_model(agent, episodes, updates, rng):
    """Adam on the world-model loss over random windows of the episodes (fast, no actor-critic)."""
    windows = episode_windows(episodes, 12, 1000)
    optim = torch.optim.Adam(agent.wm.parameters(), lr=3e-3)
    for _ in range(updates):
        pick = rng.integers(0, len(windows["is_first"]), 8)
        out = agent.wm.loss({k: torch.as_tensor(v[pick]) for k, v in windows.items()})
        loss = sum(agent.scales[k] * v.mean() for k, v in out.losses.items())  # as the agent weighs them
        optim.zero_grad()
        loss.backward()
        optim.step()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run folder with two checkpoints of a debug agent on the ring: untrained (step 0) and after 120
    world-model updates on random-policy episodes (step 100)."""
    logdir = tmp_path_factory.mktemp("trained")
    config = ring_config(logdir)
    torch.manual_seed(0)
    env = make_vec_env(config.env, seed=0, num_envs=4)
    agent = make_agent(config, env.obs_space, env.act_space)
    rng = np.random.default_rng(0)
    episodes = collect_episodes(env, random_policy(env.act_space, 4, rng), 16)
    save_config(config, logdir / "config.yaml")
    checkpointer = Checkpointer(logdir / "checkpoints", keep=3)
    checkpointer.save({"config": to_yaml(config), "agent": agent.state_dict()}, 0)
    train_world_model(agent, episodes, 120, rng)
    checkpointer.save({"config": to_yaml(config), "agent": agent.state_dict()}, 100)
    args = ["--logdir", logdir, "--episodes", 4, "--modes", "mode,sample"]
    args += ["--context", 4, "--openloop-steps", 8]
    assert run_main(*args, "--samples", 1, 8, "--env.eval_num_envs", 2) == 0
    return logdir


def test_summary_json_has_finite_statistics_per_mode(trained_run):
    summary = json.loads((trained_run / "eval" / "summary.json").read_text())
    assert summary["step"] == 100 and summary["env"] == "EvalRing-v0" and summary["seed"] == 10_000
    for mode in ("mode", "sample"):
        for name in ("return", "length"):
            stats = summary["policy"][mode][name]
            assert set(stats) == {"n", "mean", "std", "min", "max", "median", "ci95_low", "ci95_high"}
            assert stats["n"] == 4 and all(math.isfinite(v) for v in stats.values())
            half = 3.182 * stats["std"] / 2  # t_{0.975, 3} std / sqrt(4)
            assert stats["ci95_low"] == pytest.approx(stats["mean"] - half)
            assert stats["ci95_high"] == pytest.approx(stats["mean"] + half)
            assert stats["min"] <= stats["median"] <= stats["max"]
        assert summary["policy"][mode]["length"]["mean"] == 40  # the ring truncates at 40 steps
    rows = list(csv.DictReader((trained_run / "eval" / "episodes.csv").open()))
    assert [(r["mode"], r["episode"]) for r in rows][:5] == [("mode", str(i)) for i in range(4)] + [
        ("sample", "0")
    ]
    returns = [float(r["return"]) for r in rows if r["mode"] == "sample"]
    assert np.mean(returns) == pytest.approx(summary["policy"]["sample"]["return"]["mean"])


def test_importance_weighted_bound_is_above_the_elbo(trained_run):
    bound = json.loads((trained_run / "eval" / "world_model.json").read_text())["bound"]
    assert bound["k"] == 8 and bound["steps"] == 8 * 41  # 8 episodes of 40 transitions + first step
    assert all(math.isfinite(v) for v in bound.values())
    # log-mean-exp >= mean for every sequence: exact; against the closed-form-KL ELBO: on average.
    assert bound["iwae"] >= bound["iwae_elbo"]
    assert bound["iwae"] >= bound["elbo_kl"] and bound["iwae_gap"] >= 0
    assert bound["elbo"] == pytest.approx(-bound["rate"] - bound["distortion"], rel=1e-5)
    assert 0 <= bound["cont_accuracy"] <= 1 and bound["reward_mse"] >= 0


def test_three_bounds_per_k_with_their_gaps_and_times(trained_run, capsys):
    sweep = json.loads((trained_run / "eval" / "world_model.json").read_text())["bounds"]
    assert sweep["k"] == [1, 8] and sweep["steps"] == 8 * 41
    assert (sweep["resampler"], sweep["ess_threshold"]) == ("systematic", 0.5)
    for name in ("elbo", "iw", "smc", "iw_gap", "smc_gap", "resample_rate", "seconds/iw", "seconds/smc"):
        assert len(sweep[name]) == 2 and all(math.isfinite(v) for v in sweep[name]), name
    for name in ("iw", "smc"):
        gaps = [b - e for b, e in zip(sweep[name], sweep["elbo"], strict=True)]
        assert sweep[f"{name}_gap"] == pytest.approx(gaps)
        # Eight particles or trajectories beat the ELBO on average over 8 sequences of 41 steps.
        assert sweep[f"{name}_gap"][1] > 0
    assert sweep["resample_rate"][0] == 0 and 0 <= sweep["resample_rate"][1] <= 40 / 41  # never at K = 1
    assert all(v > 0 for v in sweep["seconds/iw"] + sweep["seconds/smc"])
    assert (trained_run / "eval" / "plots" / "bounds.png").stat().st_size > 1000


def test_bounds_option_selects_the_bounds_and_the_resampling(trained_run, tmp_path):
    out = tmp_path / "smc"
    args = ["--logdir", trained_run, *EVAL_ARGS, "--out", out, "--bounds", "smc", "--samples", 2]
    assert run_main(*args, "--resampler", "multinomial", "--ess-threshold", 1) == 0
    sweep = json.loads((out / "world_model.json").read_text())["bounds"]
    assert {k for k in sweep if k not in ("k", "steps", "resampler", "ess_threshold")} == {
        "smc",
        "resample_rate",
        "seconds/smc",
    }
    # Threshold 1: two particles resample after every step but each episode's last (41 steps each).
    assert sweep["k"] == [2] and sweep["resampler"] == "multinomial"
    assert sweep["resample_rate"] == [pytest.approx(40 / 41)]
    assert json.loads((out / "world_model.json").read_text())["bound"]["k"] == 2


def test_open_loop_error_grows_with_the_horizon_for_a_trained_model(trained_run):
    result = json.loads((trained_run / "eval" / "world_model.json").read_text())
    mse = result["open_loop"]["mse"]["vector"]
    assert result["open_loop"]["horizon"] == 8 and len(mse) == 8
    assert result["open_loop"]["sequences"] == [24] * 8  # 8 episodes x 3 windows of 12 steps
    assert mse[0] <= mse[-1]
    # The trained checkpoint models the data better than the untrained one.
    first, last = result["checkpoints"]
    assert (first["step"], last["step"]) == (0, 100)
    assert last["distortion"] < first["distortion"] and last["elbo"] > first["elbo"]


def test_open_loop_of_the_trained_model_beats_the_untrained_one(trained_run):
    config = ring_config(trained_run)
    env = make_vec_env(config.env, seed=77, num_envs=2)
    episodes = collect_episodes(env, random_policy(env.act_space, 2, np.random.default_rng(1)), 4)
    window = episode_windows(episodes, 12, 64)
    errors = {}
    for step in (0, 100):
        agent = make_agent(config, env.obs_space, env.act_space)
        agent.load_state_dict(torch.load(trained_run / "checkpoints" / f"ckpt-{step:09d}.pt")["agent"])
        errors[step] = open_loop_errors(agent.wm, window, 4).mse["vector"]
    assert errors[100][0] < 0.25 * errors[0][0]
    assert errors[100].mean() < errors[0].mean()


def test_a_vector_observation_env_gets_policy_videos_of_what_it_renders(trained_run):
    # Before: videos needed an `image` observation; the ring renders, but its observation is a vector.
    videos = sorted(p.name for p in (trained_run / "eval" / "videos").iterdir())
    assert videos == ["policy_0.mp4"]  # no reconstruction video: the model sees no image
    import imageio.v2 as imageio

    frames = np.asarray(imageio.mimread(trained_run / "eval" / "videos" / "policy_0.mp4"))
    assert frames.shape == (41, 16, 16, 3)  # the first step and 40 transitions, as rendered


def test_plots_are_written_and_not_empty(trained_run):
    for name in ("open_loop.png", "open_loop_strip.png", "rate_distortion.png"):
        path = trained_run / "eval" / "plots" / name
        assert path.stat().st_size > 1000, name


# --- the entry point on a real debug run with pixels --------------------------------------------------


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    """A 100-step debug training run on the ring from 16x16 pixels, checkpoints at 50 and 100."""
    logdir = tmp_path_factory.mktemp("pixels")
    config = load_config(
        ["debug"],
        {
            **QUIET,
            "logdir": str(logdir),
            "env": {"id": "EvalRing-v0", "obs": "pixels", "kwargs": {"length": 20}},
            "run": {"steps": 100, "save_every_steps": 50},
            "logger": {"terminal": False, "wandb": {"mode": "disabled"}, "video_format": "gif"},
        },
    )
    assert train.train(config) == 0
    return logdir


def test_pixel_run_writes_videos_with_reconstructions_and_psnr(pixel_run, capsys):
    out = pixel_run / "eval"
    assert run_main("--logdir", pixel_run, "--episodes", 2, "--videos", 2, "--openloop-steps", 6) == 0
    videos = sorted((out / "videos").glob("episode_*.gif"))
    assert [v.name for v in videos] == ["episode_0.gif", "episode_1.gif"]
    import imageio.v2 as imageio

    frames = np.asarray(imageio.mimread(videos[0]))
    assert frames.shape[:3] == (21, 16, 32)  # real | reconstruction, one frame per step
    result = json.loads((out / "world_model.json").read_text())
    assert "bits_per_dim/image" in result["bound"] and math.isfinite(result["bound"]["bits_per_dim/image"])
    psnr = result["open_loop"]["psnr"]["image"]
    assert len(psnr) == 6 and all(math.isfinite(v) and v > 0 for v in psnr)
    assert (out / "plots" / "open_loop_strip.png").stat().st_size > 1000
    assert "policy sample: return" in capsys.readouterr().out  # sampled actions unless --modes says
    assert list(json.loads((out / "summary.json").read_text())["policy"]) == ["sample"]


def test_world_model_on_a_saved_dataset(pixel_run, tmp_path):
    out = tmp_path / "ds"
    args = ["--logdir", pixel_run, "--episodes", 1, "--dataset", pixel_run / "replay", "--batches", 2]
    assert run_main(*args, "--openloop-steps", 3, "--out", out) == 0
    result = json.loads((out / "world_model.json").read_text())
    assert result["bound"]["steps"] == 2 * 4 * 8  # batches x debug batch size x (context 5 + 3 open loop)
    assert result["open_loop"]["horizon"] == 3


def test_checkpoint_all_prints_a_row_per_checkpoint(pixel_run, tmp_path, capsys):
    out = tmp_path / "all"
    assert run_main("--logdir", pixel_run, "--checkpoint", "all", "--episodes", 1, "--out", out) == 0
    table = capsys.readouterr().out
    assert "distortion" in table and "\n        50  " in table and "\n       100  " in table
    steps = [p["step"] for p in json.loads((out / "world_model.json").read_text())["checkpoints"]]
    assert steps == [50, 100]


# --- policy videos in training --------------------------------------------------------------------------


def gif_frames(path: Path) -> tuple[int, int]:
    """(frames, milliseconds per frame) of a gif."""
    from PIL import Image

    with Image.open(path) as gif:
        return gif.n_frames, gif.info["duration"]


def test_training_videos_of_a_vector_env_come_from_render_only_while_recording(tmp_path):
    # Before: a vector-observation env had no policy videos, in training or in evaluation.
    config = load_config(
        ["debug"],
        {
            **QUIET,
            "logdir": str(tmp_path),
            "env": {"id": "EvalCountingRing-v0", "kwargs": {"length": 20}},
            "run": {"steps": 130, "video_every": 40, "eval_every": 65, "eval_episodes": 2},
            "logger": {"terminal": False, "wandb": {"mode": "disabled"}, "video_format": "gif", "fps": 10},
        },
    )
    CountingRing.renders = 0
    loop = train.build(config)
    loop.run(StopFlag())
    train.close(loop.parts)
    videos = sorted((tmp_path / "videos").iterdir())
    names = [v.name for v in videos]
    assert any(n.startswith("policy_episode_") for n in names) and any(
        n.startswith("eval_policy_") for n in names
    )
    counts = [gif_frames(v) for v in videos]
    assert all(n == 21 and ms == 100 for n, ms in counts), counts  # whole 20-step episodes at logger.fps 10
    # Every render made a frame of a video (or of the recording still open): none while not recording.
    assert CountingRing.renders == sum(n for n, _ in counts) + len(loop.recorder.frames)


def test_images_under_any_key_give_training_and_evaluation_videos(tmp_path, capsys):
    # Before: only an observation named `image` gave policy videos.
    config = load_config(
        ["debug"],
        {
            **QUIET,
            "logdir": str(tmp_path),
            "env": {"id": "EvalCameraRing-v0", "kwargs": {"length": 20}},
            "run": {"steps": 100, "video_every": 30, "eval_every": 50, "eval_episodes": 1},
            "logger": {"terminal": False, "wandb": {"mode": "disabled"}, "video_format": "gif"},
        },
    )
    assert train.train(config) == 0
    names = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert any(n.startswith("policy_episode_") for n in names) and any(
        n.startswith("eval_policy_") for n in names
    )
    assert run_main("--logdir", tmp_path, "--episodes", 1, "--openloop-steps", 4) == 0
    videos = sorted(p.name for p in (tmp_path / "eval" / "videos").iterdir())
    assert videos == ["episode_0.gif", "policy_0.gif"]  # the camera beside its reconstruction; the camera
    import imageio.v2 as imageio

    assert np.asarray(imageio.mimread(tmp_path / "eval" / "videos" / "episode_0.gif")).shape[1:3] == (16, 32)


# --- unreadable checkpoints and run folders ------------------------------------------------------------


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to, ignore=shutil.ignore_patterns("eval"))
    return to


def corrupt(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


EVAL_ARGS = ("--episodes", 2, "--openloop-steps", 4)


def test_a_corrupt_older_checkpoint_is_skipped_with_a_warning(trained_run, tmp_path, capsys):
    # Before: a traceback after all the rollouts.
    run = copy_run(trained_run, tmp_path / "run")
    corrupt(run / "checkpoints" / "ckpt-000000000.pt")
    assert run_main("--logdir", run, *EVAL_ARGS) == 0
    err = capsys.readouterr().err
    assert "ckpt-000000000.pt is corrupt" in err and "checkpoint skipped" in err and "Traceback" not in err
    points = json.loads((run / "eval" / "world_model.json").read_text())["checkpoints"]
    assert [p["step"] for p in points] == [100]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(trained_run, tmp_path, capsys):
    # Before: exit 1 although an older checkpoint could be evaluated (train.py falls back to it).
    run = copy_run(trained_run, tmp_path / "run")
    corrupt(run / "checkpoints" / "ckpt-000000100.pt")
    assert run_main("--logdir", run, *EVAL_ARGS) == 0
    assert "ckpt-000000100.pt is corrupt" in capsys.readouterr().err
    assert json.loads((run / "eval" / "summary.json").read_text())["step"] == 0
    assert (run / "checkpoints" / "ckpt-000000100.pt").exists()  # evaluation leaves the run folder as it is
    for name in ("ckpt-000000000.pt", "ckpt-000000100.pt"):
        corrupt(run / "checkpoints" / name)
    assert run_main("--logdir", run, *EVAL_ARGS) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("evaluate.py: error: no readable checkpoint in ")


def test_an_output_folder_that_cannot_be_written_is_one_line_before_any_rollout(
    trained_run, tmp_path, capsys, monkeypatch
):
    # Before: every rollout was done, then a traceback from mkdir.
    run = copy_run(trained_run, tmp_path / "run")
    (run / "eval").write_text("a file where the output folder would go")

    def no_rollouts(*args, **kwargs):
        raise AssertionError("a rollout ran before the output folder was checked")

    monkeypatch.setattr(evaluate, "collect_episodes", no_rollouts)
    assert run_main("--logdir", run, *EVAL_ARGS) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"evaluate.py: error: cannot write the results to '{run / 'eval'}'"
    )
    assert err[0].endswith("; give --out DIR to write the results elsewhere")
    monkeypatch.undo()
    assert run_main("--logdir", run, *EVAL_ARGS, "--out", tmp_path / "out") == 0
    assert (tmp_path / "out" / "summary.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_evaluated_with_out(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    for path in [run, *run.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        assert run_main("--logdir", run, *EVAL_ARGS) == 1
        assert "cannot write the results to" in capsys.readouterr().err
        assert run_main("--logdir", run, *EVAL_ARGS, "--out", tmp_path / "out") == 0
        assert run_main("--logdir", run, *EVAL_ARGS, "--out", tmp_path / "out", "--wandb") == 1
        assert "--wandb logs into the run folder" in capsys.readouterr().err
    finally:
        for path in [run, *run.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


# --- bad input ----------------------------------------------------------------------------------------


def test_logdir_without_checkpoint_is_one_clear_error(tmp_path, capsys):
    assert run_main("--logdir", tmp_path) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"evaluate.py: error: no checkpoint (ckpt-*.pt) in {tmp_path}"
    assert run_main("--logdir", tmp_path / "missing") == 1
    assert "does not exist" in capsys.readouterr().err


def test_checkpoint_that_does_not_fit_the_env_is_one_clear_error(pixel_run, capsys):
    assert run_main("--logdir", pixel_run, "--env.obs", "state") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match the spaces of env 'EvalRing-v0'" in err[0]
    assert "observations vector float32(2,)" in err[0]


def test_env_that_cannot_be_made_is_one_clear_error(pixel_run, capsys):
    assert run_main("--logdir", pixel_run, "--env.id", "NoSuchEnv-v0") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("evaluate.py: error: cannot make env 'NoSuchEnv-v0'")


def test_bad_options_exit_2(pixel_run, capsys):
    assert run_main("--logdir", pixel_run, "--modes", "greedy") == 2
    assert "--modes takes sample and/or mode" in capsys.readouterr().err
    assert run_main("--logdir", pixel_run, "--env.idd", "x") == 2
    assert "unknown config key 'env.idd'" in capsys.readouterr().err
    assert run_main("--logdir", pixel_run, "--openloop-steps", 0) == 2
    assert "--openloop-steps must be >= 1; got 0" in capsys.readouterr().err
    assert run_main("--logdir", pixel_run, "--samples", 4, 0) == 2
    assert "--samples must be >= 1; got 4 0" in capsys.readouterr().err
    assert run_main("--logdir", pixel_run, "--bounds", "elbo", "vi") == 2
    assert "--bounds takes elbo, iw, smc; got elbo vi" in capsys.readouterr().err
    assert run_main("--logdir", pixel_run, "--resampler", "stratified") == 2
    assert "--resampler takes systematic or multinomial" in capsys.readouterr().err
    assert run_main("--logdir", pixel_run, "--ess-threshold", 1.5) == 2
    assert "--ess-threshold must be in [0, 1]; got 1.5" in capsys.readouterr().err


# --- comparing runs -------------------------------------------------------------------------------------


def fake_run(path: Path, seed: int, env_id: str, slope: float) -> Path:
    """A run folder whose eval return is `slope * frames / 100` at frames 0, 100, ..., 1000."""
    path.mkdir(parents=True)
    save_config(
        load_config(["debug"], {"logdir": str(path), "seed": seed, "env": {"id": env_id}}),
        path / "config.yaml",
    )
    rows = [{"step": f, "frames": f, "eval/return": slope * f / 100} for f in range(0, 1001, 100)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_compare_groups_seeds_and_prints_every_run(tmp_path, capsys):
    a0 = fake_run(tmp_path / "a_s0", 0, "CartPole-v1", 1.0)
    a1 = fake_run(tmp_path / "a_s1", 1, "CartPole-v1", 3.0)
    b0 = fake_run(tmp_path / "b_s0", 0, "Pendulum-v1", 2.0)
    records = compare.read_runs([a0, a1, b0])
    assert [r.group for r in records] == [str(a0), str(a0), str(b0)]
    groups = compare.groups(records)
    x, mean, std, seeds = groups[str(a0)]
    assert seeds == 2 and x[0] == 0 and x[-1] == 1000
    np.testing.assert_allclose(mean, 2 * x / 100)
    np.testing.assert_allclose(std, x / 100)
    assert run_main("--compare", a0, a1, b0, "--out", tmp_path / "cmp") == 0
    out = capsys.readouterr().out
    for run, final in ((a0, "10.00"), (a1, "30.00"), (b0, "20.00")):
        assert any(str(run) in line and final in line for line in out.splitlines())
    assert (tmp_path / "cmp" / "compare_returns.png").stat().st_size > 1000


def test_compare_reads_the_evaluation_summary_of_a_real_run(pixel_run, trained_run, tmp_path, capsys):
    assert run_main("--logdir", pixel_run, "--episodes", 2) == 0
    assert run_main("--compare", pixel_run, tmp_path / "nothing") == 1
    assert "has no config.yaml" in capsys.readouterr().err
    records = compare.read_runs([pixel_run])
    assert records[0].final["source"] == "summary.json" and records[0].curve_key == "episode/return"


@pytest.mark.slow
def test_results_go_to_the_runs_wandb_offline(pixel_run):
    assert run_main("--logdir", pixel_run, "--episodes", 1, "--wandb") == 0
    assert list((pixel_run / "wandb").glob("offline-run-*"))
