"""Logging for ray-ltx's processes: one format everywhere, and Ray's repetitive internal lines quieted."""

from __future__ import annotations

import logging
import os

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) for this process: the CLI, each training worker, each Tune trial."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT, datefmt=DATE_FORMAT)
    logging.getLogger("ray_ltx").setLevel(logging.DEBUG if verbose else logging.INFO)
    quiet_ray()


#: Ray's internal loggers whose INFO/WARNING lines repeat every few seconds in a healthy run.
CHATTY_LOGGERS = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    "ray.train.v2._internal.execution.storage": logging.WARNING,  # "Checkpoint successfully created" per rank
    "ray.data._internal.progress": logging.WARNING,
    "ray.data._internal.execution.streaming_executor": logging.WARNING,
}


def quiet_ray() -> None:
    """Silence the repetitive lines of Ray's internals in this process (real warnings and errors stay).

    Also the ``worker_process_setup_hook`` of ray-ltx's runs, so it applies in every Ray worker process.
    """
    for name, level in CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for relative, level in CHATTY_FILE_LOGGERS.items():
        logging.getLogger(_ray_file(relative)).setLevel(level)


#: Ray modules that name their logger by file path (``logging.getLogger(__file__)``), relative to the ray package.
CHATTY_FILE_LOGGERS = {
    "train/v2/_internal/execution/context.py": logging.WARNING,  # "Reporting training result ..." per rank
}


def _ray_file(relative: str) -> str:
    import ray  # already imported wherever this runs (the CLI, Ray workers); its submodules are not needed

    return os.path.join(os.path.dirname(ray.__file__), *relative.split("/"))


