"""Logging for ray-ltx's processes: one format everywhere, and Ray's repetitive internal lines quieted."""

from __future__ import annotations

import logging

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
    "ray.train.v2._internal.execution.context": logging.WARNING,  # "Reporting training result ..." per rank
    "ray.data._internal.progress": logging.WARNING,
    "ray.data._internal.execution.streaming_executor": logging.WARNING,
}


def quiet_ray() -> None:
    """Silence the repetitive lines of Ray's internals in this process (real warnings and errors stay).

    Also the ``worker_process_setup_hook`` of ray-ltx's runs, so it applies in every Ray worker process.
    """
    for name, level in CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


