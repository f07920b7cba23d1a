"""Logger: averaged scalars to metrics.jsonl, terminal line, TensorBoard, wandb offline, video files."""

import dataclasses
import io
import json

import imageio.v2 as imageio
import numpy as np
import pytest

from configs.loader import load_config
from run.logger import WANDB_ID_FILE, Logger, Progress, TerminalOutput, continue_metrics, make_logger
from run.video import write_video


def logger_config(**changes):
    config = load_config(["debug"]).logger
    wandb = dataclasses.replace(config.wandb, **changes.pop("wandb", {}))
    return dataclasses.replace(config, wandb=wandb, **changes)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scalars_are_averaged_between_writes_and_appended(tmp_path):
    logger = make_logger(logger_config(terminal=False), tmp_path, {})
    logger.scalar("a", 1.0)
    logger.scalar("a", 2.0)
    logger.scalars({"b": 5.0}, prefix="train/")
    logger.write(10)
    logger.scalar("a", 7.0)
    logger.write(20)
    logger.write(30)  # nothing new: no line
    logger.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 10, "a": 1.5, "train/b": 5.0},
        {"step": 20, "a": 7.0},
    ]
    again = make_logger(logger_config(terminal=False), tmp_path, {})  # a resumed run appends
    again.scalar("a", 3.0)
    again.write(40)
    again.close()
    assert [row["step"] for row in read_jsonl(tmp_path / "metrics.jsonl")] == [10, 20, 40]


def write_rows(path, steps, tail=""):
    path.write_text("".join(json.dumps({"step": s, "a": 1.0}) + "\n" for s in steps) + tail)


def test_a_resumed_run_continues_the_metrics_from_its_checkpoint_step(tmp_path):
    # Checkpoint at 20; the run went on logging to 40 and was killed while writing the row of 50.
    write_rows(tmp_path / "metrics.jsonl", [10, 20, 30, 40], tail='{"step": 50, "a": 1')
    logger = make_logger(logger_config(terminal=False), tmp_path, {}, start_step=20)
    logger.scalar("a", 2.0)
    logger.write(30)
    logger.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 10, "a": 1.0},
        {"step": 20, "a": 1.0},
        {"step": 30, "a": 2.0},  # the resumed run's row, once
    ]


def test_a_line_cut_short_never_swallows_the_next_row(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", [10], tail='{"step": 20, "a": 1')
    logger = make_logger(logger_config(terminal=False), tmp_path, {})  # appends, less the cut line
    logger.scalar("a", 2.0)
    logger.write(20)
    logger.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 10, "a": 1.0}, {"step": 20, "a": 2.0}]


def test_metrics_with_nothing_to_drop_are_left_as_they_are(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, [10, 20])
    inode = path.stat().st_ino
    continue_metrics(path, start_step=20)
    continue_metrics(tmp_path / "missing.jsonl", start_step=0)
    assert path.stat().st_ino == inode and [r["step"] for r in read_jsonl(path)] == [10, 20]
    continue_metrics(path, start_step=0)  # a new run in a folder whose first run had no checkpoint
    assert path.read_text() == ""


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_video_is_written_and_reads_back(tmp_path, fmt):
    logger = make_logger(logger_config(terminal=False, video_format=fmt, fps=10), tmp_path, {})
    frames = np.zeros((6, 15, 20, 3), np.uint8)
    for t in range(6):  # a white block moving right; odd height, padded for H.264
        frames[t, 4:10, 5 + t : 9 + t] = 255
    logger.video("openloop/image", frames)
    logger.write(7)
    logger.close()
    path = tmp_path / "videos" / f"openloop_image_000000007.{fmt}"
    assert logger.video_paths == [path] and path.exists()
    back = np.stack(list(imageio.mimread(path)))
    assert back.shape[0] == 6 and back.shape[1] in (15, 16) and back.shape[2] == 20
    assert back[0, 6, 7, :3].min() > 200 and back[5, 6, 12, :3].min() > 200 and back[0, 1, 1, :3].max() < 50


def test_grayscale_video_becomes_rgb(tmp_path):
    path = write_video(tmp_path / "g.gif", np.full((3, 8, 8, 1), 128, np.uint8), fps=5)
    back = np.stack(list(imageio.mimread(path)))
    assert back.shape[-1] in (3, 4) and abs(int(back[0, 3, 3, 0]) - 128) <= 2


@pytest.mark.parametrize(
    "frames",
    [np.zeros((4, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), np.zeros((0, 8, 8, 3), np.uint8)],
)
def test_bad_video_is_a_clear_error(tmp_path, frames):
    logger = Logger(tmp_path, [])
    with pytest.raises(ValueError, match=r"eval/policy: a video is a uint8 array \[T, H, W, C\]"):
        logger.video("eval/policy", frames)


def test_bad_video_suffix(tmp_path):
    with pytest.raises(ValueError, match="must end in one of .mp4, .gif"):
        write_video(tmp_path / "x.avi", np.zeros((2, 4, 4, 3), np.uint8), fps=5)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"wandb": {"mode": "onlin"}},
            "logger.wandb.mode must be one of online, offline, disabled; got 'onlin'",
        ),
        ({"video_format": "avi"}, "logger.video_format must be one of mp4, gif; got 'avi'"),
        ({"fps": 0}, "logger.fps must be >= 1; got 0"),
    ],
)
def test_bad_logger_config_names_the_key(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        make_logger(logger_config(**changes), tmp_path, {})


def test_terminal_line_is_compact_and_has_rate():
    stream = io.StringIO()
    progress = Progress(enabled=True, stream=stream)
    terminal = TerminalOutput(progress)
    logger = Logger("unused", [terminal], progress)
    progress.update(0, 1000)
    progress.update(100, 1000)
    logger.scalars({"frames": 400, "episode/return": 21.5, "train/elbo": -3.14159, "other": 1})
    logger.write(100)
    line = stream.getvalue().strip()
    assert line.startswith("step 100 | frames 400 | return 21.5 | elbo -3.142")
    assert "other" not in line and "steps/s, eta " in line


def test_terminal_off_prints_nothing(tmp_path, capsys):
    logger = make_logger(logger_config(terminal=False), tmp_path, {})
    logger.progress(5, 10)
    logger.scalar("a", 1)
    logger.write(5)
    logger.close()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_tensorboard_gets_scalars_and_histograms(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = make_logger(logger_config(terminal=False, tensorboard=True), tmp_path, {})
    logger.scalar("train/loss", 2.5)
    logger.histogram("eval/returns", np.array([1.0, 2.0, 3.0]))
    logger.write(3)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    [scalar] = events.Scalars("train/loss")
    assert (scalar.step, scalar.value) == (3, 2.5)
    assert events.Histograms("eval/returns")[0].histogram_value.num == 3


def test_tensorboard_hides_the_steps_after_a_resumed_runs_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = logger_config(terminal=False, tensorboard=True)
    for start_step, steps, value in ((None, (10, 20, 30), 1.0), (20, (30,), 2.0)):
        logger = make_logger(config, tmp_path, {}, start_step=start_step)
        for step in steps:
            logger.scalar("x", value)
            logger.write(step)
        logger.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("x")] == [(10, 1.0), (20, 1.0), (30, 2.0)]


def test_wandb_offline_writes_a_run_and_keeps_its_id_on_resume(tmp_path):
    config = logger_config(terminal=False, wandb={"mode": "offline", "project": "test", "tags": ["a"]})
    logger = make_logger(config, tmp_path, {"seed": 3})
    logger.scalar("x", 1.0)
    logger.video("policy", np.zeros((2, 8, 8, 3), np.uint8))
    logger.write(1)
    logger.close()
    run_id = (tmp_path / WANDB_ID_FILE).read_text()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(run_id)
    again = make_logger(config, tmp_path, {"seed": 3})
    again.close()
    assert (tmp_path / WANDB_ID_FILE).read_text() == run_id
    assert all(r.name.endswith(run_id) for r in (tmp_path / "wandb").glob("offline-run-*"))


def test_wandb_offline_resumes_the_run_at_the_checkpoint_step(tmp_path):
    config = logger_config(terminal=False, wandb={"mode": "offline", "project": "test"})
    first = make_logger(config, tmp_path, {})
    for step in (10, 20, 30):
        first.scalar("x", 1.0)
        first.write(step)
    first.close()
    resumed = make_logger(config, tmp_path, {}, start_step=20)
    run = resumed.outputs[-1].run
    # Rewound to step 20 (the offline folder records the branch point), not appended after step 30.
    assert run.id == (tmp_path / WANDB_ID_FILE).read_text() and run.starting_step == 21
    resumed.close()


def test_plots_from_metrics(tmp_path):
    from run.plots import make_plots, read_metrics

    rows = [
        {"step": s, "frames": 2 * s, "updates": s // 2, "episode/return": float(s)} for s in range(10, 60, 10)
    ]
    rows += [{"step": 60, "updates": 30, "train/elbo": -5.0, "train/rate": 1.0, "train/distortion": 4.0}]
    rows += [{"step": 70, "updates": 35, "train/elbo": -4.0, "train/rate": 1.5, "train/distortion": 2.5}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 80, "fra'  # cut short by a crash
    (tmp_path / "metrics.jsonl").write_text(text)
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 7
    paths = make_plots(tmp_path)
    assert [p.name for p in paths] == ["returns.png", "elbo.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert imageio.imread(path).shape[0] > 100


def test_rows_superseded_by_a_resumed_run_are_dropped(tmp_path):
    from run.plots import read_metrics

    steps = [10, 20, 30, 40, 25, 35, 45]  # killed after 40, resumed from a checkpoint at 20
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in steps))
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [10, 20, 25, 35, 45]


def test_plots_cli_errors_without_metrics(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "run.plots", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "no metrics.jsonl in" in result.stderr
