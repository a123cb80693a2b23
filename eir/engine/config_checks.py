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
import re
from typing import Iterable

from detectron2.config import LazyConfig, instantiate

from eir.data.bank import STORAGE_MODES
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


def check_eir_config(eir) -> None:
    """The ``eir.*`` fields (METHOD.md sections 4-6)."""

    def one_of(key, allowed):
        if eir[key] not in allowed:
            raise ValueError(f"eir.{key} must be one of {allowed}, got {eir[key]!r}")

    _instantiated(eir.criterion, "eir.criterion", "an EIRCriterion")
    if eir.paste is not None:
        _instantiated(eir.paste, "eir.paste", "a PasteConfig or null")
    if int(eir.memory) < 0:
        raise ValueError(f"eir.memory (the bank budget) must be >= 0, got {eir.memory}")
    one_of("storage", STORAGE_MODES)
    one_of("new_head_init", NEW_HEAD_INITS)
    for key in ("short_side", "stride"):
        value = eir.prepass[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"eir.prepass.{key} must be an integer >= 1, got {value!r}")
    tau = eir.prepass.tau
    if eir.paste is not None and int(eir.memory) > 0:
        if tau is None:
            raise ValueError(
                "eir.prepass.tau is None (by default it follows eir.criterion.tau), but pasting needs "
                "the threshold at which the old model detects a class: set eir.prepass.tau=0.7"
            )
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= tau <= 1.0:
            raise ValueError(f"eir.prepass.tau is a sigmoid-score threshold in [0, 1], got {tau!r}")


def check_train_config(train) -> None:
    """The ``train.*`` fields a run reads late."""
    seed = train.seed
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"train.seed must be an integer >= 0, got {seed!r}")
    step = train.step
    if step is not None and (isinstance(step, bool) or not re.fullmatch(r"\d+", str(step))):
        raise ValueError(f"train.step must be a step number (0, 1, ...) or None (every step), got {step!r}")
    for key in ("allow_config_change", "allow_data_change"):
        if not isinstance(train.get(key, False), bool):
            raise ValueError(f"train.{key} must be True or False, got {train[key]!r}")


def check_config(cfg) -> None:
    """Every start-up check of a run's config."""
    check_eir_config(cfg.eir)
    check_train_config(cfg.train)
