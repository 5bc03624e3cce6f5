"""Genomics: primary vs metastasis from a sample's mutations and clinical data (cBioPortal studies).

Modules: :mod:`study` (reading datahub folders and web-download tables), :mod:`leaks` (label and
label-leak columns), :mod:`features` (per-sample features), :mod:`encode` (preprocessing),
:mod:`models` (dense networks, boosted trees), :mod:`train` (run folder), :mod:`metrics`,
:mod:`export` (ONNX package), :mod:`predict` (onnxruntime only), :mod:`explain`,
:mod:`report` (study report and EDA).
"""
