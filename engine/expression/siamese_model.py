"""The CancerSiamese networks (torch): a 1D-CNN encoder shared by a type classifier (pre-training)
and a Siamese network (two weight-sharing branches, element-wise |a - b|, dense layers, sigmoid
"same type"), plus the ONNX export of the embedding branch and the similarity head.

Import this module lazily: it imports torch.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class SiameseModelConfig:
    n_genes: int
    channels: tuple[int, ...] = (8, 16, 32)
    kernels: tuple[int, ...] = (7, 5, 3)
    embed_dim: int = 128
    head_dim: int = 64
    dropout: float = 0.3
    corr_skip: bool = True  # the head also sees the Pearson correlation of the two profiles
    corr_init: float = 10.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"], d["kernels"] = list(self.channels), list(self.kernels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SiameseModelConfig:
        d = dict(d)
        d["channels"], d["kernels"] = tuple(d["channels"]), tuple(d["kernels"])
        return cls(**d)

    @property
    def output_dim(self) -> int:
        """Width of the exported embedding: the learned part (+ the unit profile with corr_skip)."""
        return self.embed_dim + (self.n_genes if self.corr_skip else 0)


class Encoder(nn.Module):
    """Profile (B, G) -> embedding (B, D): conv/BN/ReLU/max-pool blocks, flatten, dense.

    With ``corr_skip`` the output also carries the profile centred and scaled to unit length
    (B, G), so the head can use the Pearson correlation of two profiles (a skip connection: the
    network learns what to add to the correlation). ``center`` / ``scale`` undo the per-gene
    standardisation for that part."""

    def __init__(self, cfg: SiameseModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("center", torch.zeros(cfg.n_genes))
        self.register_buffer("scale", torch.ones(cfg.n_genes))
        if cfg.corr_skip:  # learned gene weights of the correlation (softplus, mean 1; all 1 at start)
            self.gene_weight = nn.Parameter(torch.full((cfg.n_genes,), 0.5413))
        layers: list[nn.Module] = []
        c_in, length = 1, cfg.n_genes
        for c, k in zip(cfg.channels, cfg.kernels, strict=True):
            layers += [nn.Conv1d(c_in, c, k, padding=k // 2), nn.BatchNorm1d(c), nn.ReLU()]
            if length >= 4:
                layers.append(nn.MaxPool1d(2))
                length //= 2
            c_in = c
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(c_in * length, cfg.embed_dim)
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def set_normalisation(self, center: np.ndarray, scale: np.ndarray) -> None:
        self.center.copy_(torch.from_numpy(np.asarray(center, np.float32)))
        self.scale.copy_(torch.from_numpy(np.asarray(scale, np.float32)))

    def learned(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.unsqueeze(1)).flatten(1)
        return self.norm(self.fc(self.dropout(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.learned(x)
        if not self.cfg.corr_skip:
            return e
        return torch.cat([e, self.unit_profile(x)], dim=1)

    def weights(self) -> torch.Tensor:
        w = nn.functional.softplus(self.gene_weight)
        return w / w.mean()

    def unit_profile(self, x: torch.Tensor) -> torch.Tensor:
        """The profile centred with the gene weights and scaled to unit length: the dot product of
        two of them is their gene-weighted Pearson correlation."""
        w = self.weights()
        v = x * self.scale + self.center
        v = v - (v * w).sum(dim=1, keepdim=True) / w.sum()
        v = v * torch.sqrt(w)
        return v / torch.clamp(torch.sqrt((v * v).sum(dim=1, keepdim=True)), min=1e-6)


class TypeClassifier(nn.Module):
    """Encoder + linear layer over the training types (pre-training)."""

    def __init__(self, cfg: SiameseModelConfig, n_types: int) -> None:
        super().__init__()
        self.encoder = Encoder(cfg)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.embed_dim, n_types))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.learned(x))


class SimilarityHead(nn.Module):
    """Logit of "same type" from two embeddings: dense layers over |a - b| of the CNN part,
    weighted by ``cnn_weight``, plus (with ``corr_skip``) ``alpha`` times the gene-weighted
    correlation of the two profiles (the dot product of their unit profiles, i.e. 1 - half their
    squared L2 distance) and a bias."""

    def __init__(self, cfg: SiameseModelConfig) -> None:
        super().__init__()
        self.d = cfg.embed_dim
        self.corr_skip = cfg.corr_skip
        self.net = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.head_dim), nn.ReLU(), nn.Linear(cfg.head_dim, 1))
        self.register_buffer("cnn_weight", torch.tensor(1.0))
        if cfg.corr_skip:
            self.alpha = nn.Parameter(torch.tensor(float(cfg.corr_init)))
            self.bias = nn.Parameter(torch.tensor(-0.5 * float(cfg.corr_init)))

    def parts(self, ea: torch.Tensor, eb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(CNN-distance logit, correlation logit or None)."""
        d = self.d
        cnn = self.net(torch.abs(ea[:, :d] - eb[:, :d])).squeeze(-1)
        if not self.corr_skip:
            return cnn, None
        return cnn, self.alpha * (ea[:, d:] * eb[:, d:]).sum(dim=-1) + self.bias

    def forward(self, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        cnn, corr = self.parts(ea, eb)
        return cnn if corr is None else self.cnn_weight * cnn + corr


class SiameseNet(nn.Module):
    def __init__(self, cfg: SiameseModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.head = SimilarityHead(cfg)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logit that ``a`` and ``b`` are of the same type."""
        return self.head(self.encoder(a), self.encoder(b))


class _ExportWrapper(nn.Module):
    """ONNX graph: ``expression (B, G)`` log values in gene order -> ``embedding (B, D)``, and
    ``embedding_a, embedding_b (P, D)`` -> ``similarity (P,)`` (sigmoid). Normalisation inside."""

    def __init__(self, net: SiameseNet, center: np.ndarray, scale: np.ndarray, sample_norm: bool) -> None:
        super().__init__()
        self.net = net
        self.sample_norm = sample_norm
        self.register_buffer("center", torch.from_numpy(np.asarray(center, np.float32)))
        self.register_buffer("scale", torch.from_numpy(np.asarray(scale, np.float32)))

    def forward(self, x: torch.Tensor, ea: torch.Tensor, eb: torch.Tensor):
        if self.sample_norm:
            mu = x.mean(dim=1, keepdim=True)
            sd = torch.sqrt(((x - mu) ** 2).mean(dim=1, keepdim=True))
            x = (x - mu) / torch.clamp(sd, min=1e-6)
        x = (x - self.center) / self.scale
        emb = self.net.encoder(x)
        sim = torch.sigmoid(self.net.head(ea, eb))
        return emb, sim


def export_onnx(net: SiameseNet, center: np.ndarray, scale: np.ndarray, sample_norm: bool, path: str) -> None:
    """Write the embedding branch + similarity head as one ONNX file (see :class:`_ExportWrapper`)."""
    wrapper = _ExportWrapper(net, center, scale, sample_norm).eval()
    d = net.cfg.output_dim
    args = (torch.randn(3, net.cfg.n_genes), torch.randn(5, d), torch.randn(5, d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, args, path,
            input_names=["expression", "embedding_a", "embedding_b"],
            output_names=["embedding", "similarity"],
            dynamic_axes={"expression": {0: "n"}, "embedding": {0: "n"}, "embedding_a": {0: "p"},
                          "embedding_b": {0: "p"}, "similarity": {0: "p"}},
            opset_version=17, dynamo=False,
        )
