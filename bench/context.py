"""Where a replayed window starts, and what it costs the model: the KL per step of windows of a trained
run's replay started three ways (`replay.context`):

- `stored`: from the latent stored at the step before the window, with the action taken there (v2);
- `carry`: from the last posterior of another, unrelated window, with a zero action (a cross-batch carry);
- `zero`: from the initial state.

    python bench/context.py --logdir runs/cartpole [--batches 20] [--length 32]

Prints the KL at the window's first step, its mean over the first 8 and over all steps, and the distance of
the deterministic state from the stored start's at steps 0, 4, 8 and 16. The stored latents are those the
run held at its last checkpoint (refreshed by its updates; `load_dataset` reads them).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import evaluate  # noqa: E402
from replay import load_dataset, step_spec  # noqa: E402
from world_model.rssm import RSSMState, latent_spec  # noqa: E402

STARTS = ("stored", "carry", "zero")


def windows(agent, config, logdir: Path, batches: int, length: int) -> list[dict[str, torch.Tensor]]:
    """Batches of 1 + `length` steps with their stored latents, from the run's replay chunks."""
    spec = step_spec(agent.obs_space, agent.act_space.dim, latent_spec(config.world_model))
    replay_config = dataclasses.replace(config.replay, batch_size=16, batch_length=length, context=1)
    replay = load_dataset(logdir / "replay", spec, replay_config, seed=0)
    return [{k: torch.as_tensor(v) for k, v in replay.sample().items()} for _ in range(batches)]


@torch.no_grad()
def observe(agent, data: dict[str, torch.Tensor], start: str, carry: RSSMState | None):
    """KL per step [B, T] and posterior states [B, T] of a window's trained steps from one kind of start."""
    wm = agent.wm
    B = data["is_first"].shape[0]
    rest = {k: v[:, 1:] for k, v in data.items()}
    prev = data["action"][:, 0].float() if start == "stored" else None
    if start == "stored":
        state = RSSMState(data["context/deter"][:, 0], data["context/stoch"][:, 0])
    else:
        state = carry if start == "carry" else wm.initial(B)
    is_first = rest["is_first"].bool()
    embed = wm.encoder(wm._obs(rest))
    out = wm.rssm.observe(embed, wm.prev_actions(rest["action"].float(), is_first, prev), is_first, state)
    return wm.rssm.dist(out.post_stats).kl(wm.rssm.dist(out.prior_stats)), out.states


def report(kl: dict[str, torch.Tensor], deter: dict[str, torch.Tensor], step: int) -> None:
    """One row per start: KL at step 0, over steps 0-7 and all; |h - h_stored| at steps 0, 4, 8, 16."""
    T = kl["stored"].shape[1]
    print(f"checkpoint step {step}: {kl['stored'].shape[0]} windows of {T} trained steps; KL in nats")
    print("start   kl[0]  kl[0:8]  kl[all]  " + "  ".join(f"|dh|[{t}]" for t in (0, 4, 8, 16) if t < T))
    for start in STARTS:
        k = kl[start].mean(0)
        dh = (deter[start] - deter["stored"]).norm(dim=-1).mean(0)
        cols = "  ".join(f"{dh[t]:8.3f}" for t in (0, 4, 8, 16) if t < T)
        print(f"{start:6s} {k[0]:6.3f}  {k[:8].mean():7.3f}  {k.mean():7.3f}  {cols}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--length", type=int, default=32, help="trained steps per window")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = evaluate.load_run(str(args.logdir), None, {"run": {"device": "cpu"}})
    env = evaluate.build_env(loaded.config, seed=0, num_envs=1)
    agent = evaluate.build_agent(loaded.config, env, loaded)
    env.close()
    kl, deter = {s: [] for s in STARTS}, {s: [] for s in STARTS}
    data = windows(agent, loaded.config, args.logdir, args.batches + 1, args.length)
    for before, batch in zip(data[:-1], data[1:], strict=True):
        _, states = observe(agent, before, "stored", None)
        carry = RSSMState(states.deter[:, -1], states.stoch[:, -1])  # what a cross-batch carry hands on
        for start in STARTS:
            k, states = observe(agent, batch, start, carry)
            kl[start].append(k)
            deter[start].append(states.deter)
    report(
        {s: torch.cat(v) for s, v in kl.items()},
        {s: torch.cat(v) for s, v in deter.items()},
        int(loaded.state["step"]),
    )


if __name__ == "__main__":
    main()
