"""LoRA: low-rank adapters on the encoder's linear layers, trained with the head, merged into a plain checkpoint.

Each chosen ``nn.Linear`` (out x in) keeps its weight W frozen and gains ``lora_A`` (r x in) and ``lora_B``
(out x r); it computes ``W x + b + (alpha / r) B A x``. ``B`` starts at zero, so training starts from the
base model exactly. The classification head (``pre_classifier`` and ``classifier``) is trained in full, as
a new task needs a new head. Merging folds ``(alpha / r) B A`` into W and puts the original ``nn.Linear``
modules back, so a merged model has the parameter names of the base and saves as an ordinary checkpoint.

Our own ~100 lines rather than ``peft``: peft depends on (and imports) ``transformers``, which the library
never imports, and it wraps the model in its own class; what our plain-PyTorch model needs is only this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InputError

# The projections of every transformer block: attention query/key/value/output and the two FFN layers.
TARGETS = ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2")
HEAD = ("pre_classifier", "classifier")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``rank`` update scaled by ``alpha / rank``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        base.bias.requires_grad_(False)
        self.rank = rank
        self.scaling = alpha / rank
        # The initialisation of the LoRA paper and peft: A as nn.Linear's default, B zero (no change at step 0).
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.lora_A.T @ self.lora_B.T  # (..., out), through the rank-r bottleneck
        return self.base(x) + self.scaling * update

    def delta(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)  # (out, in)

    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight."""
        linear = nn.Linear(self.base.in_features, self.base.out_features)
        with torch.no_grad():
            linear.weight.copy_(self.base.weight + self.delta())
            linear.bias.copy_(self.base.bias)
        return linear


def _check(rank: int, targets: Sequence[str]) -> None:
    if rank < 1:
        raise InputError(f"the LoRA rank must be a positive integer, got {rank}")
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        raise InputError(f"LoRA targets must be among {', '.join(TARGETS)}; got {', '.join(targets) or 'none'}")


def add_lora(
    model, rank: int, alpha: float | None = None, targets: Sequence[str] = TARGETS, dropout: float = 0.0
) -> int:
    """Freeze ``model`` (a ``DistilBertForSequenceClassification``), wrap the ``targets`` of every block in
    :class:`LoRALinear` and make the head trainable, in place. ``alpha`` defaults to ``2 * rank``.
    Returns the number of trainable parameters."""
    targets = tuple(targets)
    _check(rank, targets)
    alpha = float(2 * rank if alpha is None else alpha)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for block in model.distilbert.transformer.layer:
        for parent in (block.attention, block.ffn):
            for name in targets:
                layer = getattr(parent, name, None)
                if isinstance(layer, nn.Linear):
                    setattr(parent, name, LoRALinear(layer, rank, alpha, dropout))
    for name in HEAD:
        getattr(model, name).requires_grad_(True)
    return trainable_parameters(model)


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model):
    """Fold every adapter into its layer and restore plain ``nn.Linear`` modules, in place; every parameter
    is trainable again. A model without adapters is returned unchanged."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def has_lora(model) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def merged_copy(model):
    """A plain model with the adapters folded in, to save while training goes on; ``model`` itself when it
    has none. Only the adapted weights are new tensors: everything else is shared with ``model``, so saving
    a LoRA run costs about one copy of those weights, not a copy of the whole model."""
    if not has_lora(model):
        return model
    from .distilbert import DistilBertForSequenceClassification

    state = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, LoRALinear):
            with torch.no_grad():
                state[prefix + "weight"] = module.base.weight + module.delta()
            state[prefix + "bias"] = module.base.bias
        elif not any(isinstance(m, LoRALinear) for m in _parents(model, name)):
            state.update({prefix + k: v for k, v in module.named_parameters(recurse=False)})
            state.update({prefix + k: v for k, v in module.named_buffers(recurse=False)})
    with torch.device("meta"):
        plain = DistilBertForSequenceClassification(model.config)
    plain.load_state_dict({k: v.detach() for k, v in state.items()}, strict=True, assign=True)
    return plain.train(model.training)


def _parents(model, name: str):
    """The modules above ``name`` (a dotted module path), outermost first."""
    parts = name.split(".") if name else []
    module = model
    for part in parts[:-1]:
        module = getattr(module, part)
        yield module


__all__ = ["TARGETS", "LoRALinear", "add_lora", "has_lora", "merge_lora", "merged_copy", "trainable_parameters"]
