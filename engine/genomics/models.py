"""The genomics models.

- ``dense``: the seed's dense network (models 1/2): standardised numeric features, missing
  indicators and one-hot categories -> Linear-ReLU-Dropout blocks -> 2 logits.
- ``dense_embed``: the same with a learned embedding of the detailed tumour type (model 3).
- ``gbm``: scikit-learn ``HistGradientBoostingClassifier`` on numeric values (NaN kept) and
  per-category positive rates.

The networks hold their preprocessing (medians, means, standard deviations, missing-indicator
columns) as buffers, so training, export and prediction apply exactly the same arithmetic.
torch and scikit-learn are imported inside the functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.errors import ConfigError
from engine.genomics.encode import Preprocessor

MODELS = ("dense", "dense_embed", "gbm")


def build_net(pre: Preprocessor, model: str, embed_column: str | None, hidden: tuple[int, ...], dropout: float,
              embed_dim: int) -> Any:
    """The torch network for ``dense`` / ``dense_embed``."""
    import torch
    from torch import nn

    class GenomicsNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("median", torch.tensor(pre.median, dtype=torch.float32))
            self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32))
            self.register_buffer("mask_idx", torch.tensor(pre.mask_columns, dtype=torch.int64))
            logmask = torch.zeros(len(pre.numeric), dtype=torch.bool)
            logmask[pre.log_columns] = True
            self.register_buffer("logmask", logmask)
            self.tables = nn.ModuleList()
            self.learned: list[bool] = []
            width = len(pre.numeric) + len(pre.mask_columns)
            for c, card in zip(pre.categorical, pre.cardinalities, strict=True):
                if model == "dense_embed" and c == embed_column:
                    emb = nn.Embedding(card, embed_dim)
                    self.learned.append(True)
                else:  # one-hot: a fixed identity table
                    emb = nn.Embedding(card, card)
                    emb.weight.data = torch.eye(card)
                    emb.weight.requires_grad_(False)
                    self.learned.append(False)
                self.tables.append(emb)
                width += emb.embedding_dim
            layers: list[nn.Module] = []
            for h in hidden:
                layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
                width = h
            layers.append(nn.Linear(width, 2))
            self.head = nn.Sequential(*layers)
            self.config = {"model": model, "embed_column": embed_column, "hidden": list(hidden), "dropout": dropout,
                           "embed_dim": embed_dim}

        def encode(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
            nan = torch.isnan(numeric)
            x = torch.where(nan, self.median.expand_as(numeric), numeric)
            x = torch.where(self.logmask, torch.log1p(torch.relu(x)), x)
            parts = [(x - self.mean) / self.std]
            if self.mask_idx.numel():
                parts.append(nan[:, self.mask_idx].float())
            parts += [t(codes[:, j]) for j, t in enumerate(self.tables)]
            return torch.cat(parts, dim=1)

        def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
            return self.head(self.encode(numeric, codes))

        def blocks(self) -> list[tuple[str, int]]:
            """``(feature name, width)`` of each part of :meth:`encode`'s output, in order."""
            out = [(c, 1) for c in pre.numeric]
            out += [(pre.numeric[j], 1) for j in pre.mask_columns]
            out += [(c, t.embedding_dim) for c, t in zip(pre.categorical, self.tables, strict=True)]
            return out

    return GenomicsNet()


def build_gbm(learning_rate: float, max_leaf_nodes: int, min_samples_leaf: int, l2: float, seed: int,
              n_numeric: int = 0, n_categorical: int = 0) -> Any:
    """A warm-startable ``HistGradientBoostingClassifier`` (iterations are added per epoch); the
    last ``n_categorical`` input columns are category codes split natively (set membership)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    if learning_rate <= 0 or max_leaf_nodes < 2 or min_samples_leaf < 1 or l2 < 0:
        raise ConfigError("gbm settings: learning rate > 0, max leaf nodes >= 2, min samples per leaf >= 1, l2 >= 0")
    return HistGradientBoostingClassifier(
        learning_rate=learning_rate, max_iter=0, max_leaf_nodes=max_leaf_nodes, min_samples_leaf=min_samples_leaf,
        l2_regularization=l2, early_stopping=False, warm_start=True, random_state=seed,
        categorical_features=[False] * n_numeric + [True] * n_categorical if n_categorical else None,
    )


def gbm_trees(clf: Any) -> dict[str, Any]:
    """The fitted trees as plain lists (for the ONNX TreeEnsemble), binary classification."""
    # with categorical features scikit-learn reorders its input (categories first, ordinal-encoded):
    # map split features back to our column order and category values back to our codes
    n_in = int(clf.n_features_in_)
    order = np.arange(n_in)
    categories: dict[int, np.ndarray] = {}
    if getattr(clf, "_preprocessor", None) is not None:
        is_cat = np.asarray(clf.is_categorical_, dtype=bool)
        order = np.r_[np.nonzero(is_cat)[0], np.nonzero(~is_cat)[0]]
        cats = clf._preprocessor.named_transformers_["encoder"].categories_
        categories = {k: np.asarray(c, dtype=np.float64) for k, c in enumerate(cats)}
    trees = []
    for predictors in clf._predictors:
        pred = predictors[0]
        nodes = pred.nodes
        cat = nodes["is_categorical"].astype(bool)
        members = {}
        for i in np.nonzero(cat & ~nodes["is_leaf"].astype(bool))[0]:
            words = pred.raw_left_cat_bitsets[nodes["bitset_idx"][i]]
            known = categories[int(nodes["feature_idx"][i])]
            members[int(i)] = [float(known[c]) for c in range(min(32 * len(words), len(known)))
                               if (int(words[c // 32]) >> (c % 32)) & 1]
        trees.append({
            "categorical": cat.astype(int).tolist(),
            "members": members,
            "feature": order[nodes["feature_idx"]].tolist(),
            "threshold": nodes["num_threshold"].tolist(),
            "left": nodes["left"].tolist(),
            "right": nodes["right"].tolist(),
            "missing_left": nodes["missing_go_to_left"].astype(int).tolist(),
            "leaf": nodes["is_leaf"].astype(int).tolist(),
            "value": nodes["value"].tolist(),
        })
    base = float(clf._baseline_prediction.ravel()[0])
    return {"base": base, "trees": trees}
