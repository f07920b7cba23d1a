"""Lambda-return against a naive loop; the percentile return normalizer (`RetNorm`) against numpy."""

import numpy as np
import pytest
import torch

from agent.returns import RetNorm, RetStats, lambda_return, percentile_ema


def naive_lambda_return(reward, cont, value, lam):
    """Textbook recursion over one sequence at a time, in float64 python."""
    N, T = reward.shape
    lam = np.broadcast_to(np.asarray(lam, np.float64), (N, T))
    out = np.zeros((N, T - 1))
    for n in range(N):
        ret = value[n, T - 1]
        for t in range(T - 2, -1, -1):
            ret = reward[n, t + 1] + cont[n, t + 1] * (
                (1 - lam[n, t + 1]) * value[n, t + 1] + lam[n, t + 1] * ret
            )
            out[n, t] = ret
    return out


def random_inputs(rng, N=5, T=9):
    reward = rng.normal(size=(N, T))
    cont = rng.uniform(0.5, 1.0, size=(N, T)) * 0.997
    # Terminations in the middle of sequences.
    cont[0, 4] = 0.0
    cont[2, 1] = 0.0
    cont[3, T - 1] = 0.0
    value = rng.normal(size=(N, T)) * 3
    return reward, cont, value


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_lambda_return_matches_naive_loop(lam):
    reward, cont, value = random_inputs(np.random.default_rng(0))
    got = lambda_return(*(torch.tensor(x) for x in (reward, cont, value)), lam)
    assert got.dtype == torch.float64 and got.shape == (5, 8)
    np.testing.assert_allclose(got.numpy(), naive_lambda_return(reward, cont, value, lam), rtol=1e-12)


def test_lambda_return_edge_cases_closed_form():
    reward, cont, value = random_inputs(np.random.default_rng(1))
    r, c, v = (torch.tensor(x) for x in (reward, cont, value))
    # lambda = 0: one-step TD targets.
    np.testing.assert_allclose(lambda_return(r, c, v, 0.0), r[:, 1:] + c[:, 1:] * v[:, 1:], rtol=1e-12)
    # lambda = 1: discounted sum of rewards plus the discounted final value.
    got = lambda_return(r, c, v, 1.0)
    T = reward.shape[1]
    for t in range(T - 1):
        disc, total = 1.0, 0.0
        for k in range(t + 1, T):
            total = total + disc * r[:, k]
            disc = disc * c[:, k]
        total = total + disc * v[:, T - 1]
        np.testing.assert_allclose(got[:, t], total, rtol=1e-10)


def test_lambda_return_termination_cuts_future():
    """After a termination (cont 0) nothing later can change the earlier returns."""
    reward, cont, value = random_inputs(np.random.default_rng(2))
    r, c, v = (torch.tensor(x) for x in (reward, cont, value))
    base = lambda_return(r, c, v, 0.95)
    r2, v2 = r.clone(), v.clone()
    r2[0, 5:] += 100.0
    v2[0, 4:] += 100.0
    changed = lambda_return(r2, c, v2, 0.95)
    # Row 0 terminates at step 4: R_0..R_3 only use r_1..r_4 and c_4 = 0.
    np.testing.assert_allclose(changed[0, :4], base[0, :4], rtol=1e-12)
    assert not torch.allclose(changed[0, 4:], base[0, 4:])


def test_lambda_return_per_step_lambda_matches_naive():
    reward, cont, value = random_inputs(np.random.default_rng(3))
    lam = 0.95 * (np.random.default_rng(4).uniform(size=reward.shape) > 0.2)
    got = lambda_return(*(torch.tensor(x) for x in (reward, cont, value, lam)))
    np.testing.assert_allclose(got.numpy(), naive_lambda_return(reward, cont, value, lam), rtol=1e-12)


def test_lambda_return_gradient_reaches_value_only_through_bootstrap():
    r = torch.randn(3, 6, dtype=torch.float64)
    c = torch.full((3, 6), 0.9, dtype=torch.float64)
    v = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    lambda_return(r, c, v, 0.95).sum().backward()
    assert torch.all(v.grad[:, 0] == 0) and torch.all(v.grad[:, 1:] != 0)


def test_lambda_return_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        lambda_return(torch.zeros(2, 5), torch.zeros(2, 4), torch.zeros(2, 5), 0.95)


def test_retnorm_matches_numpy_percentiles_and_ema():
    rng = np.random.default_rng(0)
    retnorm = RetNorm(decay=0.99, low=5.0, high=95.0, limit=1.0)
    lo = hi = 0.0
    for i in range(3):
        ret = rng.normal(loc=i, scale=40.0, size=(64, 15)).astype(np.float32)
        stats = retnorm.update(torch.tensor(ret))
        retnorm.commit(stats)
        lo = 0.99 * lo + 0.01 * np.percentile(ret, 5)
        hi = 0.99 * hi + 0.01 * np.percentile(ret, 95)
        np.testing.assert_allclose(retnorm.lo.item(), lo, rtol=1e-5)
        np.testing.assert_allclose(retnorm.hi.item(), hi, rtol=1e-5)
        np.testing.assert_allclose(stats.scale(1.0).item(), max(1.0, hi - lo), rtol=1e-5)
    assert retnorm.stats.scale(1.0).item() > 1.0


def test_retnorm_update_is_pure_until_committed():
    """`update` returns the new statistics and leaves the held ones alone; `percentile_ema` is the same
    function of the statistics it is given."""
    retnorm = RetNorm(decay=0.5)
    ret = torch.linspace(0, 1, 101)
    stats = retnorm.update(ret)
    assert retnorm.lo.item() == retnorm.hi.item() == 0.0
    zero = RetStats(torch.tensor(0.0), torch.tensor(0.0))
    again = percentile_ema(zero, ret, 0.5, torch.tensor([0.05, 0.95]))
    assert torch.equal(stats.lo, again.lo) and torch.equal(stats.hi, again.hi)
    # Non-finite returns give non-finite statistics, which the agent never commits (its update is
    # skipped as a whole, test_agent).
    assert not torch.isfinite(retnorm.update(torch.tensor([1.0, float("nan")])).hi)


def test_retnorm_floor_and_state_dict_round_trip():
    retnorm = RetNorm(decay=0.5, limit=1.0)
    retnorm.commit(retnorm.update(torch.linspace(0, 1, 101)))
    # hi - lo = 0.5 * (0.95 - 0.05) = 0.45 < 1, so the floor applies.
    assert retnorm.stats.scale(1.0).item() == 1.0
    np.testing.assert_allclose(retnorm.hi.item() - retnorm.lo.item(), 0.45, rtol=1e-6)
    other = RetNorm(decay=0.5)
    other.load_state_dict(retnorm.state_dict())
    assert other.lo.item() == retnorm.lo.item() and other.hi.item() == retnorm.hi.item()
    assert set(retnorm.state_dict()) == {"lo", "hi"}


def test_retnorm_rejects_bad_config():
    with pytest.raises(ValueError, match="retnorm_decay"):
        RetNorm(decay=1.0)
    with pytest.raises(ValueError, match="retnorm_low/high"):
        RetNorm(low=95.0, high=5.0)
