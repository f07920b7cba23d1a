"""The arrays of one replay step: which keys, shapes and dtypes, and the check of an incoming step."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from envs.spaces import ArraySpec

# Flags every step carries; a stored sequence resets the model where `is_first` is set.
FLAG_KEYS = ("is_first", "is_last", "is_terminal")
# The keys of the model's latent stored with each step (`replay.context`) start with this.
CONTEXT = "context/"


def step_spec(
    obs_space: Mapping[str, ArraySpec], act_dim: int, latent: Mapping[str, ArraySpec] | None = None
) -> dict[str, ArraySpec]:
    """Every key of a stored step: the observations, `reward`, the three flags, `action` [act_dim] and,
    given the model's `latent` parts (e.g. `deter`, `stoch`), `context/<part>`."""
    if act_dim < 1:
        raise ValueError(f"act_dim must be >= 1, got {act_dim}")
    reserved = {"reward", "action", *FLAG_KEYS} & set(obs_space)
    clash = [key for key in obs_space if key.startswith(CONTEXT)]
    if reserved or clash:
        raise ValueError(
            f"observation keys {sorted(reserved) + clash} clash with the step keys of the replay"
        )
    spec = {key: ArraySpec(tuple(s.shape), np.dtype(s.dtype)) for key, s in obs_space.items()}
    spec["reward"] = ArraySpec((), np.dtype(np.float32))
    for key in FLAG_KEYS:
        spec[key] = ArraySpec((), np.dtype(bool))
    spec["action"] = ArraySpec((act_dim,), np.dtype(np.float32))
    for part, s in (latent or {}).items():
        spec[CONTEXT + part] = ArraySpec(tuple(s.shape), np.dtype(s.dtype))
    return spec


def context_keys(spec: Mapping[str, ArraySpec]) -> list[str]:
    """The keys of `spec` holding the stored latent."""
    return [key for key in spec if key.startswith(CONTEXT)]


def check_array(key: str, value: np.ndarray, spec: ArraySpec, lead: tuple[int, ...]) -> np.ndarray:
    """`value` as an array of `spec`'s dtype and shape `lead + spec.shape`, or a ValueError naming `key`.

    Casts only within a kind (float64 -> float32, bool -> bool); an unsafe cast such as float -> uint8
    images is an error rather than a silent wrap-around.
    """
    value = np.asarray(value)
    expected = tuple(lead) + tuple(spec.shape)
    if value.shape != expected:
        raise ValueError(f"replay key '{key}': expected shape {expected}, got {value.shape}")
    if not np.can_cast(value.dtype, spec.dtype, casting="same_kind"):
        raise ValueError(f"replay key '{key}': cannot store dtype {value.dtype} as {np.dtype(spec.dtype)}")
    return value


def raw_bytes_per_step(spec: Mapping[str, ArraySpec]) -> int:
    """Bytes of one step's arrays at their own dtypes (uint8 images count one byte per value)."""
    return sum(int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize for s in spec.values())


def float_keys(spec: Mapping[str, ArraySpec]) -> list[str]:
    """The keys holding floats: the only ones that can hold NaN or inf (images and flags cannot)."""
    return [key for key, s in spec.items() if np.issubdtype(np.dtype(s.dtype), np.floating)]


def nonfinite_rows(values: Mapping[str, np.ndarray], keys: list[str]) -> dict[str, np.ndarray]:
    """Per key of `keys` holding a NaN or inf: which rows [N] do; empty when all are finite (the common
    case, one `np.isfinite` per key)."""
    bad = {}
    for key in keys:
        finite = np.isfinite(values[key])
        if not finite.all():
            bad[key] = ~finite.reshape(len(finite), -1).all(axis=1)
    return bad
