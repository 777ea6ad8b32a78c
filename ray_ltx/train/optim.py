"""Optimizers and learning-rate schedules, built from the optimizer section of the config."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ray_ltx.config import Config
from ray_ltx.errors import ConfigError


def build_optimizer(params: Iterable[torch.nn.Parameter], config: Config, device: torch.device) -> torch.optim.Optimizer:
    opt = config.optimizer
    params = list(params)
    common = {"lr": opt.lr, "betas": (opt.beta1, opt.beta2), "eps": opt.epsilon, "weight_decay": opt.weight_decay}
    if opt.optimizer == "adamw":
        return torch.optim.AdamW(params, foreach=True, **common)
    if opt.optimizer == "adamw_fused":
        return torch.optim.AdamW(params, fused=True, **common)
    if opt.optimizer == "adam":
        return torch.optim.Adam(params, foreach=True, **common)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes (CUDA only)") from None
    if device.type != "cuda":
        raise ConfigError("--optimizer adamw8bit runs on CUDA only; use adamw on CPU workers")
    return bnb.optim.AdamW8bit(params, **common)


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config) -> torch.optim.lr_scheduler.LRScheduler:
    from diffusers.optimization import get_scheduler

    opt = config.optimizer
    return get_scheduler(
        opt.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=opt.lr_warmup_steps,
        num_training_steps=config.training.train_steps,
        num_cycles=opt.lr_num_cycles,
        power=opt.lr_power,
    )
