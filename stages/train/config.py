"""Configuration of the train stage: one on-policy self-distillation loop and its five mechanisms.

Every mechanism is a weighted term or a weight (REFERENCE §2): the multi-teacher agreement weights,
the teacher kind (frozen / EMA / current), the token contrastive hinge, feature matching and
divergence clipping. A method is a preset that changes a few of these fields (`configs/methods/`);
there is no mode switch. `__post_init__` rejects incoherent combinations with one clear line before
any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

NEGATIVE_SOURCES = ("llm", "wordnet", "corrupt")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter on the student (reference: r 64, α 128, dropout 0.05, all linear projections)."""

    enabled: bool = True
    """Train a LoRA adapter (teachers are views of the same base weights); false = full fine-tuning
    with an explicit teacher copy."""
    r: int = 64
    """Adapter rank."""
    alpha: int = 128
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter input during student forwards (teachers run without dropout)."""
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    """Module names that receive an adapter."""

    def __post_init__(self) -> None:
        _check(self.r >= 1, f"lora.r must be >= 1, got {self.r}")
        _check(self.alpha > 0, f"lora.alpha must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"lora.dropout must be in [0, 1), got {self.dropout}")
        _check(not self.enabled or bool(self.target_modules), "lora.target_modules: empty")


@dataclass(frozen=True)
class RolloutSettings:
    """On-policy sampling of the student on its plain prompt (chat template applied)."""

    max_new_tokens: int = 256
    """Completion limit in tokens."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_prompt_tokens: int = 2048
    """Limit for every prompt the loop tokenizes: student prompt, privileged, auxiliary and negative views."""
    on_long_prompt: Literal["error", "truncate_left"] = "error"
    """Over-long prompt: stop with an error, or cut from the left and count it (`train/prompt/truncated`)."""
    mask_truncated: bool = False
    """Drop from the loss every completion that hit max_new_tokens without EOS."""
    log_samples: int = 2
    """Completions written to the `rollouts` table at every log step."""
    policy: Literal["student", "start"] = "student"
    """Which weights sample: the student (on-policy), or the starting model θ0 (SSD: the model's own
    samples before training; LoRA adapter disabled, or the frozen copy under full fine-tuning)."""
    on_policy_fraction: float = 1.0
    """GKD's λ: each example of each step uses a sampled completion with this probability (seeded),
    otherwise its gold reference (off-policy, from the dataset)."""
    backend: Literal["hf", "vllm"] = "hf"
    """Rollout engine: hf = the in-process continuous-batching engine; vllm = a vLLM engine on the
    same GPU that loads the student's LoRA adapter afresh every step (needs LoRA and vllm installed)."""
    vllm_gpu_memory: float = 0.4
    """backend=vllm: fraction of GPU memory vLLM may take (the trainer needs the rest)."""

    def __post_init__(self) -> None:
        _check(self.max_new_tokens >= 1, f"rollout.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.temperature >= 0.0, f"rollout.temperature must be >= 0, got {self.temperature}")
        _check(0.0 < self.top_p <= 1.0, f"rollout.top_p must be in (0, 1], got {self.top_p}")
        _check(self.max_prompt_tokens >= 1, "rollout.max_prompt_tokens must be >= 1")
        _check(self.log_samples >= 0, "rollout.log_samples must be >= 0")
        _check(0.0 <= self.on_policy_fraction <= 1.0,
               f"rollout.on_policy_fraction must be in [0, 1], got {self.on_policy_fraction}")
        _check(0.0 < self.vllm_gpu_memory < 1.0, f"rollout.vllm_gpu_memory must be in (0, 1), got {self.vllm_gpu_memory}")


@dataclass(frozen=True)
class DivergenceSettings:
    """Per-token divergence between student (on x) and teacher (on c), over completion tokens only."""

    kind: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    """forward_kl = KL(p_T‖p_S) (reference default), reverse_kl = KL(p_S‖p_T), jsd = generalised JSD."""
    beta: float | None = None
    """jsd only: mixture weight of the teacher, M = (1−β)·p_S + β·p_T (None = 0.5)."""
    temperature: float = 0.7
    """τ dividing student, teacher and auxiliary-view logits (the reference's sampling temperature)."""
    weight: float = 1.0
    """Weight of the divergence term (0 with sft.weight > 0 gives plain SFT)."""
    chunk_size: int = 64
    """Tokens per LM-head chunk: loss memory is O(chunk_size × vocab), never O(B × T × vocab)."""
    topk: int | None = None
    """Approximate with the teacher's top-k tokens plus one tail bin (None = exact full vocabulary)."""

    def __post_init__(self) -> None:
        _check(self.beta is None or self.kind == "jsd", f"divergence.beta is only used by kind=jsd (kind={self.kind})")
        _check(self.beta is None or 0.0 <= self.beta <= 1.0, f"divergence.beta must be in [0, 1], got {self.beta}")
        _check(self.temperature > 0.0, f"divergence.temperature must be > 0, got {self.temperature}")
        _check(self.weight >= 0.0, f"divergence.weight must be >= 0, got {self.weight}")
        _check(self.chunk_size >= 1, f"divergence.chunk_size must be >= 1, got {self.chunk_size}")
        _check(self.topk is None or self.topk >= 1, f"divergence.topk must be >= 1, got {self.topk}")

    @property
    def mix(self) -> float:
        """The JSD β actually used (ignored by the KL kinds)."""
        return 0.5 if self.beta is None else self.beta


@dataclass(frozen=True)
class TeacherSettings:
    """Which weights the teacher views run with: θ0 (frozen), an EMA of the student, or the student."""

    kind: Literal["frozen", "ema", "current"] = "frozen"
    """frozen = the starting model (LoRA: adapter disabled); ema = θ̄ ← β·θ̄ + (1−β)·θ; current = the
    student's own weights without gradient."""
    ema_beta: float | None = None
    """kind=ema: decay β (None = 0.9, the reference default)."""
    ema_every: int | None = None
    """kind=ema: optimizer steps between EMA updates (None = 10, the reference default)."""

    def __post_init__(self) -> None:
        set_ema = self.ema_beta is not None or self.ema_every is not None
        _check(not set_ema or self.kind == "ema", f"teacher.ema_beta/ema_every need teacher.kind=ema (kind={self.kind})")
        _check(self.ema_beta is None or 0.0 <= self.ema_beta < 1.0, f"teacher.ema_beta must be in [0, 1), got {self.ema_beta}")
        _check(self.ema_every is None or self.ema_every >= 1, f"teacher.ema_every must be >= 1, got {self.ema_every}")

    @property
    def beta(self) -> float:
        return 0.9 if self.ema_beta is None else self.ema_beta

    @property
    def every(self) -> int:
        return 10 if self.ema_every is None else self.ema_every


@dataclass(frozen=True)
class AgreementSettings:
    """Multi-teacher agreement weights from K auxiliary views (REFERENCE §2.1, fixes §8.2 and §8.4)."""

    level: Literal["none", "token", "sequence"] = "none"
    """none = every token weighs 1; token: w_t = max(1/(1+γ·d̂_t), floor); sequence: w = exp(−γ·D)."""
    strategy: Literal["random", "retrieval", "induction"] = "random"
    """Which auxiliary views to read from the contexts table (its `strategy` column must match)."""
    num_views: int = 3
    """K, auxiliary views per example (aux_0 … aux_{K−1})."""
    gamma: float = 1.0
    """Sharpness γ (reference CLI default 1.0; the orchestrator's 0.001 leaves every weight ≈ 1)."""
    stat: Literal["var", "range"] = "var"
    """Disagreement across views of the sampled token's log-prob: variance or max − min."""
    quantile: float = 0.95
    """token: d is divided by this quantile of d over the optimizer step's loss tokens."""
    cap: float = 10.0
    """token: cap on the normalised disagreement d̂."""
    floor: float = 0.01
    """token: smallest weight."""
    normalize: Literal["weight_sum", "count"] = "weight_sum"
    """Denominator of the weighted divergence term. weight_sum (default, the reference's normaliser):
    Σ w·ℓ / Σ w over the tokens (or, with reduction=sequence, within each sequence for token weights
    and across the step's sequences for sequence weights), so the weights only move the loss between
    tokens and the term keeps the scale of the unweighted one; a comparison with sd at the same lr then
    measures the reweighting, not the ~15% smaller step that a mean weight of ≈0.85 would give.
    count: Σ w·ℓ / N, a weight w < 1 is a real reduction, so uniformly low agreement shrinks the step."""

    def __post_init__(self) -> None:
        _check(self.level == "none" or self.num_views >= 1,
               f"agreement.level={self.level} needs agreement.num_views >= 1, got {self.num_views}")
        _check(self.gamma >= 0.0, f"agreement.gamma must be >= 0, got {self.gamma}")
        _check(0.0 < self.quantile <= 1.0, f"agreement.quantile must be in (0, 1], got {self.quantile}")
        _check(self.cap > 0.0, f"agreement.cap must be > 0, got {self.cap}")
        _check(0.0 < self.floor <= 1.0, f"agreement.floor must be in (0, 1], got {self.floor}")


@dataclass(frozen=True)
class ContrastiveSettings:
    """Token hinge max(0, μ + |s−g| − |s−n|) against a bad teacher on a negative view (REFERENCE §2.3)."""

    weight: float = 0.0
    """λ_c, weight of the contrastive term (0 = off)."""
    margin: float = 0.5
    """μ, nats by which the student must sit closer to the good teacher than to the bad one."""
    sources: tuple[Literal["llm", "wordnet", "corrupt"], ...] = ()
    """Negatives whose `source` may serve as bad teacher (one drawn per example and step)."""

    def __post_init__(self) -> None:
        _check(self.weight >= 0.0, f"contrastive.weight must be >= 0, got {self.weight}")
        _check(self.margin >= 0.0, f"contrastive.margin must be >= 0, got {self.margin}")
        _check(self.weight == 0.0 or bool(self.sources),
               "contrastive.weight > 0 needs contrastive.sources (which negatives: llm, wordnet, corrupt)")
        _check(self.weight > 0.0 or not self.sources, "contrastive.sources set but contrastive.weight is 0")


@dataclass(frozen=True)
class FeatureSettings:
    """Masked MSE between student and teacher final hidden states (REFERENCE §2.4)."""

    mode: Literal["none", "repr", "joint"] = "none"
    """none = off; repr = the feature term replaces the divergence; joint = added to it."""
    weight: float = 0.0
    """λ_f, weight of the feature term."""

    def __post_init__(self) -> None:
        _check(self.weight >= 0.0, f"features.weight must be >= 0, got {self.weight}")
        _check(self.mode != "none" or self.weight == 0.0, "features.weight > 0 needs features.mode repr or joint")
        _check(self.mode == "none" or self.weight > 0.0, f"features.mode={self.mode} needs features.weight > 0")


@dataclass(frozen=True)
class ClipSettings:
    """Per-token divergence cap after the vocabulary sum, before agreement weighting (REFERENCE §2.5)."""

    max_value: float | None = None
    """Fixed cap κ (reference clip mode: 10)."""
    quantile: float | None = None
    """Cap at this quantile of the per-token divergences of the whole optimizer step (every
    micro-batch of this process; under DDP of every process), detached. κ and the set of clipped
    tokens come from one extra no-grad student pass (dropout off) over the step's micro-batches
    before the training passes, so splitting the step into micro-batches does not change them."""

    def __post_init__(self) -> None:
        _check(self.max_value is None or self.quantile is None, "clip.max_value and clip.quantile are exclusive")
        _check(self.max_value is None or self.max_value > 0.0, f"clip.max_value must be > 0, got {self.max_value}")
        _check(self.quantile is None or 0.0 < self.quantile <= 1.0, f"clip.quantile must be in (0, 1], got {self.quantile}")


@dataclass(frozen=True)
class SFTSettings:
    """Cross-entropy under the plain prompt, on gold references or on the sampled completions (baselines)."""

    weight: float = 0.0
    """Weight of the cross-entropy term."""
    target: Literal["gold", "rollout"] = "gold"
    """gold = the dataset's reference with its rationale (SFT); rollout = the step's sampled
    completions (SSD: fine-tune on the model's own samples)."""

    def __post_init__(self) -> None:
        _check(self.weight >= 0.0, f"sft.weight must be >= 0, got {self.weight}")


@dataclass(frozen=True)
class TrainConfig:
    """One explicit on-policy self-distillation loop; methods are presets over these fields."""

    steps: int = 100
    """Optimizer steps (the data is reshuffled for every epoch it takes)."""
    batch_size: int = 8
    """Prompts per optimizer step, over all processes (rollouts are generated once per step)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; batch_size must be divisible by grad_accum × processes."""
    lr: float = 2e-5
    """Peak learning rate of AdamW (reference default)."""
    warmup_ratio: float = 0.1
    """Fraction of steps of linear warmup before the cosine decay to 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clipping (None = off)."""
    seed: int = 0
    """Seeds the data order, rollouts, negative draws and adapter initialisation."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast for the forwards (accelerate); master weights stay float32."""
    score_precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Precision of the no-grad decoder passes (teacher, auxiliary and negative views, θ0): auto =
    bfloat16 where the device computes it natively (CUDA with bf16, CPUs with AMX or AVX512-BF16),
    else float32. Their hidden states return to float32 before the LM head, so log-probs and
    divergences are float32; the student's forward and backward follow mixed_precision."""
    score_batch_tokens: int = 8192
    """Padded-token budget of one no-grad pass: the rows of a view are sorted by length and run in
    groups within this budget, so short rows do not pay for the longest row's padding."""
    gradient_checkpointing: bool = False
    """Recompute activations in the student's backward (non-reentrant) to save memory on large models."""
    reduction: Literal["token", "sequence"] = "token"
    """How the divergence, contrastive and feature terms average over tokens. token (default): over
    the optimizer step's loss tokens, every token weighing the same, as the cross-entropy term and
    the GKD/TRL baselines do; a long completion carries proportionally more of the step. sequence
    (the reference): each sequence's tokens are averaged first, then the step's sequences, so a
    token of a short completion weighs more. Both are exact under gradient accumulation."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """The trained adapter (or full fine-tuning)."""
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    """On-policy sampling."""
    divergence: DivergenceSettings = field(default_factory=DivergenceSettings)
    """The distillation term."""
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    """Teacher weights (frozen / EMA / current)."""
    agreement: AgreementSettings = field(default_factory=AgreementSettings)
    """Multi-teacher agreement weights."""
    contrastive: ContrastiveSettings = field(default_factory=ContrastiveSettings)
    """Token contrastive term."""
    features: FeatureSettings = field(default_factory=FeatureSettings)
    """Feature matching term."""
    clip: ClipSettings = field(default_factory=ClipSettings)
    """Divergence clipping."""
    sft: SFTSettings = field(default_factory=SFTSettings)
    """Cross-entropy on gold references."""
    checkpoint_every: int = 50
    """Steps between resumable checkpoints (the last step is always saved)."""
    log_every: int = 10
    """Steps between log lines, rollout samples and the KL-to-start estimate (one extra forward of
    θ0 on [x; y]); the last step always logs. Loss terms are recorded at every step."""
    datasets: tuple[str, ...] = ()
    """Dataset names to train on (empty = every dataset with a train split)."""
    max_train_examples: int | None = None
    """Keep at most this many train examples per dataset (first by id)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "score_batch_tokens"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(self.batch_size % self.grad_accum == 0,
               f"batch_size={self.batch_size} must be divisible by grad_accum={self.grad_accum}")
        _check(self.lr > 0.0, f"lr must be > 0, got {self.lr}")
        _check(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(self.weight_decay >= 0.0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.max_grad_norm is None or self.max_grad_norm > 0.0, "max_grad_norm must be > 0 or null")
        _check(self.max_train_examples is None or self.max_train_examples >= 1, "max_train_examples must be >= 1")
        _check(self.divergence_weight + self.contrastive.weight + self.features.weight + self.sft.weight > 0.0,
               "every loss term has weight 0 (divergence, contrastive, features, sft)")
        no_div = self.divergence_weight == 0.0
        _check(not no_div or self.agreement.level == "none",
               "agreement weights scale the divergence term, whose weight is 0 (divergence.weight or features.mode=repr)")
        _check(not no_div or (self.clip.max_value is None and self.clip.quantile is None),
               "clip caps the divergence term, whose weight is 0 (divergence.weight or features.mode=repr)")
        _check(self.rollout.on_policy_fraction == 1.0 or self.needs_teacher,
               "rollout.on_policy_fraction < 1 mixes gold sequences into a distillation term; no such term is on")
        _check(self.rollout.backend != "vllm" or self.lora.enabled,
               "rollout.backend=vllm loads the student as a LoRA adapter; it needs lora.enabled=true")
        _check(self.rollout.policy != "start" or self.lora.enabled or self.teacher.kind == "frozen",
               "rollout.policy=start under full fine-tuning needs the frozen copy (teacher.kind=frozen)")
        _check(self.rollout.policy == "student" or self.rollout.on_policy_fraction == 1.0,
               "rollout.policy=start with on_policy_fraction < 1: choose one source of off-policy sequences")

    @property
    def divergence_weight(self) -> float:
        """The divergence term's weight in the loss: features.mode=repr replaces it (weight 0)."""
        return 0.0 if self.features.mode == "repr" else self.divergence.weight

    @property
    def on_policy(self) -> bool:
        """Whether any term reads sampled completions (otherwise no rollouts are generated)."""
        return (self.divergence_weight + self.contrastive.weight + self.features.weight) > 0.0 or self.self_training

    @property
    def self_training(self) -> bool:
        """Whether the cross-entropy term trains on the sampled completions (SSD)."""
        return self.sft.weight > 0.0 and self.sft.target == "rollout"

    @property
    def needs_teacher(self) -> bool:
        """Whether any term reads a teacher pass (divergence, contrastive, features)."""
        return (self.divergence_weight + self.contrastive.weight + self.features.weight) > 0.0
