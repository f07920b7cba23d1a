"""The official DreamerV3 (danijar/dreamerv3) on a Gymnasium task, on one CPU thread: the official side of
`bench/reference.py`. Runs with the official implementation's own Python (its virtualenv) and imports its
code from `--official-src`; it imports nothing from this project.

    python bench/official_launch.py train --official-src /work/official -- \\
        --task gymnasium_CartPole-v1 --configs size1m --logdir /tmp/cp --run.steps 3000 ...
    python bench/official_launch.py time --official-src /work/official --repeats 5 -- \\
        --task gymnasium_CartPole-v1 --configs size1m --batch_size 16 --batch_length 64 ...
    python bench/official_launch.py config --official-src /work/official -- --configs size1m ...

Arguments after `--` are the official `main.py` flags. What this script adds to the official code:

- a suite `gymnasium_<EnvId>` (`GymnasiumEnv`, registered by wrapping `main.make_env`): the official
  `from_gym.py` expects the old gym API (4-tuple step, reset without info); `ImageShapes-v0` is the image
  case of `time` (64x64x3 uint8 observations, 2 discrete actions);
- single-threaded XLA: `embodied/jax/internal.py: setup()` overwrites `XLA_FLAGS`, so the flags are set
  again after it runs (the caller pins the process to one core with `taskset`);
- `<logdir>/episodes.jsonl`: one row per finished episode, `{"step", "score", "time"}`, with `time` the
  wall-clock seconds since the launch (continued from the file's last row when a killed run resumes from
  its checkpoint). The official `scores.jsonl` has the same steps and scores but no time.

`train` runs the official `main.main` (a run folder with a checkpoint in `ckpt/` resumes from it);
`time` builds the agent from the config (which compiles its train step), then times `agent.train` on
random batches of the task's shapes, blocking on the new parameters before stopping the clock, and
prints one JSON line; `config` prints the resolved official config as one flat JSON object.
"""

import argparse
import functools
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

SINGLE_THREAD_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "OMP_NUM_THREADS": "1",
}
os.environ.update(SINGLE_THREAD_ENV)  # before jax is imported

SUITE = "gymnasium"  # official task names `gymnasium_<EnvId>` run a Gymnasium env
EPISODES_FILE = "episodes.jsonl"
IMAGE_ENV = "ImageShapes-v0"  # registered by this script: `gymnasium_ImageShapes-v0` times image updates
LAUNCH_TIME = time.monotonic()


def import_official(src: str):
    """Import the official `dreamerv3.main` from the source folder `src` and patch it (see the module
    docstring); returns the module."""
    sys.path.insert(0, str(Path(src).resolve()))
    import embodied.jax.internal as internal
    from dreamerv3 import main as official_main

    setup = internal.setup

    def single_thread_setup(*args, **kwargs):
        setup(*args, **kwargs)
        os.environ.update(SINGLE_THREAD_ENV)

    internal.setup = single_thread_setup
    make_env, make_logger = official_main.make_env, official_main.make_logger
    official_main.make_env = lambda config, index, **kw: gymnasium_env(make_env, config, index, **kw)
    official_main.make_logger = lambda config: timed_logger(make_logger(config), config.logdir)
    return official_main


@functools.cache
def register_image_env() -> None:
    """Register `IMAGE_ENV`: the shapes `bench/update.py` times on image observations (64x64x3 uint8,
    2 discrete actions) as a Gymnasium env, for `time` (which trains on random batches of its spaces)."""
    import gymnasium
    import numpy as np

    class ImageShapes(gymnasium.Env):
        observation_space = gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        action_space = gymnasium.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(self.observation_space.shape, np.uint8), {}

        def step(self, action):
            return np.zeros(self.observation_space.shape, np.uint8), 0.0, False, False, {}

    gymnasium.register(IMAGE_ENV, entry_point=ImageShapes)


@functools.cache
def make_gymnasium_env_class():
    """`GymnasiumEnv`, defined once the official `embodied` package is importable."""
    import elements
    import embodied
    import gymnasium
    import numpy as np

    class GymnasiumEnv(embodied.Env):
        """A Gymnasium env in the `embodied.Env` interface: observation `image` (a uint8 Box of rank 3)
        or `vector` (any other Box), action `action` (Discrete or Box), and the reward and step flags in
        every observation."""

        def __init__(self, env_id: str, seed: int):
            self._env = gymnasium.make(env_id)
            self._seed = seed  # used for the first reset only; later resets continue its stream
            self._done = True
            space = self._env.observation_space
            self._key = "image" if len(space.shape) == 3 and space.dtype == np.uint8 else "vector"

        @property
        def obs_space(self):
            space = self._env.observation_space
            if self._key == "image":
                obs = elements.Space(np.uint8, space.shape, 0, 255)
            else:
                obs = elements.Space(np.float32, space.shape, space.low, space.high)
            return {
                self._key: obs,
                "reward": elements.Space(np.float32),
                "is_first": elements.Space(bool),
                "is_last": elements.Space(bool),
                "is_terminal": elements.Space(bool),
            }

        @property
        def act_space(self):
            space = self._env.action_space
            if isinstance(space, gymnasium.spaces.Discrete):
                action = elements.Space(np.int32, (), 0, int(space.n))
            elif isinstance(space, gymnasium.spaces.Box):
                action = elements.Space(np.float32, space.shape, space.low, space.high)
            else:
                raise NotImplementedError(f"action space {space}")
            return {"action": action, "reset": elements.Space(bool)}

        def step(self, action):
            if action["reset"] or self._done:
                obs, _ = self._env.reset(seed=self._seed)
                self._seed, self._done = None, False
                return self._obs(obs, 0.0, is_first=True)
            act = action["action"]
            act = int(act) if np.ndim(act) == 0 else np.asarray(act, np.float32)
            obs, reward, terminated, truncated, _ = self._env.step(act)
            self._done = terminated or truncated
            return self._obs(obs, reward, is_last=self._done, is_terminal=terminated)

        def _obs(self, obs, reward, is_first=False, is_last=False, is_terminal=False):
            return {
                self._key: np.asarray(obs, np.uint8 if self._key == "image" else np.float32),
                "reward": np.float32(reward),
                "is_first": is_first,
                "is_last": bool(is_last),
                "is_terminal": bool(is_terminal),
            }

        def close(self):
            self._env.close()

    return GymnasiumEnv


def gymnasium_env(make_env, config, index, **overrides):
    """The official `make_env` with the `gymnasium` suite added: `gymnasium_<EnvId>` builds a
    `GymnasiumEnv` seeded from the run's seed and the env index, wrapped as the official envs are."""
    from dreamerv3 import main as official_main

    suite, task = config.task.split("_", 1)
    if suite != SUITE:
        return make_env(config, index, **overrides)
    if task == IMAGE_ENV:
        register_image_env()
    env = make_gymnasium_env_class()(task, seed=int(config.seed) * 1000 + index)
    return official_main.wrap_env(env, config)


def read_rows(path: Path) -> list[dict]:
    """The rows of a JSONL file (none when it is missing); a line cut short by a kill is skipped."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def timed_logger(logger, logdir):
    """Wrap `logger.add` so that every finished episode is also appended to `<logdir>/episodes.jsonl`
    with its step and the wall-clock seconds since the launch, at the moment it ends."""
    path = Path(logdir) / EPISODES_FILE
    offset = max((row["time"] for row in read_rows(path)), default=0.0)
    add = logger.add

    def add_with_time(mapping, prefix=None):
        if prefix == "episode" and "score" in mapping:
            row = {"step": int(logger.step), "score": float(mapping["score"])}
            row["time"] = offset + time.monotonic() - LAUNCH_TIME
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        return add(mapping, prefix)

    logger.add = add_with_time
    return logger


def load_config(official_main, flags: list[str]):
    """The official config resolved from its `configs.yaml` and `flags`, as `main.main` resolves it."""
    import elements
    import ruamel.yaml as yaml

    configs = yaml.YAML(typ="safe").load(elements.Path(official_main.folder / "configs.yaml").read())
    parsed, other = elements.Flags(configs=["defaults"]).parse_known(flags)
    config = elements.Config(configs["defaults"])
    for name in parsed.configs:
        config = config.update(configs[name])
    return elements.Flags(config).parse(other)


def random_batch(agent, obs_space, act_space, shape, rng):
    """A batch of `shape` (B, T + context) for `agent.train`: random observations, rewards and actions,
    zeros for the step flags and the agent's replay entries."""
    import numpy as np

    data = {k: np.zeros(shape + v.shape, v.dtype) for k, v in agent.spaces.items()}
    for key, space in {**obs_space, **act_space}.items():
        if key in ("reset", "is_first", "is_last", "is_terminal") or key not in data:
            continue
        if space.discrete:
            data[key] = rng.integers(space.low, space.high, shape + space.shape).astype(space.dtype)
        else:
            data[key] = rng.normal(size=shape + space.shape).astype(space.dtype)
    return data


def time_updates(official_main, flags: list[str], repeats: int, warmup: int) -> dict:
    """Seconds per official train step: build the agent (it compiles the train step), then time
    `agent.train` on `warmup + repeats` random batches, blocking on the updated parameters."""
    import jax
    import numpy as np

    config = load_config(official_main, flags)
    start = time.perf_counter()
    agent = official_main.make_agent(config)
    build_s = time.perf_counter() - start
    env = official_main.make_env(config, 0)
    B, T, C = config.batch_size, config.batch_length, config.replay_context
    rng = np.random.default_rng(config.seed)
    shape = (B, T + C)  # the replay's sequences: batch_length trained steps after the context
    batches = [random_batch(agent, env.obs_space, env.act_space, shape, rng) for _ in range(warmup + repeats)]
    env.close()
    stream = iter(agent.stream(itertools.cycle(batches)))  # its prefetch reads one batch ahead
    carry = agent.init_train(B)
    seconds = []
    for _ in range(warmup + repeats):
        batch = next(stream)
        start = time.perf_counter()
        carry, _, _ = agent.train(carry, batch)
        jax.block_until_ready((agent.params, carry))
        seconds.append(time.perf_counter() - start)
    timed = seconds[warmup:]
    return {"median_s": statistics.median(timed), "seconds": timed, "build_s": build_s, "B": B, "T": T}


def main(argv: list[str] | None = None) -> None:
    """Run `train`, `time` or `config` with the official flags after `--`."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["train", "time", "config"])
    parser.add_argument("--official-src", required=True, help="folder holding dreamerv3/ and embodied/")
    parser.add_argument("--repeats", type=int, default=5, help="timed train steps (time)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed train steps first (time)")
    args = parser.parse_args(argv[:split])
    flags = argv[split + 1 :]
    official_main = import_official(args.official_src)
    if args.mode == "train":
        official_main.main(flags)
    elif args.mode == "time":
        print(json.dumps(time_updates(official_main, flags, args.repeats, args.warmup)), flush=True)
    else:
        print(json.dumps(dict(load_config(official_main, flags).flat), default=str), flush=True)


if __name__ == "__main__":
    main()
