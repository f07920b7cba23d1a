"""Policy videos: the frames they show (`PolicyFrames`), and writing videos to files (mp4 through
imageio-ffmpeg, no moviepy needed, or gif)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import cv2
import imageio.v2 as imageio
import numpy as np

from configs.schema import VIDEO_FORMATS

# A rendered frame is shrunk to fit this many pixels on its longer side: a 600 x 400 CartPole frame
# would hold 0.7 MB of memory per recorded step.
VIDEO_MAX_SIDE = 256
# A recorded episode keeps its first this many frames (Atari episodes run to 27,000 steps).
VIDEO_MAX_FRAMES = 1000


def check_frames(frames: np.ndarray, name: str = "video") -> np.ndarray:
    """Validate a video `[T, H, W, C]` uint8 with C in (1, 3) and return it as RGB `[T, H, W, 3]`."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3) or not len(frames):
        raise ValueError(
            f"{name}: a video is a uint8 array [T, H, W, C] with C 1 or 3 and T > 0; "
            f"got {frames.dtype} {frames.shape}"
        )
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int) -> Path:
    """Write `frames` [T, H, W, C] uint8 to `path`; the suffix (.mp4 or .gif) picks the format."""
    path = Path(path)
    frames = check_frames(frames, path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp4":
        # H.264 in yuv420p needs even sides; pad with black rather than rescale the frames.
        T, H, W, _ = frames.shape
        frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)))
        imageio.mimwrite(path, frames, fps=fps, codec="libx264", macro_block_size=2, quality=8)
    elif path.suffix == ".gif":
        imageio.mimwrite(path, frames, duration=1000 / fps, loop=0)
    else:
        raise ValueError(f"video file {path} must end in one of {', '.join('.' + f for f in VIDEO_FORMATS)}")
    return path


def fit(frame: np.ndarray, max_side: int = VIDEO_MAX_SIDE) -> np.ndarray:
    """frame [H, W, C] shrunk (area averaging) so that its longer side is at most `max_side`."""
    H, W, C = frame.shape
    scale = max_side / max(H, W)
    if scale >= 1:
        return frame
    size = (max(round(W * scale), 1), max(round(H * scale), 1))  # cv2 takes (width, height)
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], C)


class PolicyFrames:
    """The frames of policy videos from a vector env: what env i renders, when it renders `rgb_array`,
    else its first image observation (under any key); neither gives no videos.

    The env renders only when a frame is asked for, so a run pays for rendering only while it records.
    A renderer that fails (e.g. MuJoCo without an OpenGL context) is reported once and not used again.
    """

    def __init__(self, env: Any):
        self.env = env
        self.rendering = bool(getattr(env, "renders", False))
        specs = getattr(env, "obs_space", {})
        images = [k for k, s in specs.items() if np.dtype(s.dtype) == np.uint8 and len(s.shape) == 3]
        self.image_key = images[0] if images else None

    @property
    def available(self) -> bool:
        return self.rendering or self.image_key is not None

    def __call__(self, step: dict[str, np.ndarray], index: int) -> np.ndarray | None:
        """The frame [H, W, C] uint8 of env `index` at `step` (the latest step dict), or None."""
        if self.rendering:
            frame = self._render(index)
            if frame is not None:
                return frame
        return step[self.image_key][index] if self.image_key is not None else None

    def _render(self, index: int) -> np.ndarray | None:
        try:
            frame = self.env.render(index)
        except Exception as e:  # reported; videos fall back to an image observation, the run goes on
            return self._stop_rendering(f"{type(e).__name__}: {e}")
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            return self._stop_rendering(f"it gave {frame.dtype} {frame.shape}, not [H, W, 3] uint8")
        return fit(frame)

    def _stop_rendering(self, why: str) -> None:
        self.rendering = False
        then = f"videos show the '{self.image_key}' observation" if self.image_key else "no policy videos"
        print(f"warning: policy videos: env.render() failed ({why}); {then}", file=sys.stderr)
