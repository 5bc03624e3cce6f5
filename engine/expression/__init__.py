"""Expression matrices: reading (any orientation, counts or log, symbols or Ensembl), one-shot
tumour type with a Siamese network (CancerSiamese), marker genes, synthetic profiles (WGAN-GP).

Heavy libraries (torch, onnxruntime, matplotlib, sklearn) are imported inside functions only.
"""

from engine.expression.matrix import ExpressionMatrix, align_genes, read_matrix, write_matrix

__all__ = ["ExpressionMatrix", "align_genes", "read_matrix", "write_matrix"]
