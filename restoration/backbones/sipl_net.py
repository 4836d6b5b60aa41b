"""PromptIR-style all-in-one restoration network with SIPL's Proxy Fusion (arXiv 2505.24207).

A 4-level Restormer-like U-Net (MDTA channel attention + gated FFN, pixel-(un)shuffle resampling, global
residual) with prompt blocks in the decoder (PromptIR). SIPL adds, before each decoder prompt block at 1/8,
1/4 and 1/2 resolution, a Proxy Fusion module holding a learnable Privileged Dictionary:

    proxy = distil(dictionary, privileged_features)   # dictionary tokens attend to privileged features
    feature = inject(feature, proxy)                   # decoder tokens attend to the proxy

Without privileged features the raw dictionary is the proxy. With ``proxy_fusion=False`` the modules are
absent: that is the ablation (plain small PromptIR). The output is the input plus a predicted residual.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Config keys of network variants that never shipped (`experiments/README.md`), with the value that means "absent".
#: Files and checkpoints written while they existed carry them; they load when the variant is off.
RETIRED_CONFIG = {"wide_level1": False, "deconv_bank": [], "affine_output": False}


@dataclass(frozen=True)
class SIPLConfig:
    """Typed configuration; round-trips through the safetensors metadata of the shipped weights."""

    dim: int = 16
    num_blocks: tuple[int, int, int, int] = (1, 1, 2, 2)
    num_refinement_blocks: int = 1
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    ffn_expansion: float = 2.0
    prompt_len: int = 5
    prompt_size: int = 16
    proxy_fusion: bool = True
    dictionary_tokens: int = 16

    def to_dict(self) -> dict:
        return asdict(self)

    def differences(self, other: "SIPLConfig") -> dict:
        """{key: (this value, the other's)} for every key where the two configs differ."""
        ours, theirs = self.to_dict(), other.to_dict()
        return {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}

    @classmethod
    def from_dict(cls, d: dict) -> "SIPLConfig":
        known = {f for f in cls.__dataclass_fields__}
        d = dict(d)
        for key, absent in RETIRED_CONFIG.items():
            if key in d and _plain(d.pop(key)) != absent:
                raise ValueError(f"SIPLConfig key {key!r} belongs to a network variant that never shipped "
                                 "(experiments/README.md); this code builds the shipped network only")
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SIPLConfig keys {sorted(unknown)}; allowed: {sorted(known)}")
        for key in ("num_blocks", "heads"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W), per pixel (Restormer's WithBias LayerNorm)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return (x - mu) * torch.rsqrt(var + 1e-5) * self.weight + self.bias


class MDTA(nn.Module):
    """Multi-Dconv-head Transposed Attention: attention across channels, linear in H*W (Restormer, Eq. 2)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dw = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
        q = F.normalize(q.reshape(b, self.heads, c // self.heads, h * w), dim=-1)
        k = F.normalize(k.reshape(b, self.heads, c // self.heads, h * w), dim=-1)
        v = v.reshape(b, self.heads, c // self.heads, h * w)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.proj((attn @ v).reshape(b, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network (Restormer, Eq. 3)."""

    def __init__(self, dim: int, expansion: float):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.dw = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dw(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, expansion: float):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = MDTA(dim, heads)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GDFN(dim, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _stage(dim: int, n: int, heads: int, expansion: float) -> nn.Sequential:
    return nn.Sequential(*[TransformerBlock(dim, heads, expansion) for _ in range(n)])


class Downsample(nn.Module):
    """(B, C, H, W) -> (B, 2C, H/2, W/2) by conv + pixel-unshuffle."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """(B, C, H, W) -> (B, C/2, 2H, 2W) by conv + pixel-shuffle."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class PromptBlock(nn.Module):
    """PromptIR prompt generation: softmax-weighted learnable components, resized to the feature, 3x3 conv."""

    def __init__(self, feature_dim: int, prompt_dim: int, prompt_len: int, prompt_size: int):
        super().__init__()
        self.components = nn.Parameter(torch.rand(1, prompt_len, prompt_dim, prompt_size, prompt_size))
        self.to_weights = nn.Linear(feature_dim, prompt_len)
        self.mix = nn.Conv2d(prompt_dim, prompt_dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        weights = self.to_weights(x.mean(dim=(-2, -1))).softmax(dim=1)  # (B, L)
        prompt = (weights[:, :, None, None, None] * self.components).sum(dim=1)
        prompt = F.interpolate(prompt, (h, w), mode="bilinear", align_corners=False)
        return self.mix(prompt)


class TokenAttention(nn.Module):
    """Cross-attention between token sets with L2-normalised queries/keys and a learned temperature."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, dim * 2, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.temperature = nn.Parameter(torch.full((heads, 1, 1), 10.0))

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """queries (B, Nq, C), context (B, Nk, C) -> (B, Nq, C) attention output (no residual)."""
        b, nq, c = queries.shape
        nk = context.shape[1]
        d = c // self.heads
        q = self.q(self.norm_q(queries)).reshape(b, nq, self.heads, d).transpose(1, 2)
        k, v = self.kv(self.norm_kv(context)).chunk(2, dim=-1)
        k = k.reshape(b, nk, self.heads, d).transpose(1, 2)
        v = v.reshape(b, nk, self.heads, d).transpose(1, 2)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, nq, c))


class TokenGatedFFN(nn.Module):
    """Gated FFN on tokens (B, N, C) with pre-LayerNorm; returns the update (no residual)."""

    def __init__(self, dim: int, expansion: float):
        super().__init__()
        hidden = int(dim * expansion)
        self.norm = nn.LayerNorm(dim)
        self.project_in = nn.Linear(dim, hidden * 2)
        self.project_out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.project_in(self.norm(x)).chunk(2, dim=-1)
        return self.project_out(F.gelu(a) * g)


class ProxyFusion(nn.Module):
    """SIPL Proxy Fusion at one decoder level: a Privileged Dictionary, distil, inject."""

    def __init__(self, dim: int, heads: int, tokens: int, expansion: float):
        super().__init__()
        self.privileged_dictionary = nn.Parameter(torch.zeros(tokens, dim))
        self.distil_attn = TokenAttention(dim, heads)
        self.distil_ffn = TokenGatedFFN(dim, expansion)
        self.inject_attn = TokenAttention(dim, heads)
        self.inject_ffn = TokenGatedFFN(dim, expansion)

    def proxy(self, batch: int, privileged: torch.Tensor | None) -> torch.Tensor:
        """(B, N, C) proxy: the dictionary distilled from privileged features (B, C, h, w), or the raw dictionary."""
        proxy = self.privileged_dictionary.unsqueeze(0).expand(batch, -1, -1)
        if privileged is None:
            return proxy
        context = privileged.flatten(2).transpose(1, 2)
        proxy = proxy + self.distil_attn(proxy, context)
        return proxy + self.distil_ffn(proxy)

    def forward(self, feature: torch.Tensor, privileged: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = feature.shape
        proxy = self.proxy(b, privileged)
        tokens = feature.flatten(2).transpose(1, 2)
        tokens = tokens + self.inject_attn(tokens, proxy)
        tokens = tokens + self.inject_ffn(tokens)
        return tokens.transpose(1, 2).reshape(b, c, h, w)


@dataclass
class EncoderFeatures:
    """Encoder outputs of one image: full, 1/2, 1/4 resolution levels and the 1/8 latent."""

    level1: torch.Tensor
    level2: torch.Tensor
    level3: torch.Tensor
    latent: torch.Tensor

    def privileged(self) -> list[torch.Tensor]:
        """Features at the three Proxy Fusion levels (1/8, 1/4, 1/2), in decoder order."""
        return [self.latent, self.level3, self.level2]


class SIPLNet(nn.Module):
    """Small PromptIR with SIPL Proxy Fusion. Input (B, 3, H, W) in [0, 1], H and W multiples of 8."""

    multiple = 8

    def __init__(self, config: SIPLConfig = SIPLConfig()):
        super().__init__()
        self.config = cfg = config
        d, nb, hd, ex = cfg.dim, cfg.num_blocks, cfg.heads, cfg.ffn_expansion
        self.patch_embed = nn.Conv2d(3, d, 3, padding=1, bias=False)
        self.encoder1 = _stage(d, nb[0], hd[0], ex)
        self.down1 = Downsample(d)
        self.encoder2 = _stage(d * 2, nb[1], hd[1], ex)
        self.down2 = Downsample(d * 2)
        self.encoder3 = _stage(d * 4, nb[2], hd[2], ex)
        self.down3 = Downsample(d * 4)
        self.latent = _stage(d * 8, nb[3], hd[3], ex)

        # decoder level 3 (1/8 -> 1/4), prompts as in PromptIR: (prompt dim = feature dim / 2)
        p3, p2, p1 = d * 4, d * 2, d
        self.prompt3 = PromptBlock(d * 8, p3, cfg.prompt_len, cfg.prompt_size)
        self.prompt_fuse3 = _PromptFuse(d * 8, p3, hd[3], ex)
        self.up3 = Upsample(d * 8)
        self.reduce3 = nn.Conv2d(d * 8, d * 4, 1, bias=False)
        self.decoder3 = _stage(d * 4, nb[2], hd[2], ex)

        self.prompt2 = PromptBlock(d * 4, p2, cfg.prompt_len, cfg.prompt_size)
        self.prompt_fuse2 = _PromptFuse(d * 4, p2, hd[2], ex)
        self.up2 = Upsample(d * 4)
        self.reduce2 = nn.Conv2d(d * 4, d * 2, 1, bias=False)
        self.decoder2 = _stage(d * 2, nb[1], hd[1], ex)

        self.prompt1 = PromptBlock(d * 2, p1, cfg.prompt_len, cfg.prompt_size)
        self.prompt_fuse1 = _PromptFuse(d * 2, p1, hd[1], ex)
        self.up1 = Upsample(d * 2)
        self.reduce1 = nn.Conv2d(d * 2, d, 1, bias=False)  # PromptIR keeps 2 * dim here; dim is 4x cheaper
        self.decoder1 = _stage(d, nb[0], hd[0], ex)
        self.refinement = _stage(d, cfg.num_refinement_blocks, hd[0], ex)
        self.output = nn.Conv2d(d, 3, 3, padding=1, bias=False)

        if cfg.proxy_fusion:
            tokens = cfg.dictionary_tokens
            self.proxy_fusion = nn.ModuleList([
                ProxyFusion(d * 8, hd[3], tokens, ex),  # 1/8
                ProxyFusion(d * 4, hd[2], tokens, ex),  # 1/4
                ProxyFusion(d * 2, hd[1], tokens, ex),  # 1/2
            ])
        else:
            self.proxy_fusion = None

    def encode(self, x: torch.Tensor) -> EncoderFeatures:
        """(B, 3, H, W) in [0, 1] -> encoder features at 1, 1/2, 1/4, 1/8 resolution."""
        e1 = self.encoder1(self.patch_embed(x))
        e2 = self.encoder2(self.down1(e1))
        e3 = self.encoder3(self.down2(e2))
        return EncoderFeatures(e1, e2, e3, self.latent(self.down3(e3)))

    def _fuse(self, level: int, feature: torch.Tensor, privileged: list[torch.Tensor] | None) -> torch.Tensor:
        if self.proxy_fusion is None:
            return feature
        p = None if privileged is None else privileged[level]
        return self.proxy_fusion[level](feature, p)

    def decode(self, x: torch.Tensor, enc: EncoderFeatures,
               privileged: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Decoder with prompts and Proxy Fusion; `privileged` = features at (1/8, 1/4, 1/2) or None."""
        f = self._fuse(0, enc.latent, privileged)
        f = self.prompt_fuse3(f, self.prompt3(f))
        f = self.decoder3(self.reduce3(torch.cat([self.up3(f), enc.level3], dim=1)))

        f = self._fuse(1, f, privileged)
        f = self.prompt_fuse2(f, self.prompt2(f))
        f = self.decoder2(self.reduce2(torch.cat([self.up2(f), enc.level2], dim=1)))

        f = self._fuse(2, f, privileged)
        f = self.prompt_fuse1(f, self.prompt1(f))
        f = self.decoder1(self.reduce1(torch.cat([self.up1(f), enc.level1], dim=1)))
        return x + self.output(self.refinement(f))

    def forward(self, x: torch.Tensor, privileged: list[torch.Tensor] | None = None) -> torch.Tensor:
        """One pass: (B, 3, H, W) -> restored (B, 3, H, W) (not clamped)."""
        return self.decode(x, self.encode(x), privileged)

    def privileged_features(self, y: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of an image (a reconstruction of the ground truth, or the model's own output)."""
        return self.encode(y).privileged()


class _PromptFuse(nn.Module):
    """Concatenate the prompt to the feature, one transformer block, 1x1 conv back to the feature width."""

    def __init__(self, dim: int, prompt_dim: int, heads: int, expansion: float):
        super().__init__()
        total = dim + prompt_dim
        while total % heads:
            heads -= 1
        self.block = TransformerBlock(total, heads, expansion)
        self.reduce = nn.Conv2d(total, dim, 1, bias=False)

    def forward(self, feature: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.block(torch.cat([feature, prompt], dim=1)))


def self_refine(net: SIPLNet, x: torch.Tensor, rounds: int) -> torch.Tensor:
    """SIPL inference: y0 = Net(x) (dictionary only), P = Encoder(y0), y = Net(x, P); repeat with x <- y.

    rounds = 0 is the plain single pass. The encoder features of x are computed once per round and
    reused by both passes. (B, 3, H, W) with H, W multiples of 8 -> (B, 3, H, W), unclamped.
    """
    enc = net.encode(x)
    y = net.decode(x, enc, None)
    if net.proxy_fusion is None:
        return y
    for r in range(rounds):
        if r > 0:
            x = y
            enc = net.encode(x)
            y = net.decode(x, enc, None)
        y = net.decode(x, enc, net.privileged_features(y.clamp(0, 1)))
    return y
