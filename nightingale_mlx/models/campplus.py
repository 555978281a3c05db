"""CAMPPlus x-vector (3D-Speaker / FunASR): the 192-d speaker embedding that conditions S3Gen (spec §5.2).

Channels-last throughout: the FCM front end sees the fbank as an image (B, freq, time, 1), the
TDNN part as (B, time, channels). BatchNorms that follow a conv are folded into it at conversion
(the conv gains a bias); those that precede a ReLU and a conv stay as eval-mode `nn.BatchNorm`.
1x1 convs are `nn.Linear` (their weights are squeezed by name at conversion).
"""

import mlx.core as mx
import mlx.nn as nn

from ..audio.fbank import kaldi_fbank
from ..config import CAMPPlusConfig

SEGMENT_FRAMES = 100  # CAMLayer's segment pooling length
FCM_BLOCKS = 2  # BasicResBlocks per FCM layer
FREQ_DOWNSAMPLE = 8  # FCM halves the frequency axis three times


class BatchNormReLU(nn.Module):
    """The reference's `get_nonlinear('batchnorm-relu')` Sequential, when its BN cannot be folded."""

    def __init__(self, channels: int):
        super().__init__()
        self.batchnorm = nn.BatchNorm(channels)

    def __call__(self, x):
        return nn.relu(self.batchnorm(x))


class BasicResBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1)  # + folded bn1
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1)  # + folded bn2
        # torch's Sequential(conv, bn) with the bn folded; empty when the shortcut is the identity.
        self.shortcut = [nn.Conv2d(in_planes, planes, 1, stride=(stride, 1))] if stride != 1 or in_planes != planes else []

    def __call__(self, x):
        out = self.conv2(nn.relu(self.conv1(x)))
        return nn.relu(out + (self.shortcut[0](x) if self.shortcut else x))


class FCM(nn.Module):
    def __init__(self, m: int, feat_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, m, 3, padding=1)
        # The reference builds both layers with num_blocks[0]; the first block of each has stride 2.
        self.layer1 = [BasicResBlock(m, m, 2 if i == 0 else 1) for i in range(FCM_BLOCKS)]
        self.layer2 = [BasicResBlock(m, m, 2 if i == 0 else 1) for i in range(FCM_BLOCKS)]
        self.conv2 = nn.Conv2d(m, m, 3, stride=(2, 1), padding=1)
        self.out_channels = m * (feat_dim // FREQ_DOWNSAMPLE)

    def __call__(self, feats):
        """(B, T, F) fbank -> (B, T, m * F/8), channel index c * F/8 + f as in torch's reshape."""
        x = feats.transpose(0, 2, 1)[..., None]  # (B, F, T, 1): freq is the image height
        x = nn.relu(self.conv1(x))
        for block in self.layer1 + self.layer2:
            x = block(x)
        x = nn.relu(self.conv2(x))  # (B, F/8, T, m)
        B, F, T, C = x.shape
        return x.transpose(0, 2, 3, 1).reshape(B, T, C * F)


class TDNNLayer(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear = nn.Conv1d(cin, cout, 5, stride=2, padding=2)  # + folded batchnorm

    def __call__(self, x):
        return nn.relu(self.linear(x))


def segment_pool(x: mx.array) -> mx.array:
    """avg_pool1d(k=s=100, ceil_mode=True) over time, each segment's mean repeated over its frames.

    The last, partial segment is averaged over its real length (spec §5.4a).
    """
    B, T, C = x.shape
    n = -(-T // SEGMENT_FRAMES)
    padded = mx.pad(x, [(0, 0), (0, n * SEGMENT_FRAMES - T), (0, 0)])
    sums = padded.reshape(B, n, SEGMENT_FRAMES, C).sum(axis=2)
    counts = mx.minimum(T - mx.arange(n) * SEGMENT_FRAMES, SEGMENT_FRAMES).astype(x.dtype)
    means = sums / counts[None, :, None]
    return mx.repeat(means, SEGMENT_FRAMES, axis=1)[:, :T]


class CAMLayer(nn.Module):
    def __init__(self, bn_channels: int, out_channels: int, dilation: int):
        super().__init__()
        self.linear_local = nn.Conv1d(bn_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.linear1 = nn.Linear(bn_channels, bn_channels // 2)
        self.linear2 = nn.Linear(bn_channels // 2, out_channels)

    def __call__(self, x):
        y = self.linear_local(x)
        context = x.mean(axis=1, keepdims=True) + segment_pool(x)
        return y * mx.sigmoid(self.linear2(nn.relu(self.linear1(context))))


class CAMDenseTDNNLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_channels: int, dilation: int):
        super().__init__()
        self.nonlinear1 = BatchNormReLU(cin)
        self.linear1 = nn.Linear(cin, bn_channels)  # 1x1 conv + folded nonlinear2.batchnorm
        self.cam_layer = CAMLayer(bn_channels, growth, dilation)

    def __call__(self, x):
        return self.cam_layer(nn.relu(self.linear1(self.nonlinear1(x))))


class CAMDenseTDNNBlock(nn.Module):
    """torch ModuleList with children named tdnnd1..tdnndN; each layer's output is concatenated."""

    def __init__(self, n_layers: int, cin: int, growth: int, bn_channels: int, dilation: int):
        super().__init__()
        self.n_layers = n_layers
        for i in range(n_layers):
            setattr(self, f"tdnnd{i + 1}", CAMDenseTDNNLayer(cin + i * growth, growth, bn_channels, dilation))

    def __call__(self, x):
        for i in range(self.n_layers):
            x = mx.concatenate([x, getattr(self, f"tdnnd{i + 1}")(x)], axis=-1)
        return x


class TransitLayer(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.nonlinear = BatchNormReLU(cin)
        self.linear = nn.Linear(cin, cout, bias=False)

    def __call__(self, x):
        return self.linear(self.nonlinear(x))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear = nn.Linear(cin, cout)  # 1x1 conv + folded BatchNorm1d(affine=False)

    def __call__(self, x):
        return self.linear(x)


class XVector(nn.Module):
    def __init__(self, cfg: CAMPPlusConfig, cin: int):
        super().__init__()
        self.tdnn = TDNNLayer(cin, cfg.init_channels)
        channels = cfg.init_channels
        self.n_blocks = len(cfg.block_layers)
        for i, (n, d) in enumerate(zip(cfg.block_layers, cfg.block_dilations)):
            setattr(self, f"block{i + 1}", CAMDenseTDNNBlock(n, channels, cfg.growth_rate, cfg.bn_channels, d))
            channels += n * cfg.growth_rate
            setattr(self, f"transit{i + 1}", TransitLayer(channels, channels // 2))
            channels //= 2
        self.out_nonlinear = BatchNormReLU(channels)
        self.dense = DenseLayer(2 * channels, cfg.embedding_size)

    def __call__(self, x):
        x = self.tdnn(x)
        for i in range(self.n_blocks):
            x = getattr(self, f"transit{i + 1}")(getattr(self, f"block{i + 1}")(x))
        x = self.out_nonlinear(x)
        # StatsPool: mean and unbiased std over time, in fp32 (fp16 squares overflow above 256).
        dtype, x = x.dtype, x.astype(mx.float32)
        mean = x.mean(axis=1)
        std = mx.sqrt(((x - mean[:, None]) ** 2).sum(axis=1) / (x.shape[1] - 1))
        return self.dense(mx.concatenate([mean, std], axis=-1).astype(dtype))


class CAMPPlus(nn.Module):
    def __init__(self, cfg: CAMPPlusConfig):
        super().__init__()
        self.cfg = cfg
        self.head = FCM(cfg.m_channels, cfg.feat_dim)
        self.xvector = XVector(cfg, self.head.out_channels)
        self.eval()  # inference only: BatchNorms use their running statistics

    def __call__(self, feats: mx.array) -> mx.array:
        """(B, T, feat_dim) mean-normalised fbank -> (B, embedding_size)."""
        return self.xvector(self.head(feats))

    def embed_wav(self, wav16) -> mx.array:
        """`CAMPPlus.inference([wav])`: Kaldi fbank, mean subtraction, network -> (1, embedding_size)."""
        feats = kaldi_fbank(wav16, num_mel_bins=self.cfg.feat_dim)
        return self(feats[None].astype(self.head.conv1.weight.dtype)).astype(mx.float32)
