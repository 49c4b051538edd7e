"""Analog ``nn.MultiheadAttention``: the input and output projections on the chip, the attention digital.

``nn.MultiheadAttention`` reads its projection weights itself, inside one functional kernel, so its
``out_proj`` module never runs; converting that module alone would silently leave the projection digital.
This layer replaces the whole module: the packed q/k/v projection is one analog Linear (a 3E-column array)
and the output projection another, and the softmax attention between them runs in the digital periphery,
as on compute-in-memory chips (whose arrays hold weights, not activations). Self-attention reads the
q/k/v array once; cross-attention reads it once per distinct input and keeps the columns it needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.schema import ChipConfig
from .linear import AnalogLinear
from .registry import Unsupported, register


def _linear(weight: nn.Parameter, bias: nn.Parameter | None) -> nn.Linear:
    """An nn.Linear shell around existing Parameters (no new weights allocated)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight, lin.bias = weight, bias  # type: ignore[assignment]
    return lin


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


@register(nn.MultiheadAttention)
class AnalogMultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` (same forward arguments and outputs) with analog projections
    ``in_proj`` (E -> 3E) and ``out_proj`` (E -> E)."""

    def __init__(self, mha: nn.MultiheadAttention, config: ChipConfig, name: str) -> None:
        if not mha._qkv_same_embed_dim:
            raise Unsupported("kdim/vdim other than embed_dim are not modelled yet: it runs digitally")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise Unsupported("add_bias_kv / add_zero_attn are not modelled: it runs digitally")
        super().__init__()
        self.embed_dim, self.num_heads, self.batch_first = mha.embed_dim, mha.num_heads, mha.batch_first
        self.head_dim, self.dropout = mha.head_dim, mha.dropout
        assert mha.in_proj_weight is not None
        self.in_proj = AnalogLinear(_linear(mha.in_proj_weight, mha.in_proj_bias), config, f"{name}.in_proj")
        self.out_proj = AnalogLinear(mha.out_proj, config, f"{name}.out_proj")

    # what code written for nn.MultiheadAttention reads (nn.TransformerEncoderLayer's fast-path checks).
    # False keeps that fused fast path, which reads the projection weights itself, off even when the
    # converted net is called directly under inference_mode, outside the model's passes (it crashed there)
    _qkv_same_embed_dim = False
    bias_k = bias_v = None
    add_zero_attn = False

    @property
    def in_proj_weight(self) -> Tensor:
        return self.in_proj.weight

    @property
    def in_proj_bias(self) -> Tensor | None:
        return self.in_proj.bias

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e = self.embed_dim
        if query is key and key is value:  # self-attention: one read of the q/k/v array
            return self.in_proj(query).split(e, dim=-1)  # type: ignore[return-value]
        q = self.in_proj(query)[..., :e]
        k = self.in_proj(key)
        v = k if value is key else self.in_proj(value)  # key and value the same tensor: one read
        return q, k[..., e:2 * e], v[..., 2 * e:]

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1 if not self.batch_first else 0) for t in (query, key, value))
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, lq, _ = query.shape
        s, h, d = key.shape[1], self.num_heads, self.head_dim
        q, k, v = (t.reshape(n, -1, h, d).transpose(1, 2) for t in self._project(query, key, value))
        mask = _additive(attn_mask, q.dtype)
        if mask is not None:
            mask = mask.view(1, 1, lq, s) if mask.dim() == 2 else mask.view(n, h, lq, s)
        elif is_causal:
            mask = _additive(torch.ones(lq, s, dtype=torch.bool, device=q.device).triu(1), q.dtype)
        pad = _additive(key_padding_mask, q.dtype)
        if pad is not None:
            pad = pad.view(n, 1, 1, s)
            mask = pad if mask is None else mask + pad
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            score = q @ k.transpose(-2, -1) / math.sqrt(d)
            attn = torch.softmax(score if mask is None else score + mask, dim=-1)
            weights = attn.mean(1) if average_attn_weights else attn
            out = F.dropout(attn, p, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1 if not self.batch_first else 0)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights
