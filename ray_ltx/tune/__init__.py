"""Ray Tune sweeps over config fields: ``ray-ltx tune --config base.yaml --sweep tuning/rank_lr_grid.yaml``.

- :mod:`~ray_ltx.tune.spec`: the sweep file (search space, metric, search algorithm, scheduler), checked;
- :mod:`~ray_ltx.tune.runner`: the driver: the latent cache once, then the Tuner; stop and ``--resume``;
- :mod:`~ray_ltx.tune.trial`: one trial, a full ray-ltx training in ``<output_dir>/trials/<trial_id>``;
- :mod:`~ray_ltx.tune.report`: the trial table, ``best_config.yaml``, the MLflow parent run and its children.
"""

from ray_ltx.tune.report import SweepResult
from ray_ltx.tune.runner import run_sweep
from ray_ltx.tune.spec import SweepSpec, load_sweep, parse_sweep, prepare

__all__ = ["SweepResult", "SweepSpec", "load_sweep", "parse_sweep", "prepare", "run_sweep"]
