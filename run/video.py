"""Writing videos to files: mp4 through imageio-ffmpeg (no moviepy needed), or gif."""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from configs.schema import VIDEO_FORMATS


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
