"""The typed configuration tree.

Every field is declared here with its type and its meaning (and its source, where the value comes
from the reference: DreamerV3, Hafner et al. 2023, arXiv 2301.04104, "v2" = the 2024 code behind the
published curves, "v1" = the 2023 code). The values live in `configs/defaults.yaml`; presets in
`configs/presets.yaml` and command-line overrides are merged over them by `configs/loader.py`.
Configs are frozen: nothing writes into them at run time; derived values are computed by functions.

A field added here must also get a value in `defaults.yaml` (a test checks both agree).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from omegaconf import MISSING


@dataclass(frozen=True)
class EnvConfig:
    """The environment: any Gymnasium id (or a suite name) and the wrapper stack around it."""

    # Gymnasium id ("CartPole-v1"), or a suite task: "dmc_walker_walk", "atari_pong".
    id: str = MISSING
    # Keyword arguments passed to `gymnasium.make` (or the suite's constructor).
    kwargs: Dict[str, Any] = MISSING
    # Which observations the agent sees: "state" (the env's own observation), "pixels" (rendered
    # rgb_array frames as `image`), or "both".
    obs: str = MISSING
    # Image height and width [H, W]; each must be a multiple of 2**k that the encoder reduces to
    # `world_model.encoder.minres` (64x64 in the reference).
    size: List[int] = MISSING
    # Convert images to one grayscale channel.
    grayscale: bool = MISSING
    # Env steps per agent step, rewards summed (DMC: 2, Atari: 4, as in the reference).
    action_repeat: int = MISSING
    # Episode cap in agent steps; 0 keeps the env's own limit.
    time_limit: int = MISSING
    # Training environments stepped together.
    num_envs: int = MISSING
    # Run the training environments in subprocesses (gymnasium AsyncVectorEnv). On 2 cores this is
    # slower for cheap envs; it pays off for expensive ones.
    parallel: bool = MISSING
    # Environments for evaluation episodes (separate from training, distinct seeds).
    eval_num_envs: int = MISSING
    # Restart an environment that raises during a step (the error is reported) instead of stopping.
    restart_on_error: bool = MISSING


@dataclass(frozen=True)
class ReplayConfig:
    """Sequence replay: FIFO in steps, contiguous B x T samples, chunked to disk."""

    # Capacity in steps across all env streams (v2: 5e6).
    capacity: int = MISSING
    # Sequences per batch, B (reference: 16).
    batch_size: int = MISSING
    # Steps per sequence, T (reference: 64).
    batch_length: int = MISSING
    # Fraction of each batch drawn from the most recent `recent_window` steps (0: uniform).
    recency: float = MISSING
    # Size in steps of the recent window used by `recency`, over all streams (each stream's newest
    # `recent_window // num_streams` steps).
    recent_window: int = MISSING
    # Steps per stream written to disk as one chunk file (compressed npz); at most the steps each
    # stream holds (`capacity // num_streams`) when saving.
    chunk_size: int = MISSING
    # Write chunks to `<logdir>/replay` and reload them on resume.
    save: bool = MISSING


@dataclass(frozen=True)
class EncoderConfig:
    """Observation encoder (and, mirrored, the decoder)."""

    # Conv channels of the first stage; stages use depth x (2, 3, 4, 4)... up to `minres` (v2).
    depth: int = MISSING
    # Hidden units of the vector MLP.
    units: int = MISSING
    # Layers of the vector MLP (v2: 3).
    layers: int = MISSING
    # Conv kernel size (v2: 5).
    kernel: int = MISSING
    # Spatial resolution at which the conv stack stops (v2: 4).
    minres: int = MISSING
    # Channel multipliers per conv stage, times `depth` (v2: [2, 3, 4, 4]; v1: [1, 2, 4, 8]).
    mults: List[int] = MISSING
    # Halve (double) the resolution with stride-2 convs (transposed convs in the decoder), as the 2023
    # code (v1, kernel 4), instead of stride-1 convs with max-pooling (nearest upsampling) (v2).
    strided: bool = MISSING
    # Observation keys matched by these regexes are encoded/decoded; "" matches none.
    vector_keys: str = MISSING
    image_keys: str = MISSING


@dataclass(frozen=True)
class HeadConfig:
    """An MLP head on the model features."""

    # Hidden layers (v2: reward and continue 1, actor and critic 3).
    layers: int = MISSING
    # Hidden units.
    units: int = MISSING
    # Scale of the truncated-normal init of the output layer (v2: 0 for reward and value, 0.01 for
    # the policy).
    outscale: float = MISSING


@dataclass(frozen=True)
class WorldModelLossScales:
    """Weights of the world-model loss terms; keys equal the names of the unreduced [B, T] losses."""

    rec: float = MISSING  # reconstruction of every decoded observation key (v2: 1)
    rew: float = MISSING  # reward, two-hot (v2: 1)
    con: float = MISSING  # continuation, Bernoulli (v2: 1)
    dyn: float = MISSING  # KL[sg(q) || p], trains the prior (v2: 1.0, v1: 0.5)
    rep: float = MISSING  # KL[q || sg(p)], trains the posterior (v2: 0.1, v1: 0.1)


@dataclass(frozen=True)
class WorldModelConfig:
    """The RSSM, encoder, decoder and heads, trained by the sequential ELBO."""

    # Size of the deterministic state h (v2 size12m: 2048).
    deter: int = MISSING
    # Hidden units of the RSSM's input, prior and posterior layers (v2 size12m: 256).
    hidden: int = MISSING
    # Stochastic latent groups (v2: 32 throughout).
    stoch: int = MISSING
    # Classes per group for categorical latents (v2 size12m: 16); ignored for gaussian.
    classes: int = MISSING
    # "categorical" (v2) or "gaussian" (diagonal Normal, reparameterized).
    latent: str = MISSING
    # Uniform mixture on categorical probabilities (v2: 0.01).
    unimix: float = MISSING
    # Lower bound on the Gaussian latent std, added after softplus.
    min_std: float = MISSING
    # "block" (block-diagonal GRU, v2) or "plain" (v1).
    gru: str = MISSING
    # Blocks of the block GRU (v2: 8).
    blocks: int = MISSING
    # Inputs of the recurrence: "separate" embeds deter, stoch and action each by Linear -> norm -> SiLU
    # (v2 `dynin`); "joint" embeds [stoch, action] by one such layer and the GRU sees [h, x] (v1 `img_in`).
    dyn_inputs: str = MISSING
    # "zeros" (v2) or "learned" (v1) initial state, used at `is_first`.
    initial: str = MISSING
    # Hidden layers of the prior p(z|h) (v2: 2) and the posterior q(z|h,e) (v2: 1).
    prior_layers: int = MISSING
    post_layers: int = MISSING
    # "rms" (v2) or "layer" (v1).
    norm: str = MISSING
    # Free bits in nats on the per-step KL summed over groups (v2: 1.0).
    free_nats: float = MISSING
    # Continuation target `(1 - is_terminal) * (1 - 1/horizon)` (v2) or `1 - is_terminal` (v1).
    cont_discount: bool = MISSING
    # Reward bins: "symexp" (255 symexp-spaced, v2) or "symlog" (linear in symlog space, v1).
    reward_bins: str = MISSING
    # Number of two-hot bins (v2: 255).
    bins: int = MISSING
    # Observation std of the Gaussian decoder likelihood used for the reported distortion, in the
    # decoder's output space (symlog for vectors, [0, 1] for images). The training loss is the
    # reference's MSE, which equals this NLL up to a constant when the std is 1/sqrt(2): that default
    # makes the reported ELBO the bound of exactly the model being trained.
    obs_std: float = MISSING
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: EncoderConfig = field(default_factory=EncoderConfig)
    reward_head: HeadConfig = field(default_factory=HeadConfig)
    cont_head: HeadConfig = field(default_factory=HeadConfig)
    loss_scales: WorldModelLossScales = field(default_factory=WorldModelLossScales)


@dataclass(frozen=True)
class AgentLossScales:
    """Weights of the actor-critic loss terms."""

    policy: float = MISSING  # REINFORCE actor loss (v2: 1)
    value: float = MISSING  # critic on imagined lambda-returns (v2: 1)
    repval: float = MISSING  # critic on replayed sequences (v2: 0.3)


@dataclass(frozen=True)
class ActorCriticConfig:
    """Actor and critic learned in imagination."""

    # Imagined steps per rollout, H (v2: 15).
    imag_horizon: int = MISSING
    # Discount horizon: gamma = 1 - 1/horizon (v2: 333, gamma 0.997).
    horizon: int = MISSING
    # Lambda of the lambda-return (v2: 0.95).
    return_lambda: float = MISSING
    # Entropy regularizer (v2: 3e-4).
    entropy: float = MISSING
    # Policy gradient for continuous actions: "reinforce" (v2) or "dynamics" (v1 option).
    grad: str = MISSING
    # Uniform mixture on the discrete policy's probabilities (v2 and v1: `policy.unimix` 0.01).
    unimix: float = MISSING
    # Let the replay value loss train the world model's representation too (v2: `repval_grad` True).
    repval_grad: bool = MISSING
    # Continuous policy std range: std = (max - min) * sigmoid(x + 2) + min (v2: 0.1, 1.0).
    min_std: float = MISSING
    max_std: float = MISSING
    # Slow critic EMA rate per update (v2: 0.02) and the weight of its regularizer (v2: 1.0).
    slow_rate: float = MISSING
    slow_reg: float = MISSING
    # Return normalization: EMA decay of the percentiles (v2: 0.99), percentiles (5, 95), and the
    # floor of the scale, S = max(limit, P95 - P5) (v2: 1.0).
    retnorm_decay: float = MISSING
    retnorm_low: float = MISSING
    retnorm_high: float = MISSING
    retnorm_limit: float = MISSING
    actor: HeadConfig = field(default_factory=HeadConfig)
    critic: HeadConfig = field(default_factory=HeadConfig)
    loss_scales: AgentLossScales = field(default_factory=AgentLossScales)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizers: one LaProp over all modules (v2) or Adam per module (v1)."""

    # "laprop" (v2) or "adam" (v1, per module with the *_lr / *_eps / *_clip fields below).
    kind: str = MISSING
    # LaProp (v2): lr 4e-5, eps 1e-20, betas (0.9, 0.999), adaptive gradient clipping 0.3.
    lr: float = MISSING
    eps: float = MISSING
    beta1: float = MISSING
    beta2: float = MISSING
    agc: float = MISSING
    # Linear learning-rate warm-up in updates (v2: 1000).
    warmup: int = MISSING
    # Adam per module (v1): world model lr 1e-4 eps 1e-8 clip 1000; actor and critic 3e-5, 1e-5, 100.
    model_lr: float = MISSING
    model_eps: float = MISSING
    model_clip: float = MISSING
    ac_lr: float = MISSING
    ac_eps: float = MISSING
    ac_clip: float = MISSING


@dataclass(frozen=True)
class RunConfig:
    """The training loop: budget, schedules, checkpoints, numerics."""

    # Policy steps to collect in total (env frames = steps x action_repeat).
    steps: int = MISSING
    # Replayed steps per policy step: updates per policy step = train_ratio / (B x T) (v2: 32;
    # DMC 512, Atari100k 256 as in the published curves).
    train_ratio: float = MISSING
    # Policy steps collected with uniform random actions before training begins.
    prefill: int = MISSING
    # Seconds between log lines / metric writes.
    log_every: float = MISSING
    # Seconds between checkpoints; `save_every_steps` > 0 saves on a step schedule instead.
    save_every: float = MISSING
    save_every_steps: int = MISSING
    # Checkpoints kept on disk (oldest removed first).
    keep_checkpoints: int = MISSING
    # Policy steps between evaluations (0: never) and episodes per evaluation.
    eval_every: int = MISSING
    eval_episodes: int = MISSING
    # Policy steps between video reports (open-loop prediction, policy episode); 0: never.
    video_every: int = MISSING
    # Initialize weights from this checkpoint file ("" for none).
    from_checkpoint: str = MISSING
    # Stop after this many consecutive updates with a non-finite loss or gradient.
    max_nonfinite: int = MISSING
    # "cpu", "cuda", "cuda:1" or "auto" (cuda when available).
    device: str = MISSING
    # torch threads on CPU (0: leave torch's choice).
    threads: int = MISSING
    # Keep large freed CPU blocks mapped for reuse instead of unmapping them (glibc): every big
    # temporary of an update is otherwise page-faulted in anew. The process keeps its peak heap.
    keep_freed_memory: bool = MISSING
    # "float32" or "bfloat16" autocast for the model forward passes.
    precision: str = MISSING
    # torch.compile the MLPs that run on every imagined state (actor, critic, slow critic, reward and
    # continue heads); where compilation fails they run eagerly. Costs ~30 s of compilation at the start.
    compile: bool = MISSING
    # torch.distributed backend under torchrun: "auto" (nccl on CUDA, gloo on the CPU), "nccl" or "gloo".
    dist_backend: str = MISSING


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases tracking; offline by default so no account is needed."""

    # "online", "offline" or "disabled".
    mode: str = MISSING
    project: str = MISSING
    entity: str = MISSING
    group: str = MISSING
    tags: List[str] = MISSING
    # Run name ("" lets wandb choose).
    name: str = MISSING


@dataclass(frozen=True)
class LoggerConfig:
    """Where metrics go: terminal and `metrics.jsonl` always, TensorBoard and wandb by choice."""

    # Print a compact line per log interval and a progress bar.
    terminal: bool = MISSING
    tensorboard: bool = MISSING
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # Frames per second of written videos.
    fps: int = MISSING
    # File format of written videos: "mp4" (H.264 through imageio-ffmpeg) or "gif".
    video_format: str = MISSING


@dataclass(frozen=True)
class Config:
    """The root: reaches only train.py, evaluate.py and the factories that build the parts."""

    # Run folder: config.yaml, metrics.jsonl, checkpoints/, replay/, videos/, plots/.
    logdir: str = MISSING
    # Seed of python, numpy, torch and the environments.
    seed: int = MISSING
    env: EnvConfig = field(default_factory=EnvConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    actor_critic: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
