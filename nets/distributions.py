"""Distributions with one API: `mode()`, `sample()`, `log_prob(x)`, `entropy()`, `kl(other)`, `mean()`.

Heads return these objects; losses call `log_prob` and never touch raw logits. Batch dims are
arbitrary; the event dims are stated per class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nets.functional import symexp, symlog

LOG_2PI = math.log(2.0 * math.pi)
TWOHOT_SPACES = ("raw", "symlog")
# Range of the two-hot bins in symlog space (reference: linspace(-20, 20)).
BINS_LOW, BINS_HIGH = -20.0, 20.0


class lazy:  # noqa: N801 (a decorator, named like functools.cached_property)
    """`functools.cached_property` without its lock: computed on first read, then an instance attribute.
    (Python 3.11's cached_property takes an RLock, which torch.compile cannot trace.)"""

    def __init__(self, fn):
        self.fn, self.name = fn, fn.__name__

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


def _sum_last(x: torch.Tensor, dims: int) -> torch.Tensor:
    return x.sum(tuple(range(-dims, 0))) if dims else x


def _invert_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The class k of each row with cdf[k-1] <= u * total < cdf[k]: cdf [..., K] (cumulative, possibly
    unnormalized), u [...] uniform in [0, 1) -> [...] int64. u is scaled by the row's own total, so that
    float rounding of the sum cannot leave a gap above the last class."""
    index = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1), right=True).squeeze(-1)
    return index.clamp_(max=cdf.shape[-1] - 1)


class OneHotCategorical:
    """Categorical over the last dim with a uniform mixture (`unimix`) and straight-through one-hots.

    logits: [..., K]. `probs = (1 - unimix) * softmax(logits) + unimix / K`; `.probs` and `.logits`
    (log(probs)) are computed on first use: sampling an index needs neither.
    Samples and modes are one-hot [..., K] with gradient `probs - sg(probs)` (straight-through).
    """

    def __init__(self, logits: torch.Tensor, unimix: float = 0.0):
        self.raw, self.unimix, self.classes = logits, unimix, logits.shape[-1]

    @lazy
    def probs(self) -> torch.Tensor:
        if self.unimix > 0.0:
            return (1.0 - self.unimix) * F.softmax(self.raw, -1) + self.unimix / self.classes
        return self.logits.exp()

    @lazy
    def logits(self) -> torch.Tensor:
        if self.unimix > 0.0:
            return torch.log(self.probs)
        return F.log_softmax(self.raw, -1)

    def _straight_through(self, index: torch.Tensor) -> torch.Tensor:
        """index [...] -> one-hot [..., K]; probs - sg(probs) is exactly 0 in value, so the sum is
        exactly one-hot."""
        onehot = torch.zeros_like(self.probs).scatter_(-1, index.unsqueeze(-1), 1.0)
        return onehot + (self.probs - self.probs.detach())

    @torch.no_grad()
    def sample_index(self) -> torch.Tensor:
        """The class of a sample [...] (int64), drawn with one uniform u per row, without forming `probs`.

        The mixture is sampled as a mixture: u < unimix picks the uniform part, and u / unimix its class;
        otherwise (u - unimix) / (1 - unimix), again uniform, inverts the CDF of softmax(logits). So
        P(k) = unimix / K + (1 - unimix) softmax_k, the law of `probs`, which is never formed; one
        uniform per row costs a fraction of the K of the Gumbel-max trick.
        """
        logits = self.raw.detach().float()  # a bfloat16 CDF or uniform would coarsen the law
        u = torch.rand(logits.shape[:-1], dtype=logits.dtype, device=logits.device)
        v = u if self.unimix == 0.0 else ((u - self.unimix) / (1.0 - self.unimix)).clamp_(min=0.0)
        index = _invert_cdf(F.softmax(logits, -1).cumsum_(-1), v)
        if self.unimix > 0.0:
            uniform = (u * (self.classes / self.unimix)).long().clamp_(max=self.classes - 1)
            index = torch.where(u < self.unimix, uniform, index)
        return index

    def sample(self) -> torch.Tensor:
        """One-hot sample [..., K] with the straight-through gradient, which needs `probs`: with them at
        hand, their own CDF is inverted (one uniform per row; fewer operations than `sample_index`, which
        matters on the small batches of a posterior rollout)."""
        probs = self.probs.detach()
        u = torch.rand(probs.shape[:-1], dtype=probs.dtype, device=probs.device)
        return self._straight_through(_invert_cdf(probs.cumsum(-1), u))

    def mode(self) -> torch.Tensor:
        return self._straight_through(self.probs.argmax(-1))

    def mean(self) -> torch.Tensor:
        return self.probs

    def log_prob(self, onehot: torch.Tensor) -> torch.Tensor:
        """onehot: [..., K] -> [...]."""
        return (self.logits * onehot).sum(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.probs * self.logits).sum(-1)

    def kl(self, other: OneHotCategorical) -> torch.Tensor:
        """KL(self || other) in closed form, [...]."""
        return (self.probs * (self.logits - other.logits)).sum(-1)


class DiagNormal:
    """Diagonal Normal; `log_prob`, `entropy` and `kl` sum over the last `event_dims` dims."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor | float, event_dims: int = 1):
        self.loc = mean
        self.std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device).expand_as(mean)
        self.event_dims = event_dims

    def mean(self) -> torch.Tensor:
        return self.loc

    def mode(self) -> torch.Tensor:
        return self.loc

    def sample(self) -> torch.Tensor:
        """Reparameterized sample mean + std * eps."""
        return self.loc + self.std * torch.randn_like(self.loc)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.loc) / self.std
        return _sum_last(-0.5 * z.square() - torch.log(self.std) - 0.5 * LOG_2PI, self.event_dims)

    def entropy(self) -> torch.Tensor:
        return _sum_last(torch.log(self.std) + 0.5 * (LOG_2PI + 1.0), self.event_dims)

    def kl(self, other: DiagNormal) -> torch.Tensor:
        """KL(self || other) in closed form."""
        var_ratio = (self.std / other.std).square()
        mahal = ((self.loc - other.loc) / other.std).square()
        return _sum_last(0.5 * (var_ratio + mahal - 1.0 - torch.log(var_ratio)), self.event_dims)


class BoundedNormal(DiagNormal):
    """The continuous actor (v2): mean = tanh(x_mean), std = (max - min) * sigmoid(x_std + 2) + min.

    x_mean, x_std: [..., A]; log_prob and entropy sum over A. Samples are not clipped.
    """

    def __init__(self, x_mean: torch.Tensor, x_std: torch.Tensor, min_std: float = 0.1, max_std: float = 1.0):
        std = (max_std - min_std) * torch.sigmoid(x_std + 2.0) + min_std
        super().__init__(torch.tanh(x_mean), std, event_dims=1)


def symexp_bins(n: int) -> torch.Tensor:
    """v2 two-hot bins: symexp(linspace(-20, 20, n)), exactly antisymmetric (0 is a bin when n is odd)."""
    return symexp(symlog_bins(n))


def symlog_bins(n: int) -> torch.Tensor:
    """v1 two-hot bins: linspace(-20, 20, n) in symlog space, exactly antisymmetric."""
    bins = torch.linspace(BINS_LOW, BINS_HIGH, n, dtype=torch.float64)
    return ((bins - bins.flip(0)) / 2).float()


def two_hot_parts(x: torch.Tensor, bins: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The two bins of each x: [...] and their weights: (below, above) [...] int64, (w_below, w_above)
    [...], the linear interpolation between the two nearest bins; outside the bin range all weight goes
    to the nearest end bin."""
    n = bins.shape[0]
    x = x.to(bins.dtype)
    below = (torch.searchsorted(bins, x.contiguous(), right=True) - 1).clamp(0, n - 1)
    above = (below + 1).clamp(0, n - 1)
    lo, hi = bins[below], bins[above]
    span = hi - lo
    equal = span == 0
    w_above = torch.where(equal, torch.zeros_like(x), ((x - lo) / torch.where(equal, 1.0, span)).clamp(0, 1))
    return below, above, 1.0 - w_above, w_above


def two_hot(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Encode x: [...] as weights [..., N] on the two nearest bins (linear interpolation).

    Weights sum to 1 and `(weights * bins).sum(-1) == x` inside the bin range; outside it all weight
    goes to the nearest end bin.
    """
    below, above, w_below, w_above = two_hot_parts(x, bins)
    out = torch.zeros(*x.shape, bins.shape[0], dtype=bins.dtype, device=bins.device)
    out.scatter_add_(-1, below.unsqueeze(-1), w_below.unsqueeze(-1))
    out.scatter_add_(-1, above.unsqueeze(-1), w_above.unsqueeze(-1))
    return out


class TwoHot:
    """Categorical over bins, read as a real value: the reward and value heads.

    logits: [..., N]; bins: [N]. space "raw" (v2): bins are symexp-spaced values and targets are
    encoded as they are; "symlog" (v1): bins are linear in symlog space, targets are symlog(x) and the
    prediction is symexp(sum p * b). `log_prob(x)` (x: [...]) is the two-hot cross-entropy, i.e. the
    log-likelihood of the target's bin assignment (a proper categorical log-probability when x is a bin).
    """

    def __init__(self, logits: torch.Tensor, bins: torch.Tensor, space: str = "raw"):
        if space not in TWOHOT_SPACES:
            raise ValueError(f"TwoHot space must be one of {TWOHOT_SPACES}; got {space!r}")
        if logits.shape[-1] != bins.shape[0]:
            raise ValueError(f"TwoHot: {logits.shape[-1]} logits for {bins.shape[0]} bins")
        self.raw, self.space = logits, space
        self.bins = bins.to(logits.device, logits.dtype)

    @lazy
    def logits(self) -> torch.Tensor:
        """Log-probabilities of the bins [..., N] (computed on first use, as are `probs`: the mean of a
        head that is only read needs no logarithms)."""
        return F.log_softmax(self.raw, -1)

    @lazy
    def probs(self) -> torch.Tensor:
        return F.softmax(self.raw, -1)

    def mean(self) -> torch.Tensor:
        # Sum the two halves mirrored so that symmetric bins with uniform probs give exactly 0
        # (as the reference does; a left-to-right sum accumulates rounding error).
        n = self.bins.shape[0]
        m = n // 2
        weighted = self.probs * self.bins
        wavg = (weighted[..., :m].flip(-1) + weighted[..., n - m :]).sum(-1)
        if n % 2:
            wavg = wavg + weighted[..., m]
        return symexp(wavg) if self.space == "symlog" else wavg

    def mode(self) -> torch.Tensor:
        return self.mean()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        target = symlog(x) if self.space == "symlog" else x
        # The two-hot weights times the logits, read at the two bins that carry weight: the dense
        # product's terms elsewhere are exact zeros.
        below, above, w_below, w_above = two_hot_parts(target.detach(), self.bins)
        pick = lambda index: self.logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        return w_below * pick(below) + w_above * pick(above)

    def entropy(self) -> torch.Tensor:
        return -(self.probs * self.logits).sum(-1)


class MSE:
    """Squared-error "distribution" of the reference decoders: log_prob(x) = -sum (pred - squash(x))^2.

    The sum runs over the last `event_dims` dims. This is the reference's training loss, a Gaussian
    log-density with std 1/sqrt(2) up to a constant; `world_model/elbo.py` turns the squared error into a
    normalized log-density with a chosen std.
    """

    squash = staticmethod(lambda x: x)
    unsquash = staticmethod(lambda x: x)

    def __init__(self, pred: torch.Tensor, event_dims: int = 1):
        self.pred, self.event_dims = pred, event_dims

    def mean(self) -> torch.Tensor:
        return self.unsquash(self.pred)

    def mode(self) -> torch.Tensor:
        return self.mean()

    def sq_error(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of squared errors in the output space, [...]."""
        return _sum_last((self.pred - self.squash(x).detach()).square(), self.event_dims)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return -self.sq_error(x)


class SymlogMSE(MSE):
    """MSE in symlog space (v2 vector decoder): mode() = symexp(pred), log_prob(x) = -sum(pred - symlog(x))^2.

    The density is over symlog(x), not x.
    """

    squash = staticmethod(symlog)
    unsquash = staticmethod(symexp)


class Bernoulli:
    """Bernoulli with logits [...]; `log_prob` accepts soft targets in [0, 1] (cross-entropy)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
        self.probs = torch.sigmoid(logits)

    def mean(self) -> torch.Tensor:
        return self.probs

    def mode(self) -> torch.Tensor:
        return (self.logits > 0).to(self.logits.dtype)

    def sample(self) -> torch.Tensor:
        return torch.bernoulli(self.probs.detach())

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.logits.dtype)
        return x * F.logsigmoid(self.logits) + (1.0 - x) * F.logsigmoid(-self.logits)

    def entropy(self) -> torch.Tensor:
        return -self.log_prob(self.probs)
