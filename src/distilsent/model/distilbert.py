"""DistilBERT encoder and sequence-classification head in plain PyTorch.

Parameter names equal the Hugging Face state dict (``distilbert.transformer.layer.0.attention.q_lin.weight``
...), so official checkpoints load strictly and what we save loads in ``transformers``. Shapes use
B = batch, T = tokens, D = dim, H = heads. The loss lives in the training code, not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DistilBertConfig

LAYER_NORM_EPS = 1e-12


def sinusoidal_positions(n_positions: int, dim: int) -> torch.Tensor:
    """The fixed position table of the original Transformer, used when ``sinusoidal_pos_embds`` is set."""
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]
    exponent = torch.tensor([2 * (j // 2) / dim for j in range(dim)], dtype=torch.float64)
    angles = position / torch.pow(10000.0, exponent)  # (n_positions, dim)
    table = torch.empty(n_positions, dim)
    table[:, 0::2] = torch.sin(angles[:, 0::2]).float()
    table[:, 1::2] = torch.cos(angles[:, 1::2]).float()
    return table


class Embeddings(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.dim, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.dim)
        self.LayerNorm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_embeddings.weight[: input_ids.shape[1]]  # (T, D)
        x = self.word_embeddings(input_ids) + positions  # (B, T, D)
        return self.dropout(self.LayerNorm(x))


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.attention_dropout
        self.q_lin = nn.Linear(config.dim, config.dim)
        self.k_lin = nn.Linear(config.dim, config.dim)
        self.v_lin = nn.Linear(config.dim, config.dim)
        self.out_lin = nn.Linear(config.dim, config.dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, dim = x.shape
        heads = (batch, length, self.n_heads, dim // self.n_heads)
        q = self.q_lin(x).view(heads).transpose(1, 2)  # (B, H, T, D/H)
        k = self.k_lin(x).view(heads).transpose(1, 2)  # (B, H, T, D/H)
        v = self.v_lin(x).view(heads).transpose(1, 2)  # (B, H, T, D/H)
        dropout = self.dropout if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, H, T, D/H)
        return self.out_lin(context.transpose(1, 2).reshape(batch, length, dim))  # (B, T, D)


class FFN(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.lin1 = nn.Linear(config.dim, config.hidden_dim)
        self.lin2 = nn.Linear(config.hidden_dim, config.dim)
        self.activation = nn.GELU() if config.activation == "gelu" else nn.ReLU()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.lin2(self.activation(self.lin1(x))))  # (B, T, D)


class TransformerBlock(nn.Module):
    """Post-norm block: attention, add & norm, feed-forward, add & norm."""

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.attention = MultiHeadSelfAttention(config)
        self.sa_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.ffn = FFN(config)
        self.output_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.sa_layer_norm(self.attention(x, mask) + x)  # (B, T, D)
        return self.output_layer_norm(self.ffn(x) + x)  # (B, T, D)


class Transformer(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))


class DistilBertModel(nn.Module):
    """The encoder: returns the hidden states of every layer, embeddings first (n_layers + 1 tensors)."""

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.transformer = Transformer(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # Keys that are padding get no attention; a batch without padding skips the mask entirely.
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        hidden_states = [self.embeddings(input_ids)]  # (B, T, D) each
        for block in self.transformer.layer:
            hidden_states.append(block(hidden_states[-1], mask))
        return hidden_states


class DistilBertForSequenceClassification(nn.Module):
    """Encoder + ``pre_classifier`` -> ReLU -> dropout -> ``classifier`` on the first token."""

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.config = config
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.dropout = nn.Dropout(config.seq_classif_dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of the reference implementation: N(0, initializer_range), zero biases."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.distilbert.embeddings.word_embeddings.weight[self.config.pad_token_id].zero_()
            if self.config.sinusoidal_pos_embds:
                self.distilbert.embeddings.position_embeddings.weight.copy_(
                    sinusoidal_positions(self.config.max_position_embeddings, self.config.dim)
                )

    def classify(self, hidden_state: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.pre_classifier(hidden_state[:, 0]))  # (B, D)
        return self.classifier(self.dropout(x))  # (B, labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, labels)."""
        return self.classify(self.distilbert(input_ids, attention_mask)[-1])

    def forward_with_hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, labels) and the hidden state (B, T, D) of every layer, embeddings first."""
        hidden_states = self.distilbert(input_ids, attention_mask)
        return self.classify(hidden_states[-1]), hidden_states

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = [
    "DistilBertForSequenceClassification",
    "DistilBertModel",
    "sinusoidal_positions",
]

