"""`run.precision: auto`: the rule for each kind of hardware (facts passed in), the flags read from
/proc/cpuinfo, the line a run prints, and make_agent's resolution; bfloat16 numerics against float32."""

import math

import numpy as np
import pytest
import torch
from test_agent import batch, make

import agent.precision as precision
from agent import Agent, make_agent
from agent.precision import Choice, choose_precision, cpu_flags, resolve_precision
from configs.loader import load_config
from envs.spaces import ActionSpace, ArraySpec
from util.transfers import to_floats

AVX2 = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni"}
SPACE = {"vector": ArraySpec((3,), np.float32)}
ACT = ActionSpace("discrete", 2, (2,))


@pytest.mark.parametrize(
    "flags, expected",
    [
        (AVX512 | {"avx512_bf16", "amx_bf16", "amx_tile"}, "bfloat16"),
        (AVX2 | {"amx_bf16", "amx_tile"}, "bfloat16"),
        (AVX512 | {"avx512_bf16"}, "bfloat16"),
        (AVX512, "float32"),
        (AVX2, "float32"),
        (frozenset(), "float32"),
    ],
)
def test_a_cpu_computes_bfloat16_only_with_amx_or_avx512_bf16(flags, expected):
    assert choose_precision("cpu", flags, cuda_bf16=False).precision == expected
    # A CUDA fact says nothing about the CPU.
    assert choose_precision("cpu", flags, cuda_bf16=True).precision == expected


def test_a_cuda_device_computes_bfloat16_where_it_supports_it_whatever_the_cpu():
    assert choose_precision("cuda", AVX2, cuda_bf16=True).precision == "bfloat16"
    assert choose_precision("cuda", AVX512 | {"amx_bf16"}, cuda_bf16=False).precision == "float32"


def test_the_printed_line_names_the_choice_and_the_flags_behind_it():
    assert choose_precision("cpu", AVX2, cuda_bf16=False).line() == (
        "run.precision auto -> float32: this CPU has no native bfloat16 (no amx_bf16 / avx512_bf16 in "
        "/proc/cpuinfo)"
    )
    assert choose_precision("cpu", AVX512 | {"avx512_bf16"}, cuda_bf16=False).line() == (
        "run.precision auto -> bfloat16: this CPU computes bfloat16 natively (avx512_bf16 in /proc/cpuinfo)"
    )
    assert choose_precision("cuda", AVX2, cuda_bf16=True).line() == (
        "run.precision auto -> bfloat16: this CUDA device computes bfloat16 natively"
    )
    assert (
        choose_precision("cuda", AVX2, cuda_bf16=False)
        .line()
        .startswith("run.precision auto -> float32: this CUDA device has no native bfloat16")
    )


def test_cpu_flags_are_read_from_every_flags_line_of_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU with avx512_bf16 in its name\nflags\t\t: fpu avx2\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 amx_bf16\nbugs\t\t: spectre_v1\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "absent") == frozenset()


def test_explicit_precisions_are_kept_and_auto_follows_the_cpu_flags(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2)
    assert resolve_precision("auto", cpu) == "float32"
    assert resolve_precision("bfloat16", cpu) == "bfloat16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2 | {"amx_bf16"})
    assert resolve_precision("auto", cpu) == "bfloat16"
    assert resolve_precision("float32", cpu) == "float32"
    assert precision.auto_precision(cpu) == Choice(
        "bfloat16", "this CPU computes bfloat16 natively (amx_bf16 in /proc/cpuinfo)"
    )


def test_make_agent_resolves_auto_so_an_agent_never_sees_it(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2)
    config = load_config(["debug"], {"run": {"device": "cpu", "precision": "auto"}})
    agent = make_agent(config, SPACE, ACT)
    assert agent.precision == "float32"


def test_an_agent_built_directly_refuses_auto_and_names_make_agent():
    config = load_config(["debug"])
    with pytest.raises(ValueError, match="'auto' is resolved by make_agent"):
        Agent(config.world_model, config.actor_critic, config.optim, SPACE, ACT, torch.device("cpu"), "auto")


def test_one_bfloat16_update_agrees_with_float32_on_every_loss_term_and_the_elbo():
    """Under bf16 autocast the networks run in bf16 (unit roundoff 2^-8 = 0.4%); distributions, targets,
    KL, returns and the ELBO metrics stay float32. So each term of one update from the same weights, data
    and random draws agrees with float32 within a few roundoffs: 2% relative (the KL terms differ most,
    0.3% on this batch), or 1e-3 nats for a term near 0 (the policy loss), and is not itself a bf16
    number."""
    got = {}
    for name in ("float32", "bfloat16"):
        agent = make(overrides={"run": {"precision": name}})  # the same seed: the same weights
        torch.manual_seed(1)
        got[name] = to_floats(agent.train(batch()).metrics)
    keys = [k for k in got["float32"] if k.startswith(("loss/", "distortion")) or k in ("elbo", "rate")]
    assert {"loss/total", "loss/dyn", "loss/rew", "loss/repval", "elbo", "rate", "distortion/image"} <= set(
        keys
    )
    for key in keys:
        assert got["bfloat16"][key] == pytest.approx(got["float32"][key], rel=0.02, abs=1e-3), key
        # Reduced in float32: a term rounded to bf16 anywhere on its way keeps only 8 significant bits.
        assert got["bfloat16"][key] != float(torch.tensor(got["bfloat16"][key]).bfloat16()), key


@pytest.mark.slow
def test_200_bfloat16_updates_of_the_debug_preset_stay_finite():
    agent = make(overrides={"run": {"precision": "bfloat16"}})
    for i in range(200):
        metrics = to_floats(agent.train(batch(seed=i)).metrics)
        assert metrics["nonfinite"] == 0.0 and all(map(math.isfinite, metrics.values())), (i, metrics)
