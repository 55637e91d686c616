"""Pure torch math for self-distillation: tensors in, `(value, metrics)` out, no configs, no I/O.

Divergences (`divergence`, chunked over the LM head in `chunked`), sampled-token log-probs and
cross-entropy (`logprobs`), agreement weights and their weighted mean (`agreement`), clipping,
contrastive hinge, feature matching, retention metrics and the weighted sum of terms (`combined`).
"""

from objectives.agreement import sequence_agreement_weights, token_agreement_weights, weighted_token_mean
from objectives.clipping import clip_divergence
from objectives.combined import combine
from objectives.contrastive import token_contrastive
from objectives.divergence import (
    chunked_token_divergence,
    divergence_from_logps,
    token_divergence,
    topk_token_divergence,
)
from objectives.features import feature_matching
from objectives.logprobs import chunked_cross_entropy, chunked_gather_logps, cross_entropy, gather_logps
from objectives.masking import masked_mean, masked_quantile
from objectives.retention import k3_kl, perplexity, sequence_logprob, token_jsd

__all__ = [
    "chunked_cross_entropy",
    "chunked_gather_logps",
    "chunked_token_divergence",
    "clip_divergence",
    "combine",
    "cross_entropy",
    "divergence_from_logps",
    "feature_matching",
    "gather_logps",
    "k3_kl",
    "masked_mean",
    "masked_quantile",
    "perplexity",
    "sequence_agreement_weights",
    "sequence_logprob",
    "token_agreement_weights",
    "token_contrastive",
    "token_divergence",
    "token_jsd",
    "topk_token_divergence",
    "weighted_token_mean",
]
