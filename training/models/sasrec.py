"""SASRec: a causal Transformer over the item sequence, predicting the next item.

The Transformer is Hugging Face ``GPT2Model`` configured from scratch (causal,
pre-LayerNorm, learned positions; its token table is unused: we feed
``inputs_embeds``). Items are represented by ``ItemEmbedding``: a learned ID vector
plus a projection of the item's MiniLM text embedding, so an item with text but no
interactions still has a representation. The same fused table embeds the input and
scores the output (weight tying), over the full catalog (softmax cross-entropy), or,
for catalogs too large for that, against mixed sampled negatives (``SampledSoftmax``;
which one a run uses is ``training.trainer.choose_loss``, ``loss`` in the YAML).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model

from training.vocab import PAD


class ItemEmbedding(nn.Module):
    """Item table = ID embedding (+ Linear(text embedding) when text is given); row 0 is padding (zeros)."""

    def __init__(self, n_vocab: int, hidden: int, text_embeddings: torch.Tensor | None = None, text_dim: int = 0):
        super().__init__()
        self.ids = nn.Embedding(n_vocab, hidden, padding_idx=PAD)
        nn.init.normal_(self.ids.weight, std=0.02)
        with torch.no_grad():
            self.ids.weight[PAD].zero_()
        self.text_dim = text_dim
        if text_dim:
            table = text_embeddings if text_embeddings is not None else torch.zeros(n_vocab, text_dim)
            if tuple(table.shape) != (n_vocab, text_dim):
                raise ValueError(f"text embeddings have shape {tuple(table.shape)}, expected {(n_vocab, text_dim)}")
            self.register_buffer("text", torch.as_tensor(table, dtype=torch.float32).clone())
            self.text_proj = nn.Linear(text_dim, hidden)
            self.text_norm = nn.LayerNorm(hidden)

    def project_text(self, text: torch.Tensor) -> torch.Tensor:
        return self.text_norm(self.text_proj(text))

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """``table()[indices]`` without computing the rows of the rest of the catalog."""
        rows = self.ids(indices)
        if self.text_dim:
            rows = rows + self.project_text(self.text[indices])
        return rows * (indices != PAD).unsqueeze(-1).to(rows.dtype)

    def table(self) -> torch.Tensor:
        """(n_vocab, hidden) item representations; the padding row is zero."""
        if not self.text_dim:  # the ID table's padding row is zero already (padding_idx): no copy per call
            return self.ids.weight
        table = self.ids.weight + self.project_text(self.text)
        mask = torch.ones(table.shape[0], 1, device=table.device, dtype=table.dtype)
        mask[PAD] = 0
        return table * mask


@dataclass(frozen=True)
class SampledSoftmax:
    """Cross-entropy against shared sampled negatives with the logQ correction, for catalogs too
    large to score in full.

    Each batch draws ``popular`` items from the training-target distribution (what in-batch
    negatives are: hard, popular items) and ``uniform`` items uniformly (the long tail
    in-batch negatives never show); every position's target is scored against all of them.
    This is mixed negative sampling (Yang et al., WWW 2020) in the sequential setting
    (SASRec with sampled cross-entropy and many negatives: Klenitskiy & Vasilev, RecSys 2023).
    Every drawn item's logit is lowered by the log of its expected count among the draws,
    ``log(popular * p_j + uniform / n_items)``: the sampled-softmax importance correction
    (Bengio & Senecal 2008; Jean et al., ACL 2015), the "logQ correction" of Yi et al.
    (RecSys 2019), without which popular items would be pushed down. The drawn part then
    estimates the sum of exp(score) over the rest of the catalog, and the target, counted
    once and uncorrected, completes the full softmax's denominator: with many draws the loss
    is the full softmax's (a test checks it). A drawn item equal to a position's target is
    masked for it ("accidental hit"). The cost per position is
    (popular + uniform) x hidden, whatever the catalog's size and the batch's width (in-batch
    negatives would grow with the batch: 6,400 positions of a wide batch have ~5,000 distinct
    targets at 100,000 items).
    """

    item_probability: torch.Tensor  # (n_vocab,) share of training targets per index (padding: 0)
    popular: int
    uniform: int

    @classmethod
    def mixed(cls, item_probability: torch.Tensor, num_negatives: int) -> "SampledSoftmax":
        """``num_negatives`` shared negatives, half by popularity, half uniform."""
        return cls(item_probability, num_negatives // 2, num_negatives - num_negatives // 2)

    def draw(self, device) -> torch.Tensor:
        popular = torch.multinomial(self.item_probability, self.popular, replacement=True) if self.popular else \
            torch.zeros(0, dtype=torch.long)
        uniform = torch.randint(1, len(self.item_probability), (self.uniform,))
        return torch.cat([popular, uniform]).to(device)

    def log_expected_counts(self, items: torch.Tensor) -> torch.Tensor:
        p = self.item_probability.to(items.device)[items]
        return torch.log(self.popular * p + self.uniform / (len(self.item_probability) - 1))


class SASRec(nn.Module):
    """Next-item model. ``config`` keys: n_vocab, hidden, layers, heads, inner, dropout,
    attn_dropout, max_len, text_dim (0 = ID only)."""

    def __init__(self, config: dict, text_embeddings: torch.Tensor | None = None):
        super().__init__()
        self.config = dict(config)
        hidden = config["hidden"]
        self.max_len = config["max_len"]
        self.items = ItemEmbedding(config["n_vocab"], hidden, text_embeddings, config.get("text_dim", 0))
        gpt = GPT2Config(
            vocab_size=1, n_positions=self.max_len, n_embd=hidden, n_layer=config["layers"], n_head=config["heads"],
            n_inner=config.get("inner", hidden * 4), activation_function="gelu",
            resid_pdrop=config["dropout"], embd_pdrop=config["dropout"], attn_pdrop=config.get("attn_dropout", config["dropout"]),
            use_cache=False, bos_token_id=None, eos_token_id=None,
        )
        gpt._attn_implementation = "sdpa"
        self.encoder = GPT2Model(gpt)
        self.scale = math.sqrt(hidden)

    def encode(self, items: torch.Tensor, positions: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) left-padded item indices -> (B, T, hidden) states; state t has seen items <= t."""
        embeds = (self.items.rows(items) if table is None else table[items]) * self.scale
        mask = (items != PAD).long()
        return self.encoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state

    def logits(self, states: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        scores = states @ table.T
        scores[..., PAD] = float("-inf")
        return scores

    def loss(self, items: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
             sampled: SampledSoftmax | None = None, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of the next item at every non-padded position (every prefix predicts its next item).

        ``sampled=None``: full softmax over the catalog; else the sampled softmax of
        ``SampledSoftmax`` (label smoothing then does not apply). ``reduction``: "mean" or
        "sum" over the positions.
        """
        keep = targets != PAD
        if sampled is not None:
            states = self.encode(items, positions)[keep]
            return self._sampled_loss(states, targets[keep], sampled, reduction)
        table = self.items.table()
        states = self.encode(items, positions, table)
        logits = self.logits(states[keep], table)
        return nn.functional.cross_entropy(logits.float(), targets[keep], label_smoothing=label_smoothing,
                                           reduction=reduction)

    def _sampled_loss(self, states: torch.Tensor, targets: torch.Tensor, sampled: SampledSoftmax,
                      reduction: str) -> torch.Tensor:
        drawn = sampled.draw(states.device)
        positive = (states * self.items.rows(targets)).sum(-1, keepdim=True).float()
        negative = (states @ self.items.rows(drawn).T).float()
        negative -= sampled.log_expected_counts(drawn)  # in place: the matmul keeps no output for its backward
        negative.masked_fill_(drawn.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))  # a drawn target is no negative
        logits = torch.cat([positive, negative], dim=1)
        return nn.functional.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=states.device),
                                           reduction=reduction)

    def score_last(self, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, n_vocab) scores of the next item after each sequence (padding column = -inf)."""
        table = self._scoring_table()
        return self.logits(self.encode(items, positions, table)[:, -1], table)

    def _scoring_table(self) -> torch.Tensor:
        """``items.table()``, kept between inference calls while the weights stay the same.

        With the text tower the table is a (n_vocab x 384) @ (384 x hidden) product: 2.5 GFLOP,
        ~40 ms, per call at 100,000 items, for every evaluation chunk or served request. The
        key is the parameters' version counters, which every in-place update (optimizer step,
        ``load_state_dict``) bumps; outside inference mode (training, ONNX export) nothing is kept.
        """
        if not self.items.text_dim or self.training or not torch.is_inference_mode_enabled():
            return self.items.table()
        key = tuple((id(t), t._version) for t in [*self.items.parameters(), *self.items.buffers()])
        cached = getattr(self, "_table_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, self.items.table())
            self._table_cache = cached
        return cached[1]
