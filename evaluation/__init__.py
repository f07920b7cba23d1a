"""Evaluation of a trained agent: policy rollouts and their return statistics (`policy`), the world model
against real sequences (`world_model`), their plots (`plots`) and the comparison of runs (`compare`).
`evaluate.py` is the entry point; the training loop's own evaluation episodes use `policy`."""
