"""PyTorch twins of cpac_jax's models, for the benchmarks that time us
against PyTorch (they need the bench extra: pip install -e ".[bench]")."""

import torch

__all__ = ["CNN", "CPACNet", "OfficialCPConv", "ViT", "vgg16"]


class CPACNet(torch.nn.Module):
  """The official CPAC-CNN two-conv net: 3x3 convs of 8 filters, no bias,
  no padding, each then 2x2 max-pool and ReLU; FC 200->50->10."""

  def __init__(self, conv):
    super().__init__()
    self.convs = torch.nn.ModuleList([conv(1, 8), conv(8, 8)])
    self.fc1, self.fc2 = torch.nn.Linear(200, 50), torch.nn.Linear(50, 10)

  def forward(self, x):
    for conv in self.convs:
      x = torch.relu(torch.nn.functional.max_pool2d(conv(x), 2))
    return self.fc2(self.fc1(torch.flatten(x, 1)))


class OfficialCPConv(torch.nn.Module):
  """The official code's CP conv (CPAC-CNN-GPU/conv_decomp_torch.py), for
  one image: unfold its 3x3 patches, then for each rank contract them with
  the channel, width and height factors and take the outer product with the
  filter factor, summing over the ranks. Its factors here are random (the
  official code takes CP-ALS of a random kernel; the cost is the same)."""

  def __init__(self, cin, cout, rank=5, size=3):
    super().__init__()
    self.rank, self.size, self.cout = rank, size, cout
    self.factors = torch.nn.ParameterList([torch.nn.Parameter(
        torch.randn(n, rank) / 3) for n in (cout, size, size, cin)])

  def forward(self, x):
    (image,) = x  # (C, H, W): the official loop's batch of one
    k = self.size
    patches = image.unfold(1, k, 1).unfold(2, k, 1)  # (C, H', W', k, k)
    c, h, w = patches.shape[:3]
    patches = patches.reshape(c, h * w, k, k).permute(1, 2, 3, 0)
    out, (f_out, f_h, f_w, f_in) = 0, self.factors
    for r in range(self.rank):
      y = torch.einsum("abcd,d->abc", patches, f_in[:, r])
      y = torch.einsum("abc,c->ab", y, f_w[:, r])
      y = torch.einsum("ab,b->a", y, f_h[:, r])
      out = out + torch.einsum("a,b->ab", y, f_out[:, r])
    return out.reshape(h, w, self.cout).permute(2, 0, 1)[None]


def vgg16(conv) -> torch.nn.Sequential:
  """VGG-16 with batch norm as `cpac_jax.models.VGG16`: `conv(cin, cout,
  index)` makes each 3x3 conv."""
  stages = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512,
            "M", 512, 512, 512, "M"]
  layers, channels = [], 3
  for width in stages:
    if width == "M":
      layers.append(torch.nn.MaxPool2d(2))
      continue
    layers += [conv(channels, width, len(layers)),
               torch.nn.BatchNorm2d(width), torch.nn.ReLU()]
    channels = width
  layers += [torch.nn.Flatten(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
             torch.nn.Linear(512, 512), torch.nn.ReLU(),
             torch.nn.Linear(512, 10)]
  return torch.nn.Sequential(*layers)


class CNN(torch.nn.Module):
  """`cpac_jax.models.CNN` (dense): 3x3 convs with bias, padding 1, each
  then batch norm and ReLU, 2x2 max-pools where `widths` says "M"; the
  mean over the image and one linear classifier."""

  def __init__(self, widths=(32, "M", 32, 64, "M", 64, 128), channels=1,
               num_classes=10):
    super().__init__()
    layers = []
    for width in widths:
      if width == "M":
        layers.append(torch.nn.MaxPool2d(2))
        continue
      layers += [torch.nn.Conv2d(channels, width, 3, padding=1),
                 torch.nn.BatchNorm2d(width), torch.nn.ReLU()]
      channels = width
    self.features = torch.nn.Sequential(*layers)
    self.out = torch.nn.Linear(channels, num_classes)

  def forward(self, x):
    return self.out(self.features(x).mean(dim=(2, 3)))


class ViT(torch.nn.Module):
  """`cpac_jax.models.ViT`: patches embedded by a conv of their size and
  stride plus a learned position embedding, `depth` pre-norm
  `torch.nn.TransformerEncoderLayer`s (multi-head attention, an MLP of
  `mlp_ratio` x `width` hidden units, no dropout), a layer norm, the mean
  over the patches and a linear classifier; the same parameters. Its GELU
  is PyTorch's default, exact one where nnx.gelu is the tanh
  approximation: an elementwise op either way."""

  def __init__(self, input_shape=(28, 28, 1), num_classes=10, depth=4,
               width=128, heads=4, patch=7, mlp_ratio=2):
    super().__init__()
    height, width_px, channels = input_shape
    self.patches = torch.nn.Conv2d(channels, width, patch, stride=patch)
    count = (height // patch) * (width_px // patch)
    self.position = torch.nn.Parameter(0.02 * torch.randn(count, width))
    self.blocks = torch.nn.ModuleList([torch.nn.TransformerEncoderLayer(
        width, heads, mlp_ratio * width, dropout=0.0, activation="gelu",
        layer_norm_eps=1e-6, batch_first=True, norm_first=True)
        for _ in range(depth)])
    self.norm = torch.nn.LayerNorm(width, eps=1e-6)
    self.head = torch.nn.Linear(width, num_classes)

  def forward(self, x):
    x = self.patches(x).flatten(2).transpose(1, 2) + self.position
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x).mean(dim=1))
