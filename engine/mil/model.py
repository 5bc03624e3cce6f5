"""Gated attention MIL (Ilse, Tomczak & Welling 2018) with an optional clinical branch.

One bag = the N patch embeddings of a slide. Attention pools them into one slide embedding; the
clinical branch (BALNMP's DL-CNB+C) embeds categorical codes and passes the normalised numeric
values with their missing indicators through a small MLP; both are concatenated before the
classifier. Batch size is one bag, as in the paper: bags differ in size.

torch is imported at module import: import this module lazily (never on the viewing path).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from engine.errors import ConfigError

ATTENTION_KINDS = ("gated", "tanh")


@dataclass(frozen=True, slots=True)
class MILModelConfig:
    """Architecture of :class:`GatedAttentionMIL`.

    Attributes:
        feature_dim: D, size of one patch embedding.
        num_classes: C, output classes (2 for N0 vs N+).
        hidden_dim: H, size of the projected instance embedding.
        attention_dim: A, size of the attention MLP.
        dropout: dropout after the projection and in the classifier.
        numeric_dim: width of the clinical numeric input (z-scores + missing indicators); 0 = none.
        cardinalities: embedding table size per categorical clinical column.
        embed_dim: embedding size per categorical column.
        clinical_dim: size of the clinical branch output.
        attention: ``"gated"`` (Ilse et al.'s gated attention, the default) or ``"tanh"`` (their
            plain attention ``w^T tanh(V h)``, as BALNMP published).
    """

    feature_dim: int
    num_classes: int
    hidden_dim: int = 128
    attention_dim: int = 64
    dropout: float = 0.25
    numeric_dim: int = 0
    cardinalities: tuple[int, ...] = ()
    embed_dim: int = 4
    clinical_dim: int = 16
    attention: str = "gated"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"attention must be one of {', '.join(ATTENTION_KINDS)}, got {self.attention!r}")
        if self.feature_dim < 1 or self.num_classes < 2:
            raise ConfigError("MIL model needs feature_dim >= 1 and at least two classes")
        if self.hidden_dim < 1 or self.attention_dim < 1 or self.embed_dim < 1 or self.clinical_dim < 1:
            raise ConfigError("MIL model sizes must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.numeric_dim < 0 or any(c < 1 for c in self.cardinalities):
            raise ConfigError("invalid clinical input sizes")

    @property
    def has_clinical(self) -> bool:
        return self.numeric_dim > 0 or bool(self.cardinalities)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cardinalities"] = list(self.cardinalities)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MILModelConfig:
        try:
            kw = dict(d)
            kw["cardinalities"] = tuple(int(c) for c in kw.get("cardinalities", ()))
            return cls(**kw)
        except TypeError as exc:
            raise ConfigError(f"invalid MIL model config: {exc}") from exc


class ClinicalBranch(nn.Module):
    """Clinical values -> a ``clinical_dim`` vector (embeddings + numeric, then an MLP)."""

    def __init__(
        self, numeric_dim: int, cardinalities: Sequence[int], embed_dim: int, out_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.numeric_dim = numeric_dim
        self.embeddings = nn.ModuleList(nn.Embedding(c, embed_dim) for c in cardinalities)
        in_dim = numeric_dim + embed_dim * len(cardinalities)
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        # numeric: 1 x Kn, codes: 1 x Kc (int64)
        parts = [numeric] if self.numeric_dim > 0 else []
        parts += [emb(codes[:, j]) for j, emb in enumerate(self.embeddings)]  # each 1 x E
        return self.mlp(torch.cat(parts, dim=1))  # 1 x Hc


class GatedAttentionMIL(nn.Module):
    """Gated attention pooling + optional clinical fusion + linear classifier."""

    def __init__(self, cfg: MILModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # per-dimension standardisation of the embeddings, fitted on the training tiles and kept
        # in the module so the exported ONNX graph applies it too
        self.register_buffer("feature_mean", torch.zeros(cfg.feature_dim))
        self.register_buffer("feature_std", torch.ones(cfg.feature_dim))
        self.project = nn.Sequential(nn.Linear(cfg.feature_dim, cfg.hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.attention_v = nn.Sequential(nn.Linear(cfg.hidden_dim, cfg.attention_dim), nn.Tanh())
        self.attention_u = (
            nn.Sequential(nn.Linear(cfg.hidden_dim, cfg.attention_dim), nn.Sigmoid()) if cfg.attention == "gated" else None
        )
        self.attention_w = nn.Linear(cfg.attention_dim, 1)
        self.clinical = (
            ClinicalBranch(cfg.numeric_dim, cfg.cardinalities, cfg.embed_dim, cfg.clinical_dim, cfg.dropout)
            if cfg.has_clinical
            else None
        )
        fused = cfg.hidden_dim + (cfg.clinical_dim if self.clinical is not None else 0)
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(fused, cfg.num_classes))

    def forward(
        self,
        features: torch.Tensor,
        numeric: torch.Tensor | None = None,
        codes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score one bag.

        Args:
            features: ``float32 (N, D)`` patch embeddings of one slide.
            numeric: ``float32 (1, Kn)`` clinical z-scores + missing indicators (clinical models).
            codes: ``int64 (1, Kc)`` categorical codes (clinical models).

        Returns:
            ``(logits (1, C), attention (N,))``; attention sums to 1 over the bag.
        """
        x = (features - self.feature_mean) / self.feature_std  # N x D
        h = self.project(x)  # N x H
        v = self.attention_v(h)  # N x A
        a = self.attention_w(v * self.attention_u(h) if self.attention_u is not None else v)  # N x 1
        attention = torch.softmax(a.squeeze(1), dim=0)  # N
        slide = attention.unsqueeze(0) @ h  # 1 x H
        if self.clinical is not None:
            if numeric is None:
                numeric = features.new_zeros((1, self.cfg.numeric_dim))
            if codes is None:
                codes = torch.zeros((1, len(self.cfg.cardinalities)), dtype=torch.int64, device=features.device)
            slide = torch.cat([slide, self.clinical(numeric, codes)], dim=1)  # 1 x (H + Hc)
        return self.classifier(slide), attention  # 1 x C, N

    def set_feature_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise inputs with these ``(D,)`` statistics (std floored to avoid division by ~0)."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(torch.clamp(std, min=1e-4))


class _ExportWrapper(nn.Module):
    """ONNX-facing module: probabilities instead of logits, inputs named for the package."""

    def __init__(self, model: GatedAttentionMIL) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, *clinical: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        numeric = codes = None
        idx = 0
        if self.model.cfg.numeric_dim > 0:
            numeric = clinical[idx]
            idx += 1
        if self.model.cfg.cardinalities:
            codes = clinical[idx]
        logits, attention = self.model(features, numeric, codes)
        return torch.softmax(logits, dim=1), attention  # 1 x C, N


def export_onnx(model: GatedAttentionMIL, path: str) -> list[str]:
    """Write the aggregator as ONNX with a variable bag size (dynamic N axis).

    Inputs: ``features (N, D)`` float32, then ``clinical_numeric (1, Kn)`` float32 and
    ``clinical_codes (1, Kc)`` int64 when the model has them. Outputs: ``probabilities (1, C)``
    and ``attention (N,)``.

    Returns:
        The input names in order.
    """
    cfg = model.cfg
    wrapper = _ExportWrapper(model).eval()
    names = ["features"]
    args: list[torch.Tensor] = [torch.randn(7, cfg.feature_dim)]
    if cfg.numeric_dim > 0:
        names.append("clinical_numeric")
        args.append(torch.zeros(1, cfg.numeric_dim))
    if cfg.cardinalities:
        names.append("clinical_codes")
        args.append(torch.zeros(1, len(cfg.cardinalities), dtype=torch.int64))
    # the legacy exporter handles this small graph reliably and writes one self-contained file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            tuple(args),
            path,
            input_names=names,
            output_names=["probabilities", "attention"],
            dynamic_axes={"features": {0: "n_tiles"}, "attention": {0: "n_tiles"}},
            opset_version=17,
            dynamo=False,
        )
    return names
