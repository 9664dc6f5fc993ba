"""``NextFlow``: one Qwen2-style decoder over text ids and multi-scale image codes (paper §2.2).

Shape legend: batch = rows, seq = tokens of a call, dim = model width, vocab = padded unified
vocabulary, images = images of one schedule, codes = codebook size, code_dim = tokenizer code width.

Inputs (``embed``). Text and specials are rows of ``embed_tokens`` (HF Qwen2's name), which covers
the whole unified vocabulary: its visual-code rows are the **visual code embeddings**,
initialised from the tokenizer's codebook (``init_code_embeddings``: the code features
``tokenizer.embed_codes`` through a fixed projection when ``code_dim`` differs from ``dim``) and
trained like text rows. An image's first step carries the ``<boi>`` embedding; step k >= 1 carries
the next-scale inputs of step k-1's codes made from those rows (``config.inputs``: ``residual`` —
the codes' own embeddings up-sampled to the next grid — or ``accumulated``). Image tokens add the
learned scale embedding and the sinusoidal scale-length embedding (through ``scale_length_proj``,
so its unit-amplitude sinusoid enters at the scale of the other embeddings), and with
``config.grid_positions`` the sinusoid of the token's place on its grid (through
``grid_position_proj``; not in the paper).

Positions: multiscale 3D RoPE per row (``rope.positions(layout)``). Attention: the block-causal
pattern of each row's layout — one ``ScaleBlocks`` through ``scale_attention`` when every row has
the same layout and no padding, otherwise a dense [batch, 1, seq, seq] mask.

Output: the final RMSNorm, the optional ``refiner`` (``GridRefiner`` convolutions over each image
scale's grid, ``config.refiner_blocks``; not in the paper), then ``head`` (a ``DiscreteHead``: one
shared ``LinearHead``, or a ``SplitHead`` for the separate-heads ablation). ``loss`` runs the
head's fused cross-entropy with the per-token weights of the batch (scale reweighting, Eq. 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.head import IGNORE_INDEX, DiscreteHead
from nxcore.layout import DiscreteImage, Modality, SequenceLayout
from nxcore.nn import GridRefiner, KVCache, RMSNorm
from nxcore.position import GridPositionEmbedding, LearnedScaleEmbedding, ScaleLengthEmbedding
from nxcore.schedule.protocol import ScaleSchedule
from nxcore.tokenizer.multiscale.quantizer import CodebookStream, as_steps, next_scale_inputs
from nxkernels.scale_attention import ScaleBlocks
from nxrecipes.nextflow.config import NextFlowConfig
from nxrecipes.nextflow.sequence import Batch, ImageGroup

__all__ = ["NextFlow"]


class NextFlow(nn.Module):
    def __init__(self, config: NextFlowConfig) -> None:
        super().__init__()
        if not isinstance(config, NextFlowConfig):
            raise TypeError(f"config must be a NextFlowConfig, got {type(config).__name__}")
        self.config = config
        c, dim = config, config.layer.dim
        self.vocabulary = c.vocabulary
        self.embed_tokens = nn.Embedding(c.vocabulary.padded_size, dim)
        self.rope = c.rope()
        self.layers = nn.ModuleList(c.layer.build(rope=self.rope) for _ in range(c.num_layers))
        self.norm = RMSNorm(dim, c.layer.norm_eps)
        self.scale_embed = LearnedScaleEmbedding(c.max_scales, dim)
        self.scale_length = ScaleLengthEmbedding(dim)
        self.scale_length_proj = nn.Linear(dim, dim, bias=False)
        self.refiner = GridRefiner(dim, c.refiner_blocks) if c.refiner_blocks else None
        self.grid_position = GridPositionEmbedding(dim, c.range_factor) if c.grid_positions else None
        self.grid_position_proj = nn.Linear(dim, dim, bias=False) if c.grid_positions else None
        self.head: DiscreteHead = c.resolved_head.build()
        self.register_buffer("valid", c.vocabulary.valid_mask(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Qwen2's init: N(0, init_std) for linear and embedding weights, zero biases, unit norms."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if self.refiner is not None:
            self.refiner.reset_parameters()

    # --- pieces ---------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.config.layer.dim

    @property
    def code_embeddings(self) -> Tensor:
        """[codes, dim]: the visual-code rows of ``embed_tokens``."""
        lo, hi = self.vocabulary.code_range
        return self.embed_tokens.weight[lo:hi]

    @torch.no_grad()
    def init_code_embeddings(self, tokenizer, *, generator: torch.Generator | None = None) -> Tensor:
        """Set the visual code embeddings from ``tokenizer``'s codebook: its code features
        [codes, code_dim] (``embed_codes``), times a fixed random orthonormal projection to ``dim``
        when the widths differ, scaled so the rows' RMS is ``init_std``. Returns the projection
        [code_dim, dim] (the identity when the widths agree)."""
        codes = self.vocabulary.codebook_size
        if getattr(tokenizer, "codebook_size", None) != codes:
            raise ValueError(
                f"the tokenizer has {getattr(tokenizer, 'codebook_size', None)} codes but the vocabulary "
                f"has codebook_size {codes}; build the vocabulary from this tokenizer"
            )
        device = self.embed_tokens.weight.device
        features = tokenizer.embed_codes(torch.arange(codes, device=device)[:, None, None], 0)[:, :, 0, 0]
        if features.shape[1] != self.config.code_dim:
            raise ValueError(
                f"the tokenizer's codes are {features.shape[1]} wide but config.code_dim = "
                f"{self.config.code_dim}; set code_dim to the tokenizer's code width"
            )
        features = features.float()
        if features.shape[1] == self.dim:
            projection = torch.eye(self.dim, device=device)
        else:
            gaussian = torch.randn(max(features.shape[1], self.dim), min(features.shape[1], self.dim),
                                   generator=generator).to(device)
            q, _ = torch.linalg.qr(gaussian)
            projection = q if features.shape[1] >= self.dim else q.T
        rows = features @ projection
        rows = rows * (self.config.init_std / rows.square().mean().sqrt().clamp_min(1e-12))
        lo, hi = self.vocabulary.code_range
        self.embed_tokens.weight[lo:hi] = rows.to(self.embed_tokens.weight.dtype)
        return projection

    def image_inputs(
        self, codes: Sequence[Tensor], schedule: ScaleSchedule, *, mode: str | None = None
    ) -> list[Tensor]:
        """The next-scale inputs of steps 1.. from the codes of steps 0.. (one [images, dim, h, w]
        map per given grid k < K), made from the visual code embeddings."""
        stream = CodebookStream(self.code_embeddings)
        c = self.config
        return next_scale_inputs([stream], list(codes), as_steps(schedule), mode=mode or c.inputs,
                                 down=c.down, up=c.up)

    def step_input(self, codes: Sequence[Tensor], schedule: ScaleSchedule) -> Tensor:
        """The [images, dim, h, w] input of step ``len(codes)`` (>= 1) given the codes of the steps
        before: ``image_inputs(codes, schedule)[-1]``, from the last step's codes alone when the
        inputs are residual (KV-cached generation needs one step's input at a time)."""
        if self.config.inputs != "residual":
            return self.image_inputs(codes, schedule)[-1]
        steps = as_steps(schedule)
        k = len(codes)
        return self.image_inputs([codes[-1]], steps[k - 1 : k + 1])[0]

    def image_embeddings(self, group: ImageGroup) -> Tensor:
        """[images, tokens, dim]: every position of the group's images (``<boi>`` on step 0)."""
        steps = tuple(group.schedule.steps)
        n = group.rows.numel()
        first = steps[0][0] * steps[0][1]
        boi = self.embed_tokens.weight[self.vocabulary.special_id("<boi>")]
        parts = [boi.expand(n, first, -1)]
        if len(steps) > 1:
            maps = self.image_inputs(group.inputs[: len(steps) - 1], group.schedule)
            parts += [m.flatten(2).transpose(1, 2).to(boi.dtype) for m in maps]
        return torch.cat(parts, dim=1)

    def additive(self, layout: SequenceLayout, start: int = 0, stop: int | None = None) -> Tensor:
        """[stop - start, dim]: scale embedding + projected scale-length embedding (+ projected grid
        position with ``config.grid_positions``; 0 on text) of positions ``start .. stop`` of ``layout``
        (all of it by default)."""
        dtype = self.embed_tokens.weight.dtype
        length = self.scale_length(layout)[start:stop].to(dtype)
        out = self.scale_embed(layout)[start:stop] + self.scale_length_proj(length)
        if self.grid_position is not None:
            out = out + self.grid_position_proj(self.grid_position(layout)[start:stop].to(dtype))
        return out

    def embed(self, ids: Tensor, layouts: Sequence[SequenceLayout], images: Sequence[ImageGroup]) -> Tensor:
        """[batch, seq, dim] input embeddings of right-padded rows (``Batch`` conventions)."""
        x = self.embed_tokens(ids)
        for group in images:
            values = self.image_embeddings(group)
            cols = group.starts[:, None] + torch.arange(values.shape[1], device=ids.device)
            x = x.index_put((group.rows[:, None].expand_as(cols), cols), values.to(x.dtype))
        extra = [self.additive(layout) for layout in layouts]
        return x + _pad_rows(extra, x.shape[1]).to(x.dtype)

    def positions(self, layouts: Sequence[SequenceLayout], seq: int) -> Tensor:
        """[batch, seq, 3] RoPE coordinates of every row (padding continues the last position)."""
        device = self.embed_tokens.weight.device
        rows = []
        for layout in layouts:
            pos = self.rope.positions(layout, device=device)
            extra = seq - pos.shape[0]
            if extra:
                tail = pos[-1] + torch.arange(1, extra + 1, device=device, dtype=pos.dtype)[:, None]
                pos = torch.cat([pos, tail])
            rows.append(pos)
        return torch.stack(rows)

    def attention(self, layouts: Sequence[SequenceLayout], seq: int, *, dense: bool = False
                  ) -> dict[str, object]:
        """Keyword arguments for the layers: ``blocks`` when every row has one layout filling ``seq``
        (and not ``dense``), otherwise a dense ``attn_mask`` [batch, 1, seq, seq] (padding sees itself
        causally)."""
        same = all(layout == layouts[0] for layout in layouts)
        if not dense and same and layouts[0].length == seq:
            return {"blocks": ScaleBlocks.of(layouts[0].attention_blocks())}
        device = self.embed_tokens.weight.device
        kv_end = torch.arange(1, seq + 1, device=device).repeat(len(layouts), 1)
        for b, layout in enumerate(layouts):
            kv_end[b, : layout.length] = layout.kv_end(device)
        keys = torch.arange(seq, device=device)
        return {"attn_mask": (keys[None, None, :] < kv_end[:, :, None])[:, None]}

    def run_layers(self, x: Tensor, positions: Tensor, *, caches: Sequence[KVCache] | None = None,
                   **attention) -> Tensor:
        """The decoder stack and the final norm: [batch, seq, dim] hidden states."""
        m, h = x, torch.zeros_like(x)
        for i, layer in enumerate(self.layers):
            cache = None if caches is None else caches[i]
            m, h = layer(m, positions, residual=h, cache=cache, **attention)
        out, _ = self.norm(m, residual=h)
        return out

    def refine(self, hidden: Tensor, layouts: Sequence[SequenceLayout]) -> Tensor:
        """[batch, seq, dim] ``hidden`` with every discrete image scale's positions passed through
        the ``refiner`` on their grid (unchanged without one)."""
        if self.refiner is None:
            return hidden
        seq, dim = hidden.shape[1], hidden.shape[2]
        grids: dict[tuple[int, int], list[int]] = {}
        for b, layout in enumerate(layouts):
            for span in layout.images:
                if not isinstance(span.segment, DiscreteImage):
                    continue
                start = b * seq + span.start
                for h, w in span.steps:
                    grids.setdefault((h, w), []).extend(range(start, start + h * w))
                    start += h * w
        flat = hidden.reshape(-1, dim)
        for (h, w), positions in grids.items():
            index = torch.tensor(positions, device=hidden.device)
            refined = self.refiner(flat[index].view(-1, h * w, dim), h, w)
            flat = flat.index_put((index,), refined.reshape(-1, dim))
        return flat.view_as(hidden)

    def refine_step(self, hidden: Tensor, h: int, w: int) -> Tensor:
        """[batch, h·w, dim] hidden states of one image scale through the ``refiner`` (``refine``
        for KV-cached generation, one scale at a time)."""
        return hidden if self.refiner is None else self.refiner(hidden, h, w)

    def logits(self, hidden: Tensor) -> Tensor:
        """[..., vocab] float32 logits, padding ids at -inf."""
        flat = self.head.predict(hidden.reshape(-1, hidden.shape[-1])).float()
        flat = flat.masked_fill(~self.valid, float("-inf"))
        return flat.reshape(*hidden.shape[:-1], -1)

    def code_logits(self, hidden: Tensor) -> Tensor:
        """[..., codes] float32 logits of the visual codes only, equal to ``logits(hidden)[..., lo:hi]``
        over ``vocabulary.code_range`` without the text rows of the head (image steps sample codes
        only; at 7B the text rows are 90% of the head)."""
        lo, hi = self.vocabulary.code_range
        flat = self.head.predict_range(hidden.reshape(-1, hidden.shape[-1]), lo, hi).float()
        return flat.reshape(*hidden.shape[:-1], -1)

    # --- training -------------------------------------------------------------------------------

    def forward(self, batch: Batch, *, with_loss: bool = False, detail: bool = False, per_scale: bool = False
                ) -> Tensor | tuple[Tensor, dict[str, float]]:
        """[batch, seq, dim] final hidden states of a teacher-forced batch; with ``with_loss``,
        ``loss(batch, ...)``'s result instead (so a DDP/FSDP wrapper sees the loss computed inside its
        forward)."""
        if not isinstance(batch, Batch):
            raise TypeError(
                f"batch must be a nextflow Batch (nextflow.collate(...)), got {type(batch).__name__}"
            )
        seq = batch.ids.shape[1]
        x = self.embed(batch.ids, batch.layouts, batch.images)
        hidden = self.run_layers(x, self.positions(batch.layouts, seq), **self.attention(batch.layouts, seq))
        hidden = self.refine(hidden, batch.layouts)
        return self._loss(hidden, batch, detail, per_scale) if with_loss else hidden

    def loss(self, batch: Batch, *, detail: bool = False, per_scale: bool = False
             ) -> tuple[Tensor, dict[str, float]]:
        """The weighted cross-entropy of every target (``head.loss``: fused, weights of the batch) and
        metrics: ``tokens``; with ``detail`` also ``loss/text`` and ``loss/image`` (unweighted means of
        ``sampling_nll``, from full logits: small models only), with ``per_scale`` also
        ``loss/scale_k``."""
        return self(batch, with_loss=True, detail=detail, per_scale=per_scale)

    def _loss(self, hidden: Tensor, batch: Batch, detail: bool, per_scale: bool
              ) -> tuple[Tensor, dict[str, float]]:
        carries = batch.targets != IGNORE_INDEX
        rows = hidden[carries]
        targets, weights = batch.targets[carries], batch.weights[carries]
        loss = self.head.loss(rows, targets, weights)
        metrics: dict[str, float] = {"tokens": float(carries.sum())}
        if not (detail or per_scale):
            return loss, metrics
        with torch.no_grad():
            per_token = self.sampling_nll(rows.detach(), targets)
            is_code = self.vocabulary.is_code(targets)
            for name, sel in (("text", ~is_code), ("image", is_code)):
                if sel.any():
                    metrics[f"loss/{name}"] = float(per_token[sel].mean())
            if per_scale:
                scale = _scale_index(batch, hidden.device)[carries]
                for k in scale[is_code].unique().tolist():
                    metrics[f"loss/scale_{k}"] = float(per_token[is_code & (scale == k)].mean())
        return loss, metrics

    def sampling_nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """[tokens] negative log-likelihood of each target under the distribution the sampler draws
        from: a code competes with the other codes only, a text token with the non-code ids. The same
        quantity whatever the head (shared or split), so ablations compare."""
        logits = self.logits(hidden)
        lo, hi = self.vocabulary.code_range
        is_code = (targets >= lo) & (targets < hi)
        codes = torch.full_like(logits, float("-inf"))
        codes[:, lo:hi] = logits[:, lo:hi]
        text = logits.clone()
        text[:, lo:hi] = float("-inf")
        return torch.where(is_code, F.cross_entropy(codes, targets, reduction="none"),
                           F.cross_entropy(text, targets, reduction="none"))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _pad_rows(rows: Sequence[Tensor], seq: int) -> Tensor:
    return torch.stack([F.pad(r, (0, 0, 0, seq - r.shape[0])) for r in rows])


def _scale_index(batch: Batch, device: torch.device) -> Tensor:
    seq = batch.ids.shape[1]
    out = torch.full((len(batch.layouts), seq), -1, dtype=torch.int64, device=device)
    for b, layout in enumerate(batch.layouts):
        table = layout.tokens(device)
        is_image = table.modality == int(Modality.IMAGE)
        out[b, : layout.length] = torch.where(is_image, table.scale_index, -1)
    return out
