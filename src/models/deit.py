"""DeiT-Tiny as SSL-small builds it: ``vit_tiny`` of WOWNICE/ssl-small ``architectures/vits/deit.py``.

That network is a lucidrains/vit-pytorch style ViT and not the DeiT-Ti of Touvron et al. 2021 (3 heads of
64, width 192, ``timm``) nor torchvision's ViT-Ti (kept here as ``vit_tiny``, ``src.models.small``):

- patches of 16 x 16 flattened in (row, column, channel) order and projected by a Linear 768 -> 192
  (``to_patch_embedding.1``) that is FROZEN at its random initialisation (``requires_grad=False``);
- class token and position embedding drawn from N(0, 1); the table has 197 rows (224 px); a smaller input
  uses its first n + 1 rows, as the reference slices it; embedding dropout 0.1;
- 12 pre-norm blocks: LayerNorm -> attention with 6 heads of 64 (attention width 384 != model width 192),
  qkv without bias, output Linear 384 -> 192 + dropout 0.1; LayerNorm -> MLP 192 -> 768 -> 192 with GELU
  and dropout 0.1 after each Linear; no final block norm;
- representation: the class token after ``mlp_head`` (a LayerNorm), 192-d; ``fc`` follows it;
- PyTorch's default initialisation for every Linear and LayerNorm; about 7.29M parameters in the trunk.

Parameter names are the reference's (``transformer.layers.3.0.fn.to_qkv.weight`` ...), so a SEED
student distilled with SSL-small's code loads key for key.
"""
import torch
import torch.nn.functional as F
from torch import nn

REFERENCE_IMAGE_SIZE = 224


class Patchify(nn.Module):
    """(B, C, H, W) -> (B, (H/p)(W/p), p*p*C): non-overlapping p x p patches in raster order, each
    flattened as (row in patch, column in patch, channel), the layout of einops'
    ``'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'`` the reference uses (its Linear weights depend on it)."""

    def __init__(self, patch_size):
        super().__init__()
        self.p = patch_size

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.p
        if h % p or w % p:
            raise ValueError(f"DeiT-Tiny input {h}x{w} is not a multiple of the patch size {p}")
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # b, h, w, p1, p2, c
        return x.reshape(b, (h // p) * (w // p), p * p * c)


class PreNorm(nn.Module):
    """``fn(LayerNorm(x))``; parameters ``norm`` and ``fn`` (the reference's names)."""

    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    """Linear(dim, hidden) -> GELU -> Dropout -> Linear(hidden, dim) -> Dropout, as ``net.0`` ... ``net.4``."""

    def __init__(self, dim, hidden, dropout):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    """Multi-head self-attention: qkv = x W (no bias), softmax(q k^T / sqrt(dim_head)) v per head, then
    Linear(heads * dim_head, dim) + Dropout. No dropout on the attention weights (the reference has none).

    Shapes: (B, N, dim) -> (B, N, dim).
    """

    def __init__(self, dim, heads, dim_head, dropout):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x):
        b, n, _ = x.shape
        # (B, N, 3 * inner) -> three (B, heads, N, dim_head); channels are (head, dim_head) within q, k, v
        q, k, v = self.to_qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # default scale 1 / sqrt(dim_head)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class Transformer(nn.Module):
    """``depth`` pre-norm residual blocks ``x + attn(x)``, ``x + ff(x)``, stored as ``layers[i][0 | 1]``."""

    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dim_head, dropout)),
                           PreNorm(dim, FeedForward(dim, mlp_dim, dropout))]) for _ in range(depth))

    def forward(self, x):
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return x


class DeiTTiny(nn.Module):
    """SSL-small's DeiT-Tiny trunk: (B, 3, S, S) -> (B, 192), S a multiple of 16, at most 224.

    Args:
        image_size: side of the largest input; sets the position table (197 rows at the reference's 224).
        patch_size, dim, depth, heads, dim_head, mlp_dim, dropout, emb_dropout: the reference's
            ``vit_tiny`` values by default (16, 192, 12, 6, 64, 768, 0.1, 0.1).
    Attributes:
        out_dim: 192; ``fc``: ``nn.Identity()``, replaced by a method's head.
    """

    def __init__(self, image_size=REFERENCE_IMAGE_SIZE, patch_size=16, dim=192, depth=12, heads=6, dim_head=64,
                 mlp_dim=768, dropout=0.1, emb_dropout=0.1):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"DeiT-Tiny image size {image_size} is not a multiple of the patch size {patch_size}")
        num_patches = (image_size // patch_size) ** 2
        self.to_patch_embedding = nn.Sequential(Patchify(patch_size), nn.Linear(3 * patch_size ** 2, dim))
        for p in self.to_patch_embedding.parameters():
            p.requires_grad = False  # SSL-small trains with a fixed random patch projection
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim))
        self.fc = nn.Identity()
        self.out_dim = dim

    def forward(self, img):
        x = self.to_patch_embedding(img)  # (B, N, 192)
        n = x.shape[1]
        if n + 1 > self.pos_embedding.shape[1]:
            raise ValueError(f"DeiT-Tiny input of {n} patches exceeds its position table of "
                             f"{self.pos_embedding.shape[1] - 1}: build it with a larger image_size")
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding[:, :n + 1]
        x = self.transformer(self.dropout(x))
        return self.fc(self.mlp_head(x[:, 0]))  # class token, (B, 192)
