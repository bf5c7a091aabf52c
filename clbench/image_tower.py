"""The image tower with a method's own additions: prompt tokens, attention prefixes and block adapters.

Prompt- and adapter-based continual-learning methods change what happens inside
the ViT image tower without changing its weights. This module runs open_clip's
``VisionTransformer`` forward pass step by step, with three optional additions
(``Learner.encode_images(images, prompts=..., prefixes=..., adapters=...)``),
so no method reaches into open_clip itself:

* ``prompts`` (B, P, W) or (P, W): P learned tokens of the tower's width W
  inserted right after the class token, after the positional embedding and
  ``ln_pre``, before the first block (prompt tuning of the input sequence:
  VPT-shallow, Jia et al. ECCV 2022; L2P, Wang et al. CVPR 2022). They take
  part in every block's attention and are dropped before pooling, so the
  pooled feature is still CLIP's (class token → ``ln_post`` → projection).
* ``prefixes`` {block index: (keys (B, Lp, W), values (B, Lp, W))}: prefix
  tuning (Li & Liang, ACL 2021) as CODA-Prompt and DualPrompt use it (Smith et
  al. CVPR 2023, code GT-RIPL/CODA-Prompt ``models/vit.py``: the prefix halves
  are concatenated to the attention's keys and values after their projection,
  split into heads like them). Queries come from the tokens only, so the
  sequence length is unchanged.
* ``adapters`` {block index: f}: f maps the block's residual stream after
  attention, x_a (B, N, W), to (B, N, W), added beside the MLP branch:
  block output = x_a + MLP(LN_2(x_a)) + f(x_a) (parallel adapters: AdaptFormer,
  Chen et al. NeurIPS 2022; MoE-Adapters, Yu et al. CVPR 2024, code
  JiazuoYu/MoE-Adapters4CL ``clip/model.py``).

With none of them the result equals ``model.encode_image`` (tested to float
tolerance). Only open_clip's own ViT towers (``VisionTransformer`` with
``ResidualAttentionBlock``s and token or average pooling) can be extended;
another tower (ResNet, timm, attentional pooling) or attention weights wrapped
by ``model.adapter`` (LoRA) raise a UserError naming what to change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import lazy_loader as lazy

from .errors import UserError

torch = lazy.load("torch")

Adapter = Callable[["torch.Tensor"], "torch.Tensor"]


def tower_problem(visual) -> str | None:
    """Why ``visual`` cannot take prompts, prefixes or adapters, or None when it can."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if not isinstance(visual, VisionTransformer):
        return f"the image tower is {type(visual).__name__}, not open_clip's VisionTransformer; use a ViT architecture"
    if getattr(visual, "attn_pool", None) is not None:
        return "the image tower pools with attention (CoCa-style); use a ViT with token or average pooling"
    if any("lora_" in name for name, _ in visual.named_parameters()):
        return "the image tower is wrapped by model.adapter (LoRA); drop model.adapter or limit it to towers: [text]"
    blocks = visual.transformer.resblocks
    if not all(isinstance(b, ResidualAttentionBlock) and isinstance(b.attn, torch.nn.MultiheadAttention) for b in blocks):
        return "the image tower's blocks are not open_clip's ResidualAttentionBlock with torch attention"
    if not getattr(visual.transformer, "batch_first", True):
        return "the image tower runs sequence-first (an old open_clip); upgrade open_clip"
    return None


@dataclass(frozen=True)
class TowerShape:
    """The sizes of a ViT image tower that prompts and adapters are built for.

    ``width``: token width W; ``blocks``: number of transformer blocks; ``tokens``: sequence
    length without additions (1 class token + patches); ``heads``: attention heads per block;
    ``output_dim``: the image embedding's size D.
    """

    width: int
    blocks: int
    tokens: int
    heads: int
    output_dim: int


def tower_shape(visual) -> TowerShape:
    """The ``TowerShape`` of an extendable ViT image tower; UserError naming the fix for another tower."""
    problem = tower_problem(visual)
    if problem:
        raise UserError(f"image tower: {problem}")
    blocks = visual.transformer.resblocks
    return TowerShape(width=width(visual), blocks=len(blocks), tokens=int(visual.positional_embedding.shape[0]),
                      heads=int(blocks[0].attn.num_heads), output_dim=int(visual.output_dim))


def width(visual) -> int:
    """The token width W of a ViT image tower (its ``class_embedding`` length)."""
    return int(visual.class_embedding.shape[-1])


def _attention(block, h: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """The block's multi-head self-attention of h (B, N, W), keys and values extended by a prefix (B, Lp, W) each."""
    attn = block.attn
    if prefix is None:
        return attn(h, h, h, need_weights=False)[0]
    B, N, W = h.shape
    heads = attn.num_heads
    q, k, v = torch.nn.functional.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    pk, pv = (_per_image(t.to(h.dtype), B) for t in prefix)
    k, v = torch.cat([pk, k], dim=1), torch.cat([pv, v], dim=1)

    def split(t):  # (B, L, W) -> (B, heads, L, W / heads)
        return t.reshape(B, t.shape[1], heads, W // heads).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v),
                                                           dropout_p=attn.dropout if attn.training else 0.0)
    return attn.out_proj(out.transpose(1, 2).reshape(B, N, W))


def _per_image(tokens: torch.Tensor, B: int) -> torch.Tensor:
    """(L, W) or (1, L, W) shared by every image, or (B, L, W): as (B, L, W)."""
    return (tokens.unsqueeze(0) if tokens.dim() == 2 else tokens).expand(B, -1, -1)


def encode(visual, images: torch.Tensor, prompts: torch.Tensor | None = None,
           prefixes: Mapping[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
           adapters: Mapping[int, Adapter] | None = None) -> torch.Tensor:
    """Image embeddings (B, output_dim), not normalised, of preprocessed images (B, 3, S, S) with the additions.

    ``prompts`` (B, P, W) or (P, W); ``prefixes`` {block: (keys, values)} each (B, Lp, W) or
    (Lp, W); ``adapters`` {block: f} with f((B, N, W)) -> (B, N, W). Block indices count from 0
    (ValueError outside 0..blocks-1; a token width other than W is a ValueError too).
    UserError when the tower cannot be extended (``tower_problem``).
    """
    problem = tower_problem(visual)
    if problem:
        raise UserError(f"image tower: {problem}")
    blocks = visual.transformer.resblocks
    W = width(visual)
    prefixes, adapters = dict(prefixes or {}), dict(adapters or {})
    for name, table in (("prefixes", prefixes), ("adapters", adapters)):
        bad = [i for i in table if not 0 <= int(i) < len(blocks)]
        if bad:
            raise ValueError(f"{name}: block {bad[0]} outside 0..{len(blocks) - 1}")
    for t in [prompts] + [p for pair in prefixes.values() for p in pair]:
        if t is not None and t.shape[-1] != W:
            raise ValueError(f"prompt and prefix tokens must have the tower's width {W}, got {tuple(t.shape)}")
    x = visual._embeds(images)  # (B, 1 + patches, W): class token, patches, positional embedding, ln_pre
    B = x.shape[0]
    n_prompts = 0
    if prompts is not None:
        p = _per_image(prompts.to(x.dtype), B)
        n_prompts = p.shape[1]
        x = torch.cat([x[:, :1], p, x[:, 1:]], dim=1)
    for i, block in enumerate(blocks):
        h = block.ln_1(x)
        x = x + block.ls_1(_attention(block, h, prefixes.get(i)))
        branch = block.ls_2(block.mlp(block.ln_2(x)))
        adapter = adapters.get(i)
        x = x + branch + adapter(x) if adapter is not None else x + branch
    if n_prompts:
        x = torch.cat([x[:, :1], x[:, 1 + n_prompts:]], dim=1)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled
