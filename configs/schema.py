"""The typed configuration tree, with every default value beside its meaning and its source.

Sources: DreamerV3, Hafner et al. 2023, arXiv 2301.04104, and its code; "v2" = the 2024 code behind
the published curves (the defaults here), "v1" = the 2023 code (the `v1` preset). Presets in
`configs/presets.yaml` and command-line overrides are merged over these defaults by `configs/loader.py`.
Configs are frozen: nothing writes into them at run time; derived values are computed by functions.

Every string option is a `Literal` type declared once here, with its choices as a tuple constant
(`LATENTS`, `GRUS`, ...) for code that needs them; numbers carry their simple bounds (`bounded`). The
loader rejects a value outside either at load time, naming the key, the value and what is allowed.

Shared sizes: an encoder, decoder or head whose `units` (encoder and decoder: also `depth`) is None
takes its group's value (`world_model.units`, `world_model.depth`, `actor_critic.units`); the loader
fills them in (`configs.loader.fill_shared`, per `SHARED`), so a loaded Config holds only numbers and a
size preset names each width once. A sub-config's own value, where one is given, wins.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any, Dict, List, Literal, get_args


def bounded(
    default: Any = MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field whose value the loader checks: >= ge, > gt, <= le, < lt (each where given)."""
    bounds = {name: v for name, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, metadata={"bounds": bounds})


# --- env ---
# Which observations the agent sees.
ObsKind = Literal["state", "pixels", "both"]
OBS_KINDS: tuple[str, ...] = get_args(ObsKind)


@dataclass(frozen=True)
class EnvConfig:
    """The environment: any Gymnasium id (or a suite name) and the wrapper stack around it."""

    # Gymnasium id ("CartPole-v1"), or a suite task: "dmc_walker_walk", "atari_pong".
    id: str = "CartPole-v1"
    # Keyword arguments passed to `gymnasium.make` (or the suite's constructor).
    kwargs: Dict[str, Any] = field(default_factory=dict)
    # "state" (the env's own observation), "pixels" (rendered rgb_array frames as `image`), or "both".
    obs: ObsKind = "state"
    # Image height and width [H, W]; each must be a multiple of 2**k that the encoder reduces to
    # `world_model.encoder.minres` (64x64 in the reference).
    size: List[int] = field(default_factory=lambda: [64, 64])
    # Convert images to one grayscale channel.
    grayscale: bool = False
    # Env steps per agent step, rewards summed (DMC: 2, Atari: 4, as in the reference; set by the task
    # presets).
    action_repeat: int = bounded(1, ge=1)
    # Episode cap in agent steps; 0 keeps the env's own limit.
    time_limit: int = bounded(0, ge=0)
    # Training environments stepped together.
    num_envs: int = bounded(1, ge=1)
    # Run the training environments in subprocesses (gymnasium AsyncVectorEnv). On 2 cores this is
    # slower for cheap envs; it pays off for expensive ones.
    parallel: bool = False
    # Environments for evaluation episodes (separate from training, distinct seeds).
    eval_num_envs: int = bounded(1, ge=1)
    # Restart an environment that raises during a step (the error is reported) instead of stopping.
    restart_on_error: bool = True


@dataclass(frozen=True)
class ReplayConfig:
    """Sequence replay: FIFO in steps, contiguous B x T samples, chunked to disk."""

    # Capacity in steps across all env streams (v2: 5e6).
    capacity: int = bounded(5_000_000, ge=1)
    # Sequences per batch, B (v2: 16).
    batch_size: int = bounded(16, ge=1)
    # Steps per sequence, T (v2: 64).
    batch_length: int = bounded(64, ge=1)
    # Fraction of each batch's drawn windows (those after the online queue's) taken from the most recent
    # `recent_window` steps (0: uniform, as v2).
    recency: float = bounded(0.0, ge=0, le=1)
    # Train every window of newly collected steps at least once: each stream's steps tile into windows
    # of `batch_length`, queued as each completes, and training batches take queued windows first (v2:
    # `replay.online` True). Reports sample without taking them.
    online: bool = True
    # Size in steps of the recent window used by `recency`, over all streams (each stream's newest
    # `recent_window // num_streams` steps).
    recent_window: int = bounded(10_000, ge=1)
    # Steps per stream written to disk as one chunk file (compressed npz); at most the steps each
    # stream holds (`capacity // num_streams`) when saving. (v2 writes chunks of 1024 steps.)
    chunk_size: int = bounded(1024, ge=1)
    # Context steps before each window (v2 `replay_context: 1`): a window holds `context + batch_length`
    # steps, and the model starts its first trained step from the latent stored at the step before
    # it, with the real action taken there. Every stored step keeps the latent the policy reached there,
    # refreshed by each update that trains on it. 0: no stored latents; each batch starts from the
    # last posterior of the batch before (v1, which samples windows independently).
    context: int = bounded(1, ge=0)
    # Write chunks to `<logdir>/replay` and reload them on resume.
    save: bool = True
    # A step with a non-finite (NaN or inf) observation, reward or action stops the run with an error
    # naming the env, key and step; true drops such a step instead (counted in `replay/steps_dropped`;
    # that env's next stored step starts a new sequence).
    drop_nonfinite: bool = False


@dataclass(frozen=True)
class EncoderConfig:
    """Observation encoder (and, mirrored, the decoder)."""

    # Conv channels of the first stage; stages use depth x (2, 3, 4, 4)... up to `minres` (v2).
    # None: `world_model.depth`.
    depth: int | None = bounded(None, ge=1)
    # Hidden units of the vector MLP. None: `world_model.units`.
    units: int | None = bounded(None, ge=1)
    # Layers of the vector MLP (v2: 3).
    layers: int = bounded(3, ge=0)
    # Conv kernel size (v2: 5; v1: 4).
    kernel: int = bounded(5, ge=1)
    # Spatial resolution at which the conv stack stops (v2: 4).
    minres: int = bounded(4, ge=1)
    # Channel multipliers per conv stage, times `depth` (v2: [2, 3, 4, 4]; v1: [1, 2, 4, 8]).
    mults: List[int] = field(default_factory=lambda: [2, 3, 4, 4])
    # Halve (double) the resolution with stride-2 convs (transposed convs in the decoder), as the 2023
    # code (v1, kernel 4), instead of stride-1 convs with max-pooling (nearest upsampling) (v2).
    strided: bool = False
    # Observation keys matched by these regexes are encoded/decoded; "" matches none. Default: all.
    vector_keys: str = ".*"
    image_keys: str = ".*"


@dataclass(frozen=True)
class DecoderConfig(EncoderConfig):
    """Observation decoder: the encoder's layout mirrored, and how the image path starts and ends."""

    # Blocks of the image decoder's input layer: a block-diagonal layer on the deterministic state plus
    # Linear -> norm -> SiLU -> Linear (2 x units wide) on the stochastic state, summed, then norm ->
    # SiLU (v2 `bspace: 8`, danijar/dreamerv3 rssm.py `Decoder`). 0: one dense layer on [h, z] (the
    # reference's `bspace: 0` branch; the 2023 code, v1). Must divide `deter` and the last stage's
    # channels.
    bspace: int = bounded(8, ge=0)
    # With `bspace` 0: norm -> SiLU after the dense input layer (v2 `spacenorm`); False: the layer stays
    # linear, as the 2023 code's `in` layer (v1).
    space_norm: bool = True
    # Image mean sigmoid(x) (v2); False: x + 0.5, as the 2023 code's default `cnn_sigmoid: False` (v1).
    sigmoid: bool = True


@dataclass(frozen=True, kw_only=True)
class HeadConfig:
    """An MLP head on the model features; each head below gives its own `layers` and `outscale`."""

    # Hidden layers (v2: reward and continue 1, actor and critic 3).
    layers: int = bounded(ge=0)
    # Hidden units. None: the group's `units` (`world_model.units` or `actor_critic.units`).
    units: int | None = bounded(None, ge=1)
    # Scale of the truncated-normal init of the output layer (v2: 0 for reward and value, 0.01 for
    # the policy, 1 elsewhere).
    outscale: float = bounded(ge=0)


@dataclass(frozen=True)
class WorldModelLossScales:
    """Weights of the world-model loss terms; keys equal the names of the unreduced [B, T] losses."""

    rec: float = bounded(1.0, ge=0)  # reconstruction of every decoded observation key (v2: 1)
    rew: float = bounded(1.0, ge=0)  # reward, two-hot (v2: 1)
    con: float = bounded(1.0, ge=0)  # continuation, Bernoulli (v2: 1)
    dyn: float = bounded(1.0, ge=0)  # KL[sg(q) || p], trains the prior (v2: 1.0, v1: 0.5)
    rep: float = bounded(0.1, ge=0)  # KL[q || sg(p)], trains the posterior (v2: 0.1, v1: 0.1)


# --- world model ---
# Latent kind: one-hot categoricals (v2) or a diagonal Gaussian (reparameterized).
Latent = Literal["categorical", "gaussian"]
LATENTS: tuple[str, ...] = get_args(Latent)
# Recurrent core: block-diagonal GRU (v2) or plain GRU (v1).
Gru = Literal["block", "plain"]
GRUS: tuple[str, ...] = get_args(Gru)
# Inputs of the recurrence (see `WorldModelConfig.dyn_inputs`).
DynInputs = Literal["separate", "joint"]
DYN_INPUTS: tuple[str, ...] = get_args(DynInputs)
# Initial recurrent state at `is_first`.
Initial = Literal["zeros", "learned"]
INITIALS: tuple[str, ...] = get_args(Initial)
# Normalization layers: RMSNorm (v2) or LayerNorm (v1).
NormKind = Literal["rms", "layer"]
NORM_KINDS: tuple[str, ...] = get_args(NormKind)
# Two-hot reward bins: symexp-spaced values (v2) or linear in symlog space (v1).
RewardBins = Literal["symexp", "symlog"]
REWARD_BINS: tuple[str, ...] = get_args(RewardBins)


@dataclass(frozen=True)
class WorldModelConfig:
    """The RSSM, encoder, decoder and heads, trained by the sequential ELBO."""

    # Size of the deterministic state h (v2 size12m: 2048).
    deter: int = bounded(2048, ge=1)
    # Hidden units of the RSSM's input, prior and posterior layers (v2 size12m: 256).
    hidden: int = bounded(256, ge=1)
    # Stochastic latent groups (v2: 32 throughout).
    stoch: int = bounded(32, ge=1)
    # Classes per group for categorical latents (v2 size12m: 16); ignored for gaussian.
    classes: int = bounded(16, ge=1)
    # "categorical" (v2) or "gaussian" (diagonal Normal, reparameterized).
    latent: Latent = "categorical"
    # Uniform mixture on categorical probabilities (v2: 0.01).
    unimix: float = bounded(0.01, ge=0, le=1)
    # Lower bound on the Gaussian latent std, added after softplus.
    min_std: float = bounded(0.1, ge=0)
    # "block" (block-diagonal GRU, v2) or "plain" (v1).
    gru: Gru = "block"
    # Blocks of the block GRU (v2: 8); `deter` must be a multiple of it.
    blocks: int = bounded(8, ge=1)
    # Inputs of the recurrence: "separate" embeds deter, stoch and action each by Linear -> norm -> SiLU
    # (v2 `dynin`); "joint" embeds [stoch, action] by one such layer and the GRU sees [h, x] (v1 `img_in`).
    dyn_inputs: DynInputs = "separate"
    # "zeros" (v2) or "learned" (v1) initial state, used at `is_first`.
    initial: Initial = "zeros"
    # Hidden layers of the prior p(z|h) (v2: 2; v1: 1) and the posterior q(z|h,e) (v2: 1).
    prior_layers: int = bounded(2, ge=0)
    post_layers: int = bounded(1, ge=1)
    # "rms" (v2) or "layer" (v1).
    norm: NormKind = "rms"
    # Free bits in nats on the per-step KL summed over groups (v2: 1.0).
    free_nats: float = bounded(1.0, ge=0)
    # Continuation target `(1 - is_terminal) * (1 - 1/discount_horizon)` (v2) or `1 - is_terminal` (v1).
    cont_discount: bool = True
    # Reward bins: "symexp" (255 symexp-spaced, v2) or "symlog" (linear in symlog space, v1).
    reward_bins: RewardBins = "symexp"
    # Number of two-hot bins (v2: 255).
    bins: int = bounded(255, ge=2)
    # Observation std of the Gaussian decoder likelihood used for the reported distortion, in the
    # decoder's output space (symlog for vectors, [0, 1] for images). The training loss is the
    # reference's MSE, which equals this NLL up to a constant when the std is 1/sqrt(2): that default
    # makes the reported ELBO the bound of exactly the model being trained.
    obs_std: float = bounded(0.5**0.5, gt=0)
    # Hidden units of the encoder's and decoder's vector MLPs and of the reward and continue heads,
    # where they give none of their own (v2 size12m: 256, the reference's `.*\.units`).
    units: int = bounded(256, ge=1)
    # Conv channels of the encoder's and decoder's first stage, where they give none of their own
    # (v2 size12m: 16, the reference's `.*\.depth`).
    depth: int = bounded(16, ge=1)
    # Encoder and decoder: vector MLP of 3 layers, conv stages of kernel 5 with max-pooling (v2); the
    # decoder's image path starts with a block layer on h and a two-layer path on z (v2 `bspace: 8`).
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # Reward head: 1 hidden layer, zero-initialized output, so predictions start at exactly 0 (v2).
    reward_head: HeadConfig = field(default_factory=lambda: HeadConfig(layers=1, outscale=0.0))
    # Continue head: 1 hidden layer, the default output init (v2).
    cont_head: HeadConfig = field(default_factory=lambda: HeadConfig(layers=1, outscale=1.0))
    loss_scales: WorldModelLossScales = field(default_factory=WorldModelLossScales)


@dataclass(frozen=True)
class AgentLossScales:
    """Weights of the actor-critic loss terms."""

    policy: float = bounded(1.0, ge=0)  # REINFORCE actor loss (v2: 1)
    value: float = bounded(1.0, ge=0)  # critic on imagined lambda-returns (v2: 1)
    repval: float = bounded(0.3, ge=0)  # critic on replayed sequences (v2: 0.3; v1: none, 0)


# --- actor-critic ---
# Policy gradient for continuous actions: REINFORCE (v2) or backpropagation through the dynamics (v1).
ActorGrad = Literal["reinforce", "dynamics"]
GRADS: tuple[str, ...] = get_args(ActorGrad)
# Continuation of imagined steps: the continue head's probability (v2) or its mode (v1).
ImagCont = Literal["prob", "mode"]
IMAG_CONTS: tuple[str, ...] = get_args(ImagCont)


@dataclass(frozen=True)
class ActorCriticConfig:
    """Actor and critic learned in imagination."""

    # Imagined steps per rollout, H (v2: 15).
    imag_horizon: int = bounded(15, ge=1)
    # Discount horizon: gamma = 1 - 1/discount_horizon (v2: 333, gamma 0.997).
    discount_horizon: int = bounded(333, ge=1)
    # Lambda of the lambda-return (v2: 0.95).
    return_lambda: float = bounded(0.95, ge=0, le=1)
    # Entropy regularizer (v2: 3e-4).
    entropy: float = bounded(3e-4, ge=0)
    # Policy gradient for continuous actions: "reinforce" (v2) or "dynamics" (v1 option): -(R - v) / S
    # through the imagined dynamics, the baseline v included (the 2023 code's `backprop` loss, -adv).
    grad: ActorGrad = "reinforce"
    # Continuation of imagined steps: "prob", the continue head's probability at every step (v2,
    # dreamerv3/agent.py `self.con(inp, 2).prob(1)`), or "mode", its mode (0 or 1) with the start's
    # replayed 1 - is_terminal (v1: the 2023 code's `WorldModel.imagine`, `first_cont = 1 -
    # start['is_terminal']`, `cont = self.heads['cont'](traj).mode()`; from danijar/dreamerv3 as of
    # 2023, which is not in the local reference copy).
    imag_cont: ImagCont = "prob"
    # Uniform mixture on the discrete policy's probabilities: 0.01 as in the April 2024 code behind the
    # published curves (v2 and v1). The reference's HEAD lists `policy.unimix: 0.01` in configs.yaml, but
    # its discrete policy head (`policy_dist_disc: categorical`, embodied/jax/heads.py) applies no unimix: 0.
    unimix: float = bounded(0.01, ge=0, le=1)
    # Let the replay value loss train the world model's representation too (v2: `repval_grad` True).
    repval_grad: bool = True
    # Continuous policy std range: std = (max - min) * sigmoid(x + 2) + min (v2: 0.1, 1.0).
    min_std: float = bounded(0.1, ge=0)
    max_std: float = bounded(1.0, ge=0)
    # Slow critic EMA rate per update (v2: 0.02) and the weight of its regularizer (v2: 1.0).
    slow_rate: float = bounded(0.02, ge=0, le=1)
    slow_reg: float = bounded(1.0, ge=0)
    # Return normalization: EMA decay of the percentiles (v2: 0.99), percentiles (5, 95), and the
    # floor of the scale, S = max(limit, P95 - P5) (v2: 1.0).
    retnorm_decay: float = bounded(0.99, ge=0, lt=1)
    retnorm_low: float = bounded(5.0, ge=0, le=100)
    retnorm_high: float = bounded(95.0, ge=0, le=100)
    retnorm_limit: float = bounded(1.0, ge=0)
    # Hidden units of the actor and critic, where they give none of their own (v2 size12m: 256).
    units: int = bounded(256, ge=1)
    # Actor: 3 hidden layers, output init scaled by 0.01 (v2; the 2023 code's `actor.outscale` is 1.0,
    # set by the v1 preset).
    actor: HeadConfig = field(default_factory=lambda: HeadConfig(layers=3, outscale=0.01))
    # Critic: 3 hidden layers, zero-initialized output (v2).
    critic: HeadConfig = field(default_factory=lambda: HeadConfig(layers=3, outscale=0.0))
    loss_scales: AgentLossScales = field(default_factory=AgentLossScales)


# --- optimizer ---
# One LaProp over all modules (v2) or Adam per module (v1).
OptimKind = Literal["laprop", "adam"]
OPTIM_KINDS: tuple[str, ...] = get_args(OptimKind)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizers: one LaProp over all modules (v2) or Adam per module (v1)."""

    # "laprop" (v2) or "adam" (v1, per module with the *_lr / *_eps / *_clip fields below).
    kind: OptimKind = "laprop"
    # LaProp (v2): lr 4e-5, eps 1e-20, betas (0.9, 0.999), adaptive gradient clipping 0.3.
    lr: float = bounded(4e-5, ge=0)
    eps: float = bounded(1e-20, ge=0)
    beta1: float = bounded(0.9, ge=0, lt=1)
    beta2: float = bounded(0.999, ge=0, lt=1)
    agc: float = bounded(0.3, ge=0)
    # Linear learning-rate warm-up in updates (v2: 1000).
    warmup: int = bounded(1000, ge=0)
    # Adam per module (v1): world model lr 1e-4 eps 1e-8 clip 1000; actor and critic 3e-5, 1e-5, 100.
    model_lr: float = bounded(1e-4, ge=0)
    model_eps: float = bounded(1e-8, ge=0)
    model_clip: float = bounded(1000.0, ge=0)
    ac_lr: float = bounded(3e-5, ge=0)
    ac_eps: float = bounded(1e-5, ge=0)
    ac_clip: float = bounded(100.0, ge=0)


# --- run ---
# Device: "auto" (cuda when available), "cpu", "cuda" or "cuda:<n>"; a regular expression, not a
# Literal, because of the device index.
DEVICE_PATTERN = r"auto|cpu|cuda(:[0-9]+)?"
# Autocast precision of the model forward passes; "auto" is resolved per device (agent/precision.py).
Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# Evaluation actions: samples of the policy (as the reference, whose `policy` samples in every mode) or
# the distribution's mode.
EvalPolicy = Literal["sample", "mode"]
EVAL_POLICIES: tuple[str, ...] = get_args(EvalPolicy)
# torch.distributed backend: "auto" picks nccl on CUDA, gloo on the CPU.
DistBackend = Literal["auto", "nccl", "gloo"]
DIST_BACKENDS: tuple[str, ...] = get_args(DistBackend)
# torch.compile modes (`run.compile_mode`).
CompileMode = Literal["default", "reduce-overhead", "max-autotune"]


@dataclass(frozen=True)
class RunConfig:
    """The training loop: budget, schedules, checkpoints, numerics."""

    # Policy steps to collect in total (env frames = steps x action_repeat).
    steps: int = bounded(100_000, ge=0)
    # Replayed steps per policy step: updates per policy step = train_ratio / (B x T) (v2: 32;
    # DMC 512, Atari100k 256 as in the published curves).
    train_ratio: float = bounded(32.0, ge=0)
    # Policy steps collected with uniform random actions before training may begin. 0 starts as the
    # reference does (v2 has no prefill): the untrained policy acts from the first step, and training
    # starts at the first step the replay holds batch_size x batch_length windows (`Replay.ready`). In
    # either case the first update comes at once, then updates follow `train_ratio`. On CartPole and
    # Pendulum (`bench/reference.py`, `small`) 0 passed the first return threshold sooner than 1024 on
    # every seed and had the higher mean return over the budget, with the same final returns.
    prefill: int = bounded(0, ge=0)
    # Seconds between log lines / metric writes.
    log_every: float = bounded(10.0, ge=0)
    # Seconds between checkpoints; `save_every_steps` > 0 saves on a step schedule instead.
    save_every: float = bounded(600.0, ge=0)
    save_every_steps: int = bounded(0, ge=0)
    # Checkpoints kept on disk (oldest removed first).
    keep_checkpoints: int = bounded(3, ge=1)
    # Policy steps between evaluations (0: never) and episodes per evaluation.
    eval_every: int = bounded(10_000, ge=0)
    eval_episodes: int = bounded(10, ge=1)
    # Evaluation actions: "sample" from the policy, as the reference's evaluation (dreamerv3/agent.py
    # `policy` samples in every mode), so scores compare with the published ones; "mode" takes the
    # distribution's mode (a greedy policy, not the reference's).
    eval_policy: EvalPolicy = "sample"
    # Policy steps between video reports (open-loop prediction, policy episode); 0: never.
    video_every: int = bounded(0, ge=0)
    # Updates between bound metrics (0: never; ours): the ELBO, the importance-weighted bound of
    # `bound_particles` posterior trajectories and the particle (filtering) bound with `bound_particles`
    # particles, on that update's batch after the update, from the window's start as in training; logged
    # as train/bound/* in nats per step. They draw from the torch random stream, so a run with them
    # samples differently afterwards.
    bound_every: int = bounded(0, ge=0)
    bound_particles: int = bounded(16, ge=1)
    # Initialize weights from this checkpoint file ("" for none).
    from_checkpoint: str = ""
    # Stop after this many consecutive updates with a non-finite loss or gradient.
    max_nonfinite: int = bounded(10, ge=0)
    # "cpu", "cuda", "cuda:1" or "auto" (cuda when available); must match DEVICE_PATTERN.
    device: str = field(default="auto", metadata={"pattern": DEVICE_PATTERN})
    # torch threads on CPU (0: leave torch's choice).
    threads: int = bounded(0, ge=0)
    # Keep large freed CPU blocks mapped for reuse instead of unmapping them (glibc): every big
    # temporary of an update is otherwise page-faulted in anew. The process keeps its peak heap.
    keep_freed_memory: bool = True
    # Autocast dtype of the model forward passes; parameters, optimizer states and loss reductions stay
    # float32 either way. "auto": bfloat16 where the device computes it natively (a CUDA GPU for which
    # `torch.cuda.is_bf16_supported(including_emulation=False)`, a CPU with amx_bf16 or avx512_bf16 in
    # /proc/cpuinfo), float32 elsewhere, where bf16 is emulated and slower; a run says its choice in one
    # line and saves the resolved value in config.yaml. The reference computes in bf16 by default
    # (dreamerv3/configs.yaml `jax.compute_dtype: bfloat16`, with `jax.platform: cuda`).
    precision: Precision = "auto"
    # torch.compile the MLPs that run on every imagined state (actor, critic, slow critic, reward and
    # continue heads) and the recurrent steps (posterior and prior); a compilation failure stops the run
    # with torch's error. Costs minutes of compilation at the start on a CPU.
    compile: bool = False
    # torch.compile's mode with `compile`: "default", "reduce-overhead" (CUDA graphs on a GPU: the
    # launch overhead of the many small kernels of a recurrent step goes; shapes must stay the same) or
    # "max-autotune".
    compile_mode: CompileMode = "default"
    # With `compile`: a function that fails to compile runs eagerly (torch's warning says so) instead of
    # stopping the run; this turns on dynamo's process-wide `suppress_errors`.
    compile_fallback: bool = False
    # torch.distributed backend under torchrun: "auto" (nccl on CUDA, gloo on the CPU), "nccl" or "gloo".
    dist_backend: DistBackend = "auto"
    # Seconds a rank waits in a collective before the group aborts. Only rank 0 evaluates, so the other
    # ranks wait in the next all-reduce through a whole evaluation: NCCL's default of 10 minutes would
    # abort a long one.
    dist_timeout_s: float = bounded(3600.0, gt=0)
    # On CUDA, float32 matmuls and convolutions use TF32 tensor cores (10-bit mantissa products, float32
    # accumulation; `torch.set_float32_matmul_precision("high")`, cudnn.allow_tf32), several times
    # faster on Ampere and later. The reference computes in bfloat16 on GPUs, coarser still. No effect
    # on a CPU or under bfloat16 autocast.
    tf32: bool = True
    # On CUDA, cudnn benchmarks its convolution algorithms for each new shape and keeps the fastest
    # (`torch.backends.cudnn.benchmark`): the shapes of an update never change after the first.
    cudnn_benchmark: bool = True


# --- logger ---
# Weights & Biases mode.
WandbMode = Literal["online", "offline", "disabled"]
WANDB_MODES: tuple[str, ...] = get_args(WandbMode)
# Video file format: H.264 mp4 (through imageio-ffmpeg) or gif.
VideoFormat = Literal["mp4", "gif"]
VIDEO_FORMATS: tuple[str, ...] = get_args(VideoFormat)


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases tracking; offline by default so no account is needed."""

    # "online", "offline" or "disabled".
    mode: WandbMode = "offline"
    project: str = "dreamer"
    # Team or user ("" lets wandb choose), run group and tags.
    entity: str = ""
    group: str = ""
    tags: List[str] = field(default_factory=list)
    # Run name ("" lets wandb choose).
    name: str = ""


@dataclass(frozen=True)
class LoggerConfig:
    """Where metrics go: terminal and `metrics.jsonl` always, TensorBoard and wandb by choice."""

    # Print a compact line per log interval and a progress bar.
    terminal: bool = True
    tensorboard: bool = False
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # Frames per second of written videos.
    fps: int = bounded(15, ge=1)
    # File format of written videos: "mp4" (H.264 through imageio-ffmpeg) or "gif".
    video_format: VideoFormat = "mp4"


@dataclass(frozen=True)
class Config:
    """The root: reaches only train.py, evaluate.py and the factories that build the parts."""

    # Run folder: config.yaml, metrics.jsonl, checkpoints/, replay/, videos/, plots/.
    logdir: str = "runs/default"
    # Seed of python, numpy, torch and the environments.
    seed: int = 0
    env: EnvConfig = field(default_factory=EnvConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    actor_critic: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


# Shared sizes: group -> shared key -> the sub-configs whose None value takes the group's value.
SHARED: dict[str, dict[str, tuple[str, ...]]] = {
    "world_model": {
        "units": ("encoder", "decoder", "reward_head", "cont_head"),
        "depth": ("encoder", "decoder"),
    },
    "actor_critic": {"units": ("actor", "critic")},
}
