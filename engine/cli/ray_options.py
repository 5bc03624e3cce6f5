"""``--ray auto|ADDRESS``, ``--ray-cpus`` and ``--ray-retries``: a cohort command on a Ray cluster.

Only the option parsing lives here; :mod:`engine.cohort.ray_runner` (imported when ``--ray`` is
given) does the rest, so building the parser never imports ray.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    """The Ray options of ``heatmap``, ``mil features`` and ``evaluate-slides``."""
    parser.add_argument(
        "--ray", metavar="auto|ADDRESS", default=None,
        help="one Ray task per slide: 'auto' (this machine's Ray cluster, or a new local one) or a head node "
        "HOST:6379; the output folder must be on storage every node sees; finished slides are skipped, so a "
        "rerun resumes (needs the distributed extra)",
    )
    parser.add_argument("--ray-cpus", type=float, default=1.0, metavar="N", help="CPUs per slide task (default 1)")
    parser.add_argument(
        "--ray-retries", type=int, default=2, metavar="N",
        help="retries of a slide whose worker died or failed unexpectedly (default 2)",
    )


def ray_settings(args: argparse.Namespace) -> Any:
    """The :class:`~engine.cohort.ray_runner.RaySettings` of ``args``, or ``None`` without ``--ray``.

    Raises:
        ConfigError: bad values, or Ray is not installed.
    """
    if args.ray is None:
        return None
    from engine.cohort.ray_runner import RaySettings, import_ray

    settings = RaySettings(
        address=args.ray.strip(), cpus=float(args.ray_cpus), gpus=1.0 if args.device == "cuda" else 0.0,
        max_retries=int(args.ray_retries),
    )
    import_ray()  # a missing Ray fails before any slide is touched
    return settings
