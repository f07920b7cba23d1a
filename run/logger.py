"""The run's logger: scalars averaged between writes, histograms and videos, sent to chosen outputs.

Outputs: `metrics.jsonl` in the run folder (always), a compact terminal line and a progress bar
(`logger.terminal`), TensorBoard (`logger.tensorboard`, under `<logdir>/tb`), and Weights & Biases
(`logger.wandb.mode` online / offline / disabled). Videos are written as files into `<logdir>/videos`
and handed to wandb by path; TensorBoard gets no videos (its writer needs moviepy).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Protocol

import numpy as np

from configs.schema import VIDEO_FORMATS, WANDB_MODES, LoggerConfig, WandbConfig
from run.video import check_frames, write_video
from util.files import write_atomic

WANDB_ID_FILE = "wandb_id.txt"
# Scalars shown on the terminal line, in this order, when present (label, metric name).
TERMINAL_KEYS = (
    ("frames", "frames"),
    ("updates", "updates"),
    ("return", "episode/return"),
    ("eval", "eval/return"),
    ("loss", "train/loss/total"),
    ("elbo", "train/elbo"),
    ("rate", "train/rate"),
    ("distortion", "train/distortion"),
    ("sps", "fps/policy"),
    ("ups", "fps/updates"),
)


class Summary(NamedTuple):
    """What one `write` hands to every output."""

    step: int
    scalars: dict[str, float]
    histograms: dict[str, np.ndarray]
    videos: dict[str, Path]


class Output(Protocol):
    def write(self, summary: Summary) -> None: ...

    def close(self) -> None: ...


class JSONLOutput:
    """One JSON object per write, appended to `metrics.jsonl`: {"step": ..., name: value, ...}.

    A run starting at `start_step` (a resumed run: its checkpoint's step) continues the file from that
    step (`continue_metrics`); None appends to the file as it is, less a line cut short.
    """

    def __init__(self, path: Path, start_step: int | None = None):
        continue_metrics(path, start_step)
        self.file = open(path, "a")  # noqa: SIM115 (kept open for the run; closed by close())

    def write(self, summary: Summary) -> None:
        if summary.scalars:
            self.file.write(json.dumps({"step": summary.step, **summary.scalars}) + "\n")
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def continue_metrics(path: Path, start_step: int | None) -> None:
    """Cut `metrics.jsonl` back to what a run starting at `start_step` continues: the rows of later steps
    (logged by a run killed after its last checkpoint, and logged again by the resumed run) are dropped,
    and so is a last line cut short by a kill, whose missing newline would swallow the next row. Unreadable
    lines go too. The file is rewritten atomically, and only when something is dropped."""
    if not path.exists():
        return
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else a line cut short
    last = math.inf if start_step is None else start_step
    kept = [line for line in lines if (step := _row_step(line)) is not None and step <= last]
    if tail or len(kept) < len(lines):
        write_atomic(path, lambda f: f.write(b"".join(line + b"\n" for line in kept)))


def _row_step(line: bytes) -> int | None:
    """The step of a metrics row, or None for a line that is not one."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row.get("step") if isinstance(row, dict) and isinstance(row.get("step"), int) else None


class TerminalOutput:
    """A compact line per write, printed above the progress bar when one is shown."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def write(self, summary: Summary) -> None:
        if not summary.scalars:
            return
        parts = [f"step {summary.step}"]
        for label, key in TERMINAL_KEYS:
            if key in summary.scalars:
                parts.append(f"{label} {_short(summary.scalars[key])}")
        parts += [f"video {path}" for path in summary.videos.values()]
        self.progress.print(" | ".join(parts))

    def close(self) -> None:
        self.progress.close()


def _short(value: float) -> str:
    if math.isfinite(value) and value == round(value) and abs(value) < 1e9:
        return f"{value:.0f}"
    return f"{value:.4g}"


class Progress:
    """A tqdm bar with steps/s and ETA when stderr is a terminal; plain lines otherwise."""

    def __init__(self, enabled: bool, stream: Any = None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.bar = None
        self.mark: tuple[float, int] | None = None  # (time, step) of the previous line
        self.step = self.total = 0

    def update(self, step: int, total: int) -> None:
        if not self.enabled:
            return
        if self.mark is None:
            self.mark = (time.monotonic(), step)
        if self.bar is None and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=step, unit="step", file=self.stream, dynamic_ncols=True)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
        self.total, self.step = total, step

    def eta(self) -> str:
        """Steps per second since the previous line and the time left at that rate (plain-line output);
        the recent rate, since collection slows down once training starts after the prefill."""
        if self.mark is None or self.step <= self.mark[1]:
            return ""
        now = time.monotonic()
        rate = (self.step - self.mark[1]) / max(now - self.mark[0], 1e-9)
        self.mark = (now, self.step)
        left = int(max(self.total - self.step, 0) / rate)
        return f"{rate:.1f} steps/s, eta {left // 3600}h{left % 3600 // 60:02d}m{left % 60:02d}s"

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            eta = self.eta()
            print(line + (f" | {eta}" if eta else ""), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorBoardOutput:
    """Scalars and histograms to a TensorBoard event file in `<logdir>/tb`; a run starting at
    `start_step` hides the events of later steps, as `continue_metrics` drops their rows."""

    def __init__(self, directory: Path, start_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        purge_step = None if start_step is None else start_step + 1
        self.writer = SummaryWriter(str(directory), purge_step=purge_step)

    def write(self, summary: Summary) -> None:
        for name, value in summary.scalars.items():
            self.writer.add_scalar(name, value, summary.step)
        for name, values in summary.histograms.items():
            self.writer.add_histogram(name, values, summary.step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbOutput:
    """A wandb run whose id is kept in `<logdir>/wandb_id.txt`, so a resumed run continues it.

    A run starting at `start_step` rewinds that wandb run to the step (`resume_from`) before it logs, so
    the history holds the resumed run's values, not those the killed run logged after its checkpoint.
    Offline, each start writes its own `offline-run-*` folder: the resumed one records the rewind and its
    history starts after the step, but the killed run's folder keeps its later steps; `wandb sync` of the
    folders in order asks the server to apply the rewind (a beta feature of wandb's).
    """

    def __init__(self, config: WandbConfig, logdir: Path, config_dict: dict, start_step: int | None = None):
        import wandb

        self.wandb = wandb
        id_file = logdir / WANDB_ID_FILE
        resuming = id_file.exists() and start_step is not None
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        settings = dict(
            mode=config.mode,
            dir=str(logdir),
            id=run_id,
            project=config.project or None,
            entity=config.entity or None,
            group=config.group or None,
            tags=list(config.tags) or None,
            name=config.name or None,
            config=config_dict,
        )
        run = self._rewind(settings, run_id, start_step) if resuming else None
        self.run = wandb.init(resume="allow", **settings) if run is None else run

    def _rewind(self, settings: dict, run_id: str, step: int) -> Any:
        """The wandb run resumed at `step`, or None (with a note) where wandb refuses to rewind it."""
        try:
            return self.wandb.init(resume_from=f"{run_id}?_step={step}", **settings)
        except self.wandb.errors.Error as e:
            message = f"note: wandb cannot rewind run {run_id} to step {step} ({e}); resuming it as it is"
            print(message, file=sys.stderr)
            return None

    def write(self, summary: Summary) -> None:
        data: dict[str, Any] = dict(summary.scalars)
        data.update({k: self.wandb.Histogram(v) for k, v in summary.histograms.items()})
        data.update({k: self.wandb.Video(str(p)) for k, p in summary.videos.items()})
        if data:
            self.run.log(data, step=summary.step)

    def close(self) -> None:
        self.run.finish()


class Logger:
    """Collects scalars (averaged over the calls between two writes), histograms and videos."""

    def __init__(
        self,
        logdir: str | os.PathLike,
        outputs: list[Output],
        progress: Progress | None = None,
        fps: int = 15,
        video_format: str = "mp4",
    ):
        self.logdir = Path(logdir)
        self.outputs = outputs
        self.progress_bar = progress or Progress(enabled=False)
        self.fps = fps
        self.video_format = video_format
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.histograms: dict[str, np.ndarray] = {}
        self.videos: dict[str, np.ndarray] = {}
        self.video_paths: list[Path] = []

    @property
    def pending(self) -> bool:
        """Whether anything was logged since the last write."""
        return bool(self.sums or self.histograms or self.videos)

    def scalar(self, name: str, value: float) -> None:
        self.sums[name] += float(value)
        self.counts[name] += 1

    def scalars(self, values: Mapping[str, float], prefix: str = "") -> None:
        for name, value in values.items():
            self.scalar(f"{prefix}{name}", value)

    def histogram(self, name: str, values: np.ndarray) -> None:
        self.histograms[name] = np.asarray(values, np.float64).reshape(-1)

    def video(self, name: str, frames: np.ndarray) -> None:
        """Queue a video `[T, H, W, C]` uint8; it is written to a file at the next `write`."""
        self.videos[name] = check_frames(frames, name)

    def progress(self, step: int, total: int) -> None:
        self.progress_bar.update(step, total)

    def write(self, step: int) -> None:
        """Write the averages of the scalars since the last write, the histograms and videos, then clear."""
        scalars = {k: self.sums[k] / self.counts[k] for k in self.sums}
        videos = {name: self._write_video(name, frames, step) for name, frames in self.videos.items()}
        summary = Summary(int(step), scalars, self.histograms, videos)
        for output in self.outputs:
            output.write(summary)
        self.sums.clear()
        self.counts.clear()
        self.histograms = {}
        self.videos = {}

    def _write_video(self, name: str, frames: np.ndarray, step: int) -> Path:
        path = self.logdir / "videos" / f"{name.replace('/', '_')}_{step:09d}.{self.video_format}"
        self.video_paths.append(write_video(path, frames, self.fps))
        return path

    def close(self) -> None:
        for output in self.outputs:
            output.close()
        self.outputs = []


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}; got '{value}'")


def make_logger(
    config: LoggerConfig, logdir: str | os.PathLike, config_dict: dict, start_step: int | None = None
) -> Logger:
    """The logger the config asks for; `config_dict` is the resolved config uploaded to wandb.

    `start_step`: the step the run starts at (its checkpoint's when it resumes; 0 for a new run). The
    outputs continue from it: rows and events of later steps are dropped or hidden. None appends to what
    is there.
    """
    _check_choice("logger.wandb.mode", config.wandb.mode, WANDB_MODES)
    _check_choice("logger.video_format", config.video_format, VIDEO_FORMATS)
    if config.fps < 1:
        raise ValueError(f"logger.fps must be >= 1; got {config.fps}")
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    progress = Progress(enabled=config.terminal)
    outputs: list[Output] = [JSONLOutput(logdir / "metrics.jsonl", start_step)]
    if config.terminal:
        outputs.append(TerminalOutput(progress))
    if config.tensorboard:
        outputs.append(TensorBoardOutput(logdir / "tb", start_step))
    if config.wandb.mode != "disabled":
        outputs.append(WandbOutput(config.wandb, logdir, config_dict, start_step))
    return Logger(logdir, outputs, progress, config.fps, config.video_format)
