"""Batched augmentation on the training device (the device half of ``src.augment.split``): colour jitter,
grayscale, Gaussian blur, solarization, horizontal flip and normalisation of a whole batch of crops, with
per-sample random parameters. Each op follows torchvision's per-sample semantics (``transforms.v2``: same ops,
order, ranges and formulas) on float images in [0, 1]:

- ColorJitter(b, c, s, h) with probability ``jitter_p``: factors ~ U[max(0, 1 - x), 1 + x], hue ~ U[-h, h], the
  four ops in a per-sample random order; brightness blends with black, contrast with the mean luma, saturation
  with the luma image, each clamped to [0, 1]; hue rotates H in HSV space.
- RandomGrayscale(p): the luma copied to the three channels.
- Gaussian blur with probability ``blur_p``, sigma ~ U[sigma_min, sigma_max], reflect padding. ``blur_kernel``
  fixes the kernel side (torchvision's blur, SCE); 0 sizes it 2 ceil(3 sigma_max) + 1, the stand-in for PIL's
  radius blur (SwAV, MoCo v2), which Pillow approximates with three box blurs (tests/test_device_augment.py).
- Solarize with probability ``solarize_p``: pixels >= 128/255 become 1 - x.
- Horizontal flip with probability ``flip_p``, then ``(x - mean) / std``.

The flip runs first: every other op is pixel-wise, a symmetric filter with symmetric padding or uses the image
mean, so it commutes with them. Staying in float, the results differ from the 8-bit per-sample path by less than
its rounding. No host sync: the choices are tensors used in ``torch.where`` blends, never Python branches.

    augment = swav_recipe([224, 96], [2, 6], [0.14, 0.05], [1, 0.14]).device()   # src.augment.recipes
    g = torch.Generator(device).manual_seed(0)
    crops = augment([c.to(device) for c in uint8_crops], g)   # list of (B, 3, s, s) float, normalised
"""
import torch
import torch.nn.functional as F

LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2, the weights of torchvision's rgb_to_grayscale
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3  # op ids in a jitter order


def _uniform(n, lo, hi, generator, device):
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def draw_params(view, n, generator, device):
    """Per-sample random parameters of ``view`` for ``n`` crops (the draw of each torchvision transform).

    Args:
        view: :class:`ViewAug`. n: number of crops. generator: ``torch.Generator`` on ``device``.
    Returns:
        dict of tensors on ``device``: ``jitter`` (n,) bool, ``factors`` (n, 3) brightness / contrast /
        saturation, ``hue`` (n,), ``order`` (n, 4) a permutation of the op ids per sample, ``grey`` (n,) bool,
        ``blur`` (n,) bool, ``sigma`` (n,), ``solarize`` (n,) bool, ``flip`` (n,) bool.
    """
    def coin(p):
        return torch.rand(n, generator=generator, device=device) < p

    (b, c, s, h) = view.ranges()
    return {"jitter": coin(view.jitter_p),
            "factors": torch.stack([_uniform(n, *r, generator, device) for r in (b, c, s)], dim=1),
            "hue": _uniform(n, *h, generator, device),
            "order": torch.rand(n, 4, generator=generator, device=device).argsort(dim=1),  # uniform permutations
            "grey": coin(view.grey_p),
            "blur": coin(view.blur_p), "sigma": _uniform(n, *view.blur_sigma, generator, device),
            "solarize": coin(view.solarize_p),
            "flip": coin(view.flip_p)}


def _col(t):
    """(n,) -> (n, 1, 1, 1), to broadcast a per-sample value over (n, C, H, W)."""
    return t.view(-1, 1, 1, 1)


def luma(x):
    """(n, 3, H, W) -> (n, 1, H, W): 0.2989 R + 0.587 G + 0.114 B."""
    return (x[:, 0:1] * LUMA[0] + x[:, 1:2] * LUMA[1]) + x[:, 2:3] * LUMA[2]


def _blend_step(x, op, factors, active):
    """One brightness / contrast / saturation op per sample: ``clamp(f x + (1 - f) ref, 0, 1)`` with ref black,
    the luma mean or the luma image; samples not ``active`` get f = 1 (exactly x)."""
    grey = luma(x)  # (n, 1, H, W)
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    # ref = 0 (brightness), mean (contrast) or grey (saturation), as 0/1 weights: no full-size where
    ref = grey * _col((op == SATURATION).to(x.dtype)) + mean * _col((op == CONTRAST).to(x.dtype))
    f = torch.where(active, factors.gather(1, op.clamp(max=2)[:, None])[:, 0], torch.ones_like(factors[:, 0]))
    f = _col(f)
    return torch.addcmul(ref * (1 - f), x, f).clamp_(0, 1)


def adjust_hue(x, shift):
    """Rotate the hue of every pixel of sample i by ``shift[i]`` turns (torchvision ``adjust_hue``).

    Args:
        x: (n, 3, H, W) in [0, 1]. shift: (n,) in [-0.5, 0.5].
    Returns:
        (n, 3, H, W) in [0, 1].
    """
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    flat = delta == 0
    s = delta / torch.where(flat, torch.ones_like(maxc), maxc)
    safe = torch.where(flat, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = (h / 6.0 + 1.0).remainder(1.0)
    h = (h + shift.view(-1, 1, 1)).remainder(1.0)
    # HSV -> RGB: sector i = floor(6 h), fraction f; each channel is one of v, p, q, t
    h6 = h * 6.0
    i = h6.floor()
    f = h6 - i
    v = maxc
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    vpqt = torch.stack((v, p, q, t), dim=1)  # (n, 4, H, W)
    table = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=x.device)  # (3, 6)
    idx = table[:, i.long().remainder(6)].transpose(0, 1)  # (n, 3, H, W)
    return vpqt.gather(1, idx)


def color_jitter(x, params):
    """ColorJitter with a per-sample op order; samples with ``params['jitter']`` False are unchanged.

    The three blend ops before the hue in a sample's order run, then the hue, then the blend ops after it: six
    cheap blend passes and one hue pass for the batch, whatever the orders.
    """
    on, order = params["jitter"], params["order"]
    hue_slot = (order == HUE).long().argmax(dim=1)  # (n,)
    j = torch.arange(3, device=x.device)[None]
    blend_order = order.gather(1, j + (j >= hue_slot[:, None]).long())  # (n, 3): the order without the hue
    for k in range(3):
        x = _blend_step(x, blend_order[:, k], params["factors"], on & (k < hue_slot))
    hue_on = on & (params["hue"] != 0)
    x = torch.where(_col(hue_on), adjust_hue(x, params["hue"]), x)
    for k in range(3):
        x = _blend_step(x, blend_order[:, k], params["factors"], on & (k >= hue_slot))
    return x


def gaussian_kernels(sigma, blur, size):
    """Per-sample 1-D Gaussian kernels; a sample without blur gets the identity (a centred 1).

    Args:
        sigma: (n,) standard deviations, pixels. blur: (n,) bool. size: odd kernel side.
    Returns:
        (n, size) rows summing to 1.
    """
    offsets = torch.arange(size, device=sigma.device, dtype=sigma.dtype) - size // 2
    w = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None] ** 2))
    w = w / w.sum(dim=1, keepdim=True)
    delta = (offsets == 0).to(w.dtype)[None].expand_as(w)
    return torch.where(blur[:, None], w, delta)


def gaussian_blur(x, kernels):
    """Separable blur of sample i with ``kernels[i]`` (reflect padding, torchvision's).

    Args:
        x: (n, C, H, W) float. kernels: (n, k) with k odd.
    Returns:
        (n, C, H, W).
    """
    n, c, hgt, wid = x.shape
    pad = kernels.shape[1] // 2
    if pad >= min(hgt, wid):  # reflect padding needs pad < side: cut the kernel's tails (tiny crops only)
        cut = pad - min(hgt, wid) + 1
        kernels = kernels[:, cut:kernels.shape[1] - cut]
        kernels = kernels / kernels.sum(dim=1, keepdim=True)
        pad = kernels.shape[1] // 2
    k = kernels.repeat_interleave(c, dim=0)  # (n*C, k): one filter per channel of each sample
    y = x.reshape(1, n * c, hgt, wid)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, hgt, wid)


def apply_view(view, x, params):
    """Augment a batch of crops of one view with given parameters (see :func:`draw_params`).

    Args:
        view: :class:`ViewAug`. x: (n, 3, H, W) uint8 (0-255) or float (0-1). params: from :func:`draw_params`.
    Returns:
        (n, 3, H, W) float32, normalised with ``view.mean`` / ``view.std``.
    """
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    x = torch.where(_col(params["flip"]), x.flip(-1), x)  # commutes with everything below
    if view.grey_first and view.grey_p > 0:
        x = torch.where(_col(params["grey"]), luma(x).expand_as(x), x)
    if view.jitter_p > 0 and any(view.jitter):
        x = color_jitter(x, params)
    if not view.grey_first and view.grey_p > 0:
        x = torch.where(_col(params["grey"]), luma(x).expand_as(x), x)
    if view.blur_p > 0:
        x = gaussian_blur(x, gaussian_kernels(params["sigma"], params["blur"], view.kernel_size()))
    if view.solarize_p > 0:
        x = torch.where(_col(params["solarize"]) & (x >= view.solarize_threshold), 1 - x, x)
    mean = torch.tensor(view.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(view.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def layout(memory_format, ndim):
    """``memory_format`` for a tensor of ``ndim`` dimensions: channels-last becomes ``torch.channels_last_3d`` for
    5-D clips (B, C, T, H, W); other formats pass through."""
    if ndim == 5 and memory_format == torch.channels_last:
        return torch.channels_last_3d
    return memory_format


class MultiCropAugment:
    """The device half of a multi-crop pipeline: one :class:`ViewAug` per crop index.

    Consecutive crops with the same view and the same size are augmented as one batch (SwAV's 6 small crops:
    one call on 6B images). Clips (5-D crops) are augmented frame by frame with one draw per clip.

    Args:
        views: list of :class:`ViewAug`, ``views[i]`` for crop i.
    """

    def __init__(self, views):
        self.views = list(views)

    def __call__(self, crops, generator, memory_format=torch.contiguous_format):
        """Args:
            crops: list of V tensors, uint8, on the device: images (B, 3, s_v, s_v), or clips (B, 3, T, s_v, s_v)
                whose T frames share one parameter draw per clip (video).
            generator: on the same device.
            memory_format: of the returned tensors (``torch.channels_last`` for channels-last models; clips get
                its 3-D form).
        Returns:
            list of V float tensors of the input shapes, augmented and normalised.
        """
        assert len(crops) == len(self.views), f"{len(crops)} crops for {len(self.views)} views"
        out, start = [], 0
        while start < len(crops):
            end = start + 1
            while (end < len(crops) and self.views[end] == self.views[start]
                   and crops[end].shape == crops[start].shape):
                end += 1
            x = crops[start] if end - start == 1 else torch.cat(crops[start:end])
            params = draw_params(self.views[start], x.shape[0], generator, x.device)
            if x.dim() == 5:  # clips (n, 3, T, s, s): augment the n*T frames, each clip's draw repeated T times
                n, c, t, h, w = x.shape
                frames = x.transpose(1, 2).reshape(n * t, c, h, w)
                params = {k: v.repeat_interleave(t, dim=0) for k, v in params.items()}
                y = apply_view(self.views[start], frames, params).reshape(n, t, c, h, w).transpose(1, 2)
            else:
                y = apply_view(self.views[start], x, params)
            y = y.contiguous(memory_format=layout(memory_format, y.dim()))
            out += list(y.chunk(end - start)) if end - start > 1 else [y]
            start = end
        return out

    def __repr__(self):
        return f"MultiCropAugment({self.views})"
