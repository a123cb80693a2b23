"""Loading and start-up checks of a run's LazyConfig: a bad value fails before anything is
written, naming the field, rather than hours later inside a data loader.

:func:`load_config` reads a config file (a project config, or a run's ``config.yaml`` of any
schema version) with ``key=value`` overrides, refusing a key the config does not have;
:func:`check_config` runs every check of the values.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import difflib
import math
import re
from typing import Iterable

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.utils import comm

from eir.data.bank import STORAGE_MODES
from eir.data.bank_rule import RegionRule
from eir.engine.run_folder import flatten
from eir.modeling.head import NEW_HEAD_INITS

__all__ = ["check_config", "check_override_keys", "load_config", "upgrade_config"]


def check_override_keys(cfg, overrides: Iterable[str]) -> None:
    """Every ``key=value`` override must name a key of ``cfg``; else name the nearest known key."""
    known = set()
    for key in flatten(cfg):
        parts = key.split(".")
        known.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in known:
            continue
        near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ValueError(f"unknown config key {key!r} in override {item!r}{hint}")


def upgrade_config(cfg):
    """``cfg`` (changed in place, and returned) in today's schema. A config of the first schema
    (a run's ``config.yaml`` written before ``eir.criterion``) had ``eir.pseudo_label``,
    ``eir.tau`` and the loss settings directly under ``eir``; they mean today's
    ``eir.criterion`` (pseudo-labels off is ``tau=None``) and ``eir.prepass.tau``
    (:func:`eir.engine.run_folder.upgrade_record` does the same for a run's recorded keys)."""
    eir = cfg.eir
    if "pseudo_label" not in eir:
        return cfg
    tau, pseudo_label = eir.pop("tau"), eir.pop("pseudo_label")
    eir.criterion = {
        "_target_": "eir.modeling.criterion.EIRCriterion",
        "tau": tau if pseudo_label else None,
        **{key: eir.pop(key) for key in ("w_bce", "w_kd", "rskd_mask", "rskd_normalize")},
    }
    eir.prepass.tau = tau
    return cfg


def load_config(path, overrides: Iterable[str] = ()):
    """The LazyConfig at ``path`` in today's schema, with ``key=value`` ``overrides`` applied
    (each key must be one of the config's; see :func:`check_override_keys`)."""
    cfg = upgrade_config(LazyConfig.load(str(path)))
    overrides = list(overrides)
    check_override_keys(cfg, overrides)
    return LazyConfig.apply_overrides(cfg, overrides)


def _instantiated(node, name: str, expected: str):
    """``instantiate(node)``, naming the field when the node is not an object or its values are bad."""
    if not hasattr(node, "keys"):
        raise ValueError(
            f"{name} must be {expected} (configs/common/eir.py), got {node!r}; on the command "
            "line write null for None (None is read as a string)"
        )
    try:
        return instantiate(node)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: {e}") from e


def _number(
    name: str, value, *, integer=False, low=None, high=None, low_open=False, high_open=False, none=None
) -> None:
    """Raise ValueError naming ``name`` and the accepted range unless ``value`` is a number (an
    integer with ``integer``; bools are not numbers) in [``low``, ``high``] (bounds open with
    ``low_open`` / ``high_open``). ``none``: what None means, when it is accepted."""
    if value is None and none is not None:
        return
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    kind = "an integer" if integer else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    accepted = f"{kind} {' and '.join(bounds)}".strip() + (f", or None ({none})" if none else "")
    hint = " (a string: on the command line, write a number without quotes)" if isinstance(value, str) else ""
    raise ValueError(f"{name} must be {accepted}, got {value!r}{hint}")


def _device_type(name) -> str | None:
    """torch's device type of ``name`` ("cuda" for "cuda:1"), or None when it names no device."""
    try:
        return torch.device(name).type if isinstance(name, str) else None
    except RuntimeError:
        return None


def check_eir_config(eir) -> None:
    """The ``eir.*`` fields (METHOD.md sections 4-6)."""

    def one_of(key, allowed):
        if eir[key] not in allowed:
            raise ValueError(f"eir.{key} must be one of {allowed}, got {eir[key]!r}")

    if hasattr(eir.criterion, "keys"):  # its numbers by name (EIRCriterion checks them too)
        if "tau" in eir.criterion:
            _number("eir.criterion.tau (a sigmoid-score threshold)", eir.criterion.tau, low=0, high=1,
                    none="no pseudo-labels")
        for key in ("w_bce", "w_kd"):
            if key in eir.criterion:
                _number(f"eir.criterion.{key} (a loss weight)", eir.criterion[key], low=0)
    _instantiated(eir.criterion, "eir.criterion", "an EIRCriterion")
    if eir.paste is not None:
        _instantiated(eir.paste, "eir.paste", "a PasteConfig or null")
    _number("eir.memory (the bank budget, in entries)", eir.memory, integer=True, low=0)
    one_of("storage", STORAGE_MODES)
    if eir.get("instances") is not None:
        rule = _instantiated(eir.instances, "eir.instances", "a RegionRule or null")
        if not isinstance(rule, RegionRule) or eir.storage != "instance":
            raise ValueError(
                f"eir.instances must be null or a RegionRule (eir.data.bank_rule) with "
                f"eir.storage='instance', got {rule!r} with eir.storage={eir.storage!r}"
            )
    one_of("new_head_init", NEW_HEAD_INITS)
    for key in ("short_side", "stride"):
        value = eir.prepass[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"eir.prepass.{key} must be an integer >= 1, got {value!r}")
    tau = eir.prepass.tau
    if eir.paste is not None and eir.memory > 0:
        if tau is None:
            raise ValueError(
                "eir.prepass.tau is None (by default it follows eir.criterion.tau), but pasting needs "
                "the threshold at which the old model detects a class: set eir.prepass.tau=0.7"
            )
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= tau <= 1.0:
            raise ValueError(f"eir.prepass.tau is a sigmoid-score threshold in [0, 1], got {tau!r}")


def check_train_config(train) -> None:
    """The ``train.*`` fields a run reads late."""
    if not isinstance(train.output_dir, str) or not train.output_dir.strip():
        raise ValueError(
            f"train.output_dir must be a folder's path, got {train.output_dir!r} (on the command line, "
            "quote a path that Hydra would read as something else: train.output_dir=\"'/path/2024'\")"
        )
    device = train.device
    if device != "auto" and _device_type(device) not in ("cpu", "cuda"):
        raise ValueError(f'train.device must be "auto", "cpu", "cuda" or "cuda:N", got {device!r}')
    _number("train.log_period (iterations)", train.log_period, integer=True, low=1)
    _number("train.checkpointer.period (iterations)", train.checkpointer.period, integer=True, low=1)
    _number("train.checkpointer.max_to_keep", train.checkpointer.get("max_to_keep"), integer=True, low=1,
            none="keep every checkpoint")
    _number("train.gather_metric_period (iterations)", train.gather_metric_period, integer=True, low=1)
    if train.checkpointer.period % train.gather_metric_period:
        raise ValueError(
            f"train.checkpointer.period ({train.checkpointer.period}) must be a multiple of "
            f"train.gather_metric_period ({train.gather_metric_period}): a NaN loss is noticed only "
            "when the losses are gathered, and a checkpoint must not be written from a diverged model"
        )
    if not isinstance(train.amp.enabled, bool):
        raise ValueError(f"train.amp.enabled must be True or False, got {train.amp.enabled!r}")
    seed = train.seed
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"train.seed must be an integer >= 0, got {seed!r}")
    step = train.step
    if step is not None and (isinstance(step, bool) or not re.fullmatch(r"\d+", str(step))):
        raise ValueError(f"train.step must be a step number (0, 1, ...) or None (every step), got {step!r}")
    for key in ("allow_config_change", "allow_data_change"):
        if not isinstance(train.get(key, False), bool):
            raise ValueError(f"train.{key} must be True or False, got {train[key]!r}")


def check_schedule_config(schedule) -> None:
    """The ``schedule.*`` fields (configs/common/schedule.py)."""
    _number("schedule.max_iter (iterations per step)", schedule.max_iter, integer=True, low=1,
            none="the epochs set the iterations")
    for key in ("epochs", "incremental_epochs"):
        _number(f"schedule.{key}", schedule[key], low=0, low_open=True)
    for key in ("lr", "incremental_lr"):
        _number(f"schedule.{key} (a learning rate)", schedule[key], low=0, low_open=True)
    _number("schedule.poly_power", schedule.poly_power, low=0)
    _number("schedule.warmup_fraction (of each step)", schedule.warmup_fraction, low=0, high=1, high_open=True)


def check_data_config(dataloader, world_size: int) -> None:
    """The ``dataloader.*`` numbers; the total batch is split evenly over ``world_size`` processes."""
    batch = dataloader.train.total_batch_size
    _number("dataloader.train.total_batch_size (over all processes)", batch, integer=True, low=1)
    if batch % world_size:
        raise ValueError(
            f"dataloader.train.total_batch_size ({batch}) must be a multiple of the number of processes "
            f"({world_size}): each process takes an equal share"
        )
    _number("dataloader.test.batch_size (per process)", dataloader.test.batch_size, integer=True, low=1)
    for split in ("train", "test"):
        _number(f"dataloader.{split}.num_workers", dataloader[split].num_workers, integer=True, low=0)


def check_optimizer_config(optimizer) -> None:
    """The SGD numbers of configs/common/optim.py (those the optimizer's config has)."""
    if "momentum" in optimizer:
        _number("optimizer.momentum", optimizer.momentum, low=0, high=1, high_open=True)
    if "weight_decay" in optimizer:
        _number("optimizer.weight_decay", optimizer.weight_decay, low=0)
    if "params" in optimizer and "head_lr_mult" in optimizer.params:
        _number("optimizer.params.head_lr_mult", optimizer.params.head_lr_mult, low=0, low_open=True)


def check_config(cfg) -> None:
    """Every start-up check of a run's config (types and ranges, named with the accepted range)."""
    check_eir_config(cfg.eir)
    check_train_config(cfg.train)
    check_schedule_config(cfg.schedule)
    check_data_config(cfg.dataloader, comm.get_world_size())
    check_optimizer_config(cfg.optimizer)
