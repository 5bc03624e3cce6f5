"""The genomics models.

- ``dense``: the seed's dense network (models 1/2): standardised numeric features, missing
  indicators and one-hot categories -> Linear-ReLU-Dropout blocks -> 2 logits.
- ``dense_embed``: the same with a learned embedding of the detailed tumour type (model 3).
- ``gbm``: a :class:`GbmBag` of scikit-learn ``HistGradientBoostingClassifier`` members (numeric
  values with NaN kept, category codes split natively), each on its own share of the training
  patients and a random half of the features per split; it predicts their mean raw score.

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


class GbmBag:
    """The mean raw score of ``len(members)`` boosted-tree members (bagging), one tree ensemble.

    Member ``k`` is fitted on its own random share ``keep`` of the training patients (drawn with
    ``seed + k``; the same share at every warm-started fit); a single member sees every row.
    ``max_iter`` (iterations per member) is set for all members at once.
    """

    def __init__(self, members: list[Any], keep: float, seed: int) -> None:
        self.members, self.keep, self.seed = members, keep, seed

    @property
    def max_iter(self) -> int:
        return int(self.members[0].max_iter)

    @max_iter.setter
    def max_iter(self, value: int) -> None:
        for m in self.members:
            m.max_iter = value

    @property
    def n_iter_(self) -> int:
        return min(int(m.n_iter_) for m in self.members)

    def member_rows(self, k: int, groups: np.ndarray | None, n: int) -> np.ndarray:
        """Rows of member ``k``: the rows of a random share ``keep`` of the distinct groups."""
        if len(self.members) == 1 or self.keep >= 1:
            return np.arange(n)
        g = np.asarray(groups if groups is not None else np.arange(n)).astype(str)
        uniq = np.unique(g)
        rng = np.random.default_rng(self.seed * 7919 + k)
        chosen = rng.choice(uniq, size=max(2, int(round(self.keep * len(uniq)))), replace=False)
        return np.nonzero(np.isin(g, chosen))[0]

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> GbmBag:
        for k, m in enumerate(self.members):
            rows = self.member_rows(k, groups, len(y))
            if np.unique(y[rows]).size < 2:  # a tiny study: this share holds one class only
                rows = np.arange(len(y))
            m.fit(x[rows], y[rows])
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return np.mean([np.asarray(m.decision_function(x), dtype=np.float64).ravel() for m in self.members], axis=0)

    def staged_decision_function(self, x: np.ndarray) -> Any:
        """The mean raw score after 1, 2, ... iterations of every member."""
        for raws in zip(*(m.staged_decision_function(x) for m in self.members), strict=False):
            yield np.mean([np.asarray(r, dtype=np.float64).ravel() for r in raws], axis=0)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(x)))
        return np.column_stack([1.0 - p, p])


def build_gbm(learning_rate: float, max_leaf_nodes: int, min_samples_leaf: int, l2: float, seed: int,
              n_numeric: int = 0, n_categorical: int = 0, members: int = 1, keep: float = 1.0,
              max_features: float = 1.0) -> GbmBag:
    """``members`` warm-startable ``HistGradientBoostingClassifier`` s (iterations are added per
    epoch) as a :class:`GbmBag`; the last ``n_categorical`` input columns are category codes split
    natively (set membership)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    if learning_rate <= 0 or max_leaf_nodes < 2 or min_samples_leaf < 1 or l2 < 0:
        raise ConfigError("gbm settings: learning rate > 0, max leaf nodes >= 2, min samples per leaf >= 1, l2 >= 0")
    if members < 1 or not 0 < keep <= 1 or not 0 < max_features <= 1:
        raise ConfigError("gbm settings: members >= 1, subsample in (0, 1], max features in (0, 1]")
    cats = [False] * n_numeric + [True] * n_categorical if n_categorical else None
    return GbmBag([
        HistGradientBoostingClassifier(
            learning_rate=learning_rate, max_iter=0, max_leaf_nodes=max_leaf_nodes, min_samples_leaf=min_samples_leaf,
            l2_regularization=l2, early_stopping=False, warm_start=True, random_state=seed + k,
            max_features=max_features, categorical_features=cats,
        ) for k in range(members)
    ], keep, seed)


def gbm_trees(model: Any) -> dict[str, Any]:
    """The fitted trees of a :class:`GbmBag` (or one classifier) as plain lists for one ONNX
    TreeEnsemble: every member's trees with leaf values divided by the number of members, and
    the members' mean baseline, so the ensemble's sum is the bag's mean raw score."""
    members = getattr(model, "members", [model])
    parts = [_member_trees(m) for m in members]
    scale = 1.0 / len(parts)
    trees = []
    for part in parts:
        for t in part["trees"]:
            trees.append({**t, "value": [v * scale for v in t["value"]]})
    return {"base": float(np.mean([p["base"] for p in parts])), "trees": trees}


def _member_trees(clf: Any) -> dict[str, Any]:
    """One classifier's fitted trees as plain lists, binary classification."""
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
