"""``NextStep1``: one Qwen2.5 decoder over text ids and continuous image tokens, a text head and a
flow-matching image head (NextStep-1, arXiv 2508.10711).

Shape legend: batch = rows, seq = tokens of this call, kv = cached + this call's tokens, dim =
model width, vocab = text vocabulary (with the added specials), images = image tokens of a call
(placeholders, row-major), latent_dim = one image token (64).

Inputs (``embed``): ``embed_tokens`` everywhere; at every ``<|image_placeholder|>`` id the next
latent token through ``image_in_projector`` instead, in row-major order.

Backbone (``forward``): pre-norm ``DecoderLayer`` stack with 1D RoPE and the final RMSNorm. Positions
are 0, 1, ... over the padded sequence (upstream quirk: not derived from the mask; with caches they
continue from the cache length). Attention is causal over everything (image tokens too) and masks the
keys whose ``attention_mask`` is False (left padding); a padded query attends to itself only, so its
(unused) output is defined and the same with and without caches.

Outputs: text logits ``lm_head(hidden)`` (``embed_tokens`` when tied); image token j is predicted
from the hidden state at the position before it (the first from ``<|begin_of_image|>``) through
``condition`` = ``image_out_projector`` (plus the fixed 2D position embedding of j when
``use_gen_pos_embed``) into ``image_head``.

Parameter names are the official checkpoint's, without prefix: ``embed_tokens``, ``layers.N.*``,
``norm``, ``lm_head``, ``image_in_projector``, ``image_out_projector``, ``image_head.net.*`` (and the
``gen_pos_embed`` buffer when enabled).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.checks import check_tensor
from nxcore.head import IGNORE_INDEX
from nxcore.nn import KVCache, RMSNorm, forward_layers
from nxcore.typing import Bool, Float, Int, typecheck
from nxkernels.linear_cross_entropy import linear_cross_entropy
from nxrecipes.nextstep1.config import NextStep1Config
from nxrecipes.nextstep1.head import FlowMatchingHead

__all__ = ["NextStep1", "NextStep1Loss", "sincos_2d"]


@attrs.frozen
class NextStep1Loss:
    """``total = lm_loss_weight * text + image_loss_weight * image`` (fp32 scalars) and the numbers of
    text targets and image tokens that carried them."""

    total: Tensor
    text: Tensor
    image: Tensor
    text_tokens: int
    image_tokens: int


def sincos_2d(dim: int, grid: int) -> Float[Tensor, "positions dim"]:
    """MAE's fixed 2D sin-cos embedding [grid * grid, dim] (fp32, computed in fp64) of the raster
    positions k = row * grid + col: the first half encodes the column, the second the row, each as
    ``[sin(p w), cos(p w)]`` with w_i = 10000^(-i / (dim / 4))."""
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 for a 2D sin-cos embedding, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    k = torch.arange(grid * grid, dtype=torch.float64)

    def one_axis(p: Tensor) -> Tensor:
        out = p[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one_axis(k % grid), one_axis(torch.div(k, grid, rounding_mode="floor"))], 1).float()


class NextStep1(nn.Module):
    def __init__(self, config: NextStep1Config) -> None:
        super().__init__()
        if not isinstance(config, NextStep1Config):
            raise TypeError(f"config must be a NextStep1Config, got {type(config).__name__}")
        self.config = c = config
        dim = c.layer.dim
        self.embed_tokens = nn.Embedding(c.vocab_size, dim)
        self.rope = c.rope()
        self.layers = nn.ModuleList(c.layer.build(rope=self.rope) for _ in range(c.num_layers))
        self.norm = RMSNorm(dim, c.layer.norm_eps)
        self.lm_head = None if c.tie_word_embeddings else nn.Linear(dim, c.vocab_size, bias=False)
        self.image_in_projector = nn.Linear(c.latent_dim, dim)
        self.image_out_projector = nn.Linear(dim, dim)
        self.image_head: FlowMatchingHead = c.head.build()
        if c.use_gen_pos_embed:
            self.register_buffer("gen_pos_embed", sincos_2d(dim, c.gen_pos_grid)[None], persistent=True)
        else:
            self.gen_pos_embed = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Qwen2's init for the backbone, text head and projectors: N(0, init_std) weights, zero
        biases, unit norms. The image head keeps its own init (zero output layers)."""
        std = self.config.init_std
        head = set(self.image_head.modules())
        for module in self.modules():
            if module in head:
                continue
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()

    @property
    def dim(self) -> int:
        return self.config.layer.dim

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- inputs ---------------------------------------------------------------------------------

    @typecheck
    def embed(
        self, ids: Int[Tensor, "batch seq"], latents: Float[Tensor, "images latent_dim"] | None = None
    ) -> Float[Tensor, "batch seq dim"]:
        """Token embeddings, with ``image_in_projector(latents)`` at the placeholder ids (row-major)."""
        c = self.config
        device = self.embed_tokens.weight.device
        check_tensor("ids", ids, ndim=2, kind="int", device=device)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size):
            raise ValueError(
                f"ids holds values in [{int(ids.min())}, {int(ids.max())}] but the vocabulary is "
                f"[0, {c.vocab_size}); tokenize with the model's tokenizer"
            )
        x = self.embed_tokens(ids)
        is_image = ids == c.image_placeholder_id
        count = int(is_image.sum())
        if latents is None:
            if count:
                raise ValueError(
                    f"ids holds {count} image placeholders (id {c.image_placeholder_id}) but latents is "
                    "None; pass one latent token per placeholder"
                )
            return x
        check_tensor("latents", latents, ndim=2, kind="float", device=device)
        if latents.shape[1] != c.latent_dim:
            raise ValueError(
                f"latents has width {latents.shape[1]} but the model reads latent_dim = {c.latent_dim} "
                "tokens; patchify the latent map (2x2 patches of 16 channels = 64)"
            )
        if latents.shape[0] != count:
            raise ValueError(
                f"latents has {latents.shape[0]} tokens but ids holds {count} image placeholders (id "
                f"{c.image_placeholder_id}); pass exactly one latent token per placeholder, row-major"
            )
        if count == 0:
            return x
        rows, cols = is_image.nonzero(as_tuple=True)
        values = self.image_in_projector(latents.to(self.image_in_projector.weight.dtype))
        return x.index_put((rows, cols), values.to(x.dtype))

    # --- backbone -------------------------------------------------------------------------------

    def new_caches(
        self, batch: int, max_len: int, *, dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> list[KVCache]:
        """One empty ``KVCache`` per layer (dtype and device default to the parameters')."""
        if max_len > self.config.max_seq_len:
            raise ValueError(
                f"max_len = {max_len} exceeds the model's max_seq_len = {self.config.max_seq_len}; "
                "shorten the prompt or generate fewer tokens"
            )
        return [layer.self_attn.new_cache(batch, max_len, dtype=dtype, device=device)
                for layer in self.layers]

    @typecheck
    def forward(
        self,
        ids: Int[Tensor, "batch seq"],
        latents: Float[Tensor, "images latent_dim"] | None = None,
        *,
        attention_mask: Bool[Tensor, "batch kv"] | None = None,
        positions: Tensor | None = None,
        caches: Sequence[KVCache] | None = None,
    ) -> Float[Tensor, "batch seq dim"]:
        """Final-norm hidden states [batch, seq, dim] (see ``forward_embeds`` for the arguments)."""
        x = self.embed(ids, latents)
        return self.forward_embeds(x, attention_mask=attention_mask, positions=positions, caches=caches)

    @typecheck
    def forward_embeds(
        self,
        x: Float[Tensor, "batch seq dim"],
        *,
        attention_mask: Bool[Tensor, "batch kv"] | None = None,
        positions: Tensor | None = None,
        caches: Sequence[KVCache] | None = None,
    ) -> Float[Tensor, "batch seq dim"]:
        """The decoder stack and final norm over input embeddings.

        ``attention_mask``: bool [batch, kv], False at padding; kv counts the cached tokens and this
        call's (None: nothing padded). ``positions``: int [seq] or [batch, seq] RoPE positions
        (default: cache length + 0..seq-1). ``caches``: one ``KVCache`` per layer (``new_caches``),
        appended to in place.
        """
        check_tensor("x", x, ndim=3, kind="float")
        batch, seq, _ = x.shape
        past = self._check_caches(caches, batch)
        if past + seq > self.config.max_seq_len:
            raise ValueError(
                f"{past} cached + {seq} new tokens exceed max_seq_len = {self.config.max_seq_len}"
            )
        pos = self._positions(positions, batch, seq, past, x.device)
        mask = self._mask(attention_mask, batch, seq, past, x.device)
        m, h = forward_layers(self.layers, x, pos, residual=torch.zeros_like(x), attn_mask=mask,
                              is_causal=mask is None, caches=caches)
        out, _ = self.norm(m, residual=h)
        return out

    def _check_caches(self, caches: object, batch: int) -> int:
        if caches is None:
            return 0
        if not isinstance(caches, Sequence) or len(caches) != len(self.layers) or not all(
            isinstance(cache, KVCache) for cache in caches
        ):
            raise TypeError(
                f"caches must be a list of {len(self.layers)} KVCache (one per layer, "
                f"model.new_caches(...)), got {type(caches).__name__}"
            )
        lengths = {cache.length for cache in caches}
        if len(lengths) != 1:
            raise ValueError(
                f"the caches hold different lengths {sorted(lengths)}; use one set of caches per call"
            )
        if caches[0].batch != batch:
            raise ValueError(
                f"the caches hold batch = {caches[0].batch} rows but x has {batch}; build them with "
                f"new_caches({batch}, ...)"
            )
        return lengths.pop()

    @staticmethod
    def _positions(positions: object, batch: int, seq: int, past: int, device: torch.device) -> Tensor:
        if positions is None:
            return torch.arange(past, past + seq, device=device, dtype=torch.float32)[:, None]
        check_tensor("positions", positions, ndim=(1, 2), kind="int", device=device)
        if positions.shape[-1] != seq or (positions.ndim == 2 and positions.shape[0] not in (1, batch)):
            raise ValueError(
                f"positions has shape {tuple(positions.shape)}; pass [seq] = [{seq}] or [batch, seq] = "
                f"[{batch}, {seq}] integer positions of this call's tokens"
            )
        return positions.to(torch.float32)[..., None]

    @staticmethod
    def _mask(attention_mask: object, batch: int, seq: int, past: int, device: torch.device) -> Tensor | None:
        """[batch, 1, seq, kv] bool (causal & (key kept | key is the query)), or None when nothing is
        padded (the causal fast path)."""
        if attention_mask is None:
            return None
        kv = past + seq
        check_tensor("attention_mask", attention_mask, ndim=2, kind="bool", device=device)
        if tuple(attention_mask.shape) != (batch, kv):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but must be [batch, kv] = "
                f"[{batch}, {kv}]: the cached tokens ({past}) and this call's ({seq}), False at padding"
            )
        if bool(attention_mask.all()):
            return None
        if seq == 1:  # one decode step: causality allows every key, and the query sees itself
            allowed = attention_mask.clone()
            allowed[:, past] = True
            return allowed[:, None, None]
        keys = torch.arange(kv, device=device)
        queries = keys[past:, None]
        allowed = (keys[None] <= queries)[None] & (attention_mask[:, None] | (keys[None] == queries)[None])
        return allowed[:, None]

    # --- outputs --------------------------------------------------------------------------------

    @typecheck
    def logits(self, hidden: Float[Tensor, "*batch dim"]) -> Float[Tensor, "*batch vocab"]:
        """Float32 text logits."""
        return F.linear(hidden, self._text_weight()).float()

    def _text_weight(self) -> Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    @typecheck
    def condition(
        self, hidden: Float[Tensor, "*batch dim"], index: int | Tensor | None = None
    ) -> Float[Tensor, "*batch dim"]:
        """The head's condition: ``image_out_projector(hidden)``; with ``use_gen_pos_embed`` the
        embedding of image token ``index`` (its raster index in the image: an int, or an int tensor
        of ``hidden``'s leading shape) is added to ``hidden`` first (upstream)."""
        if self.gen_pos_embed is not None:
            table = self.gen_pos_embed[0]
            if index is None:
                raise ValueError(
                    "use_gen_pos_embed is on: pass index, the raster index of the image token predicted "
                    "from each hidden row"
                )
            index = torch.as_tensor(index, device=hidden.device)
            if index.is_floating_point() or int(index.min()) < 0 or int(index.max()) >= table.shape[0]:
                raise ValueError(
                    f"index must be integers in [0, {table.shape[0]}) (gen_pos_grid^2 image tokens), got "
                    f"values in [{index.min().item()}, {index.max().item()}]"
                )
            hidden = hidden + table[index].to(hidden.dtype)
        return self.image_out_projector(hidden)

    @typecheck
    def image_conditions(
        self, hidden: Float[Tensor, "batch seq dim"], ids: Int[Tensor, "batch seq"]
    ) -> Float[Tensor, "images dim"]:
        """The head condition of every image placeholder of ``ids`` (row-major) from the teacher-forced
        ``hidden`` of ``forward``: image token j is predicted from position j - 1."""
        is_image = ids == self.config.image_placeholder_id
        if bool(is_image[:, 0].any()):
            raise ValueError(
                "an image placeholder sits at position 0 of a row: image token j is predicted from "
                "position j - 1; start every image with <|begin_of_image|>"
            )
        return self.condition(hidden[:, :-1][is_image[:, 1:]], self._image_index(is_image))

    # --- training -------------------------------------------------------------------------------

    @typecheck
    def loss(
        self,
        ids: Int[Tensor, "batch seq"],
        latents: Float[Tensor, "images latent_dim"] | None = None,
        *,
        targets: Float[Tensor, "images latent_dim"] | None = None,
        attention_mask: Bool[Tensor, "batch seq"] | None = None,
        labels: Int[Tensor, "batch seq"] | None = None,
        image_weights: Float[Tensor, " images"] | None = None,
        generator: torch.Generator | None = None,
    ) -> NextStep1Loss:
        """Teacher-forced loss of a batch: ``lm_loss_weight`` * text cross-entropy (mean over the next-
        token targets that are neither padding, ``pad_id`` nor a placeholder; ``labels`` replaces ``ids``
        as targets, ``IGNORE_INDEX`` = no target) + ``image_loss_weight`` * the head's flow-matching
        loss of every image token (``targets``, default ``latents``; ``image_weights`` per token)."""
        c = self.config
        hidden = self(ids, latents, attention_mask=attention_mask)
        text, n_text = self._text_loss(hidden, ids, labels, attention_mask)
        is_image = ids == c.image_placeholder_id
        n_image = int(is_image.sum())
        if n_image == 0:
            image = hidden.new_zeros((), dtype=torch.float32)
        else:
            cond = self.image_conditions(hidden, ids)
            goal = latents if targets is None else targets
            image = self.image_head.loss(cond, goal, image_weights, generator=generator)
        total = c.lm_loss_weight * text + c.image_loss_weight * image
        return NextStep1Loss(total=total, text=text, image=image, text_tokens=n_text, image_tokens=n_image)

    def _text_loss(
        self, hidden: Tensor, ids: Tensor, labels: Tensor | None, attention_mask: Tensor | None
    ) -> tuple[Tensor, int]:
        c = self.config
        if labels is None:
            labels = ids
        else:
            check_tensor("labels", labels, ndim=2, kind="int", device=ids.device)
            if labels.shape != ids.shape:
                raise ValueError(f"labels has shape {tuple(labels.shape)} but ids has {tuple(ids.shape)}")
            bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= c.vocab_size))
            if bool(bad.any()):
                raise ValueError(
                    f"labels contains {int(labels[bad][0])}, outside [0, {c.vocab_size}); use "
                    f"{IGNORE_INDEX} for positions without a text target"
                )
        target = labels[:, 1:]
        drop = (ids[:, 1:] == c.image_placeholder_id) | (target == c.pad_id)
        if attention_mask is not None:
            drop = drop | ~attention_mask[:, 1:] | ~attention_mask[:, :-1]
        target = target.masked_fill(drop, IGNORE_INDEX).reshape(-1)
        rows = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        loss = linear_cross_entropy(rows, self._text_weight(), target, ignore_index=IGNORE_INDEX,
                                    reduction="mean")
        return loss.float(), int((target != IGNORE_INDEX).sum())

    def _image_index(self, is_image: Tensor) -> Tensor | None:
        """[images] raster index of every image token within its image (its run of placeholders)."""
        if self.gen_pos_embed is None:
            return None
        seq = torch.arange(is_image.shape[1], device=is_image.device).expand_as(is_image)
        first = is_image & ~F.pad(is_image[:, :-1], (1, 0))
        start = torch.where(first, seq, torch.zeros_like(seq)).cummax(dim=1).values
        return (seq - start)[is_image]
