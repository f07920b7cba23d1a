"""The stand-in accelerator: the agent on the "meta" device, where every transfer is counted.

Meta tensors carry shapes only, and mixing them with CPU tensors raises the device errors CUDA raises, so
a tensor made on the wrong device fails here as it would on a GPU. `HostTransfers` counts every value the
host reads from the device and every host value written to it (each one a synchronization on CUDA); with
`fake_reads` a read returns zeros, so acting, logging and checkpoints run on. What cannot run on meta:
autocast (no meta backend: these runs are float32) and numerical results (meta holds no data).
"""

import dataclasses

import numpy as np
import pytest
import torch
from test_agent import CONTINUOUS, DISCRETE, OBS, batch
from test_train import config_for, on_meta, rows

import train
from agent import make_agent
from configs.loader import load_config
from run.stop import StopFlag
from util.transfers import HostTransfers, to_floats

pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")


def meta_agent(presets=("debug",), overrides=None, act_space=DISCRETE):
    config = load_config(list(presets), {"run": {"precision": "float32"}, **(overrides or {})})
    torch.manual_seed(0)
    return make_agent(
        dataclasses.replace(config, run=dataclasses.replace(config.run, device="meta")), OBS, act_space
    )


def on_device(data: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A replay batch as `Replay.sample_torch` hands it over on an accelerator: already on the device."""
    return {
        k: torch.empty(v.shape, dtype=torch.from_numpy(np.asarray(v)).dtype, device="meta")
        for k, v in data.items()
    }


def test_the_counter_sees_every_kind_of_transfer_and_nothing_else():
    x = torch.zeros(3, device="meta")
    with HostTransfers("meta", fake_reads=True) as log:
        y = x * 2 + torch.ones_like(x)  # device work only
        assert y.tolist() == [0.0, 0.0, 0.0]  # fake read: zeros
        assert y.sum().item() == 0.0
        assert not bool(y.any())
        assert torch.equal(y.cpu(), torch.zeros(3))
        torch.tensor([1.0, 2.0], device="meta")
        torch.as_tensor(0.5, device="meta")
        y.new_tensor([1.0])
        torch.zeros(2).to("meta")
        torch.full_like(y, 0.5)  # filled on the device: no transfer
        torch.as_tensor(y)  # already there: no transfer
    assert [t.kind for t in log.transfers] == ["read"] * 4 + ["write"] * 4, str(log)
    assert all(
        t.where.endswith("in test_the_counter_sees_every_kind_of_transfer_and_nothing_else")
        for t in log.transfers
    )
    # Without fake reads a read of meta fails, as it has no data.
    with pytest.raises(RuntimeError, match="meta"), HostTransfers("meta"):
        x.sum().item()


GAUSSIAN = {"world_model": {"latent": "gaussian"}, "replay": {"context": 0}}


@pytest.mark.parametrize(
    "overrides, act_space",
    [({}, DISCRETE), ({}, CONTINUOUS), (GAUSSIAN, DISCRETE)],
    ids=["v2 discrete", "v2 continuous", "v2 gaussian latents"],
)
def test_an_update_neither_reads_nor_writes_host_values(overrides, act_space):
    """v2: the update (loss, backward, the optimizer step or its skip, the return normalizer, the slow
    critic and the metrics) runs on the device without the host waiting for it once."""
    agent = meta_agent(overrides=overrides, act_space=act_space)
    data = on_device(batch(act_space))
    with HostTransfers("meta") as log:
        out = agent.train(data)
    assert (log.reads, log.writes) == (0, 0), str(log)
    assert {v.device.type for v in out.metrics.values() if isinstance(v, torch.Tensor)} == {"meta"}
    assert {v.device.type for v in out.replay.values()} <= {"meta"}


def test_a_v1_update_reads_only_whether_to_apply_it():
    """torch's Adam counts its steps on the host, so v1 reads the finite flag: one read per update."""
    agent = meta_agent(("v1", "debug"), {"replay": {"context": 0}})
    data = on_device(batch())
    with HostTransfers("meta", fake_reads=True) as log:
        out = agent.train(data)
        agent.train(data, out.carry)
    assert (log.reads, log.writes) == (2, 0), str(log)
    assert all(t.where.split(" in ")[-1] == "step" and "optim.py" in t.where for t in log.transfers)


def test_acting_reads_the_action_and_the_latent_it_stores():
    agent = meta_agent()
    obs = {k: v[:, 0] for k, v in batch().items() if k in ("vector", "image", "is_first")}
    with HostTransfers("meta", fake_reads=True) as log:
        action, state = agent.policy(obs, None)
        agent.latent_arrays(state)
    assert action.shape == (3, 2) and {x.device.type for x in state.latent} == {"meta"}
    # The three observation keys go to the device; the action and the two latent parts come back.
    assert (log.reads, log.writes) == (3, 3), str(log)


def test_a_run_trains_saves_resumes_and_evaluates_on_the_stand_in(tmp_path):
    steps = dict(steps=96, train_ratio=2, eval_every=96, eval_episodes=1, save_every_steps=96)
    config = config_for(tmp_path, **steps)
    with HostTransfers("meta", fake_reads=True) as log:
        first = train.build(config, train.Factories(make_agent=on_meta))
        first.run(StopFlag())
    assert first.counters.updates > 0 and {p.device.type for p in first.agent.wm.parameters()} == {"meta"}
    per_update = [t for t in log.transfers if "train_updates" in t.where or "_numpy" in t.where]
    # Read back per update: the metrics (at once), and the refreshed latents for the replay (stepid, deter,
    # stoch).
    assert len(per_update) == 4 * first.counters.updates, str(log)
    assert any(key.startswith("eval/") for row in rows(tmp_path) for key in row)

    longer = dataclasses.replace(config, run=dataclasses.replace(config.run, steps=128))
    with HostTransfers("meta", fake_reads=True):
        resumed = train.build(longer, train.Factories(make_agent=on_meta))
        assert resumed.counters.step == 96 and resumed.counters.updates == first.counters.updates
        resumed.run(StopFlag())
    assert resumed.counters.step == 128 and resumed.counters.updates > first.counters.updates
    assert resumed.agent.optim.optimizers["all"].param_groups[0]["count"].device.type == "meta"


def test_metrics_are_read_in_one_go_as_python_floats():
    metrics = {"a": torch.tensor(1.5), "lr": torch.tensor(4e-5, dtype=torch.float64), "n": 2}
    with HostTransfers() as log:
        floats = to_floats(metrics)
    assert floats == {"a": 1.5, "lr": 4e-5, "n": 2.0} and all(isinstance(v, float) for v in floats.values())
    assert log.transfers == []  # CPU tensors: nothing crosses a device
