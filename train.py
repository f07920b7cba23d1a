"""Train a world-model agent: `python train.py --configs debug cartpole --run.steps 300 --logdir runs/x`."""

from __future__ import annotations

from pathlib import Path

from configs.loader import main_config, save_config


def main(argv: list[str] | None = None) -> None:
    config = main_config(argv, prog="train.py")
    logdir = Path(config.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    save_config(config, logdir / "config.yaml")
    print(f"config written to {logdir / 'config.yaml'}")


if __name__ == "__main__":
    main()
