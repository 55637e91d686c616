"""UniSD: self-distillation of causal language models without a stronger teacher."""

__version__ = "0.1.0"
