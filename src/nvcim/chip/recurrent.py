"""Analog ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN``: the gate products on the chip, the gates digital.

PyTorch runs a recurrent layer as one fused kernel that reads its weights itself, so nothing of it could
run on the chip. This layer replaces it: each layer and direction holds an input array ``W_ih`` and a
recurrent array ``W_hh`` (analog Linear layers, biases in their periphery), and the gate nonlinearities
and the cell state run digitally, step by step. The input products of all steps are one call (each step
a position with its own read noise); the recurrent product is read once per step, each read with fresh
read noise. Forward arguments and outputs are those of the PyTorch module (no packed sequences).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.schema import ChipConfig
from ..errors import ShapeError
from .attention import _linear
from .linear import AnalogLinear
from .registry import Unsupported, register


class AnalogRecurrent(nn.Module):
    """Shared by the three kinds; ``mode`` is "LSTM", "GRU", "RNN_TANH" or "RNN_RELU"."""

    def __init__(self, rnn: nn.RNNBase, config: ChipConfig, name: str) -> None:
        if getattr(rnn, "proj_size", 0):
            raise Unsupported("LSTM proj_size is not modelled yet: it runs digitally")
        super().__init__()
        self.mode, self.hidden_size, self.num_layers = rnn.mode, rnn.hidden_size, rnn.num_layers
        self.batch_first, self.bidirectional, self.dropout = rnn.batch_first, rnn.bidirectional, rnn.dropout
        self.dirs = 2 if rnn.bidirectional else 1
        for layer in range(self.num_layers):
            for d in range(self.dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                for kind in ("ih", "hh"):
                    w, b = getattr(rnn, f"weight_{kind}{sfx}"), getattr(rnn, f"bias_{kind}{sfx}", None)
                    setattr(self, f"{kind}{sfx}", AnalogLinear(_linear(w, b), config, f"{name}.{kind}{sfx}"))

    def _cell(self, gi: Tensor, hh: nn.Module, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        gh = hh(h)
        if self.mode == "LSTM":
            i, f, g, o = (gi + gh).chunk(4, dim=-1)
            assert c is not None
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        if self.mode == "GRU":
            ir, iz, in_ = gi.chunk(3, dim=-1)
            hr, hz, hn = gh.chunk(3, dim=-1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(in_ + r * hn)
            return (1 - z) * n + z * h, None
        act = torch.tanh if self.mode == "RNN_TANH" else torch.relu
        return act(gi + gh), None

    def forward(self, x: Tensor, hx: Tensor | tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        if not isinstance(x, Tensor):
            raise ShapeError(f"analog {self.mode} takes a padded tensor, not {type(x).__name__} (packed "
                             "sequences are not supported)")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0 if self.batch_first else 1)
        if not self.batch_first:
            x = x.transpose(0, 1)  # (B, T, features)
        b, t = x.shape[:2]
        n_states = self.num_layers * self.dirs
        if hx is None:
            zeros = x.new_zeros(n_states, b, self.hidden_size)
            h0, c0 = zeros, (zeros if self.mode == "LSTM" else None)
        elif isinstance(hx, tuple):
            h0, c0 = hx
        else:
            h0, c0 = hx, None
        if unbatched:
            h0 = h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                gi = getattr(self, f"ih{sfx}")(x)  # (B, T, gates): every step's input product at once
                h = h0[layer * self.dirs + d]
                c = None if c0 is None else c0[layer * self.dirs + d]
                steps = range(t - 1, -1, -1) if d else range(t)
                seq: list[Tensor] = [x] * t  # placeholders, filled in step order
                for i in steps:
                    h, c = self._cell(gi[:, i], getattr(self, f"hh{sfx}"), h, c)
                    seq[i] = h
                outs.append(torch.stack(seq, dim=1))
                h_n.append(h)
                if c is not None:
                    c_n.append(c)
            x = torch.cat(outs, dim=-1) if self.dirs == 2 else outs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        out = x if self.batch_first else x.transpose(0, 1)
        hn = torch.stack(h_n)
        if unbatched:
            out, hn = out.squeeze(0 if self.batch_first else 1), hn.squeeze(1)
        if self.mode == "LSTM":
            cn = torch.stack(c_n)
            return out, (hn, cn.squeeze(1) if unbatched else cn)
        return out, hn


register(nn.LSTM)(AnalogRecurrent)
register(nn.GRU)(AnalogRecurrent)
register(nn.RNN)(AnalogRecurrent)
