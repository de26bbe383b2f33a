"""Which tokens of a batch run dense and which sparse, as flat indices for gathering and re-ordering.

SparseLoRA computes the tokens whose loss is trained (a decoder's output tokens, an encoder's first
token) with every channel, in the FFN and in attention, and only the context tokens sparse.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from sparselora.sparse.settings import DenseSpan


@dataclass(frozen=True)
class TokenSplit:
    """Output and context positions of a batch as flat indices, found once per step and only if needed.

    Every sparse layer gathers and re-orders tokens with these; boolean masks would instead make
    each layer wait for the GPU to count the selected tokens (a host sync per layer, forward and
    backward). Dense steps (warm-up, cool-down, evaluation) never compute them.
    """

    mask: torch.Tensor  # (batch, seq): True where the position runs dense (its next token is a trained label)

    @classmethod
    def output_tokens(cls, labels: torch.Tensor, span: DenseSpan = "tokens") -> TokenSplit:
        """Decoders: position t is an output token when labels[t + 1] is trained (the causal LM shift).

        ``batch_span`` makes every row dense from the batch's first output position to its last.
        """
        mask = torch.zeros_like(labels, dtype=torch.bool)
        mask[:, :-1] = labels[:, 1:] != -100
        if span == "batch_span":
            positions = mask.any(0).nonzero().squeeze(1)
            if positions.numel():
                mask[:, int(positions[0]) : int(positions[-1]) + 1] = True
        return cls(mask)

    @classmethod
    def first_token(cls, batch: int, seq: int, device: torch.device) -> TokenSplit:
        """Encoders: the first token ([CLS], the one the classification head reads) dense."""
        mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
        mask[:, 0] = True
        return cls(mask)

    @cached_property
    def dense(self) -> torch.Tensor:
        """Flat positions computed dense (output tokens)."""
        return self.mask.flatten().nonzero().squeeze(1)

    @cached_property
    def sparse(self) -> torch.Tensor:
        """Flat positions computed sparse (context tokens)."""
        return (~self.mask.flatten()).nonzero().squeeze(1)

    @cached_property
    def inverse(self) -> torch.Tensor:
        """``cat([dense, sparse])[inverse]`` restores the original token order."""
        return torch.cat([self.dense, self.sparse]).argsort()

    def join(self, dense_part: torch.Tensor, sparse_part: torch.Tensor) -> torch.Tensor:
        """The rows of both parts back in token order, as one (tokens, ...) tensor of the dense part's dtype."""
        return torch.cat([dense_part, sparse_part.to(dense_part.dtype)]).index_select(0, self.inverse)
