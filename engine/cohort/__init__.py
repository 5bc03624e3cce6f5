"""Cohorts: one slide at a time in this process, or one Ray task per slide on a cluster.

- :mod:`engine.cohort.tasks`: the per-slide functions of ``metascope heatmap``, ``mil features``
  and ``evaluate-slides``. The single-process loops and the Ray workers call the very same
  functions, so a slide's result files do not depend on where it was computed.
- :mod:`engine.cohort.ray_runner`: runs those functions as Ray tasks (``--ray auto|ADDRESS``).
  It is the only module that imports ``ray``, and only when a cohort is sent to Ray.
"""
