"""What a run was made from, recorded in its folder and checked on every rerun.

* ``run_config.json`` records the config keys that change results (:func:`results_config`),
  the number of processes among them; a rerun with other values is refused, naming the keys,
  unless it opts in with ``train.allow_config_change=True``. Records of older versions of the
  config schema are read through :func:`upgrade_record`.
* ``run_data.json`` records the datasets' files (size and modification time of every image
  and label); :func:`data_differences` names what changed (the folder refuses a step then,
  unless ``train.allow_data_change=True``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from eir.engine.config_schema import EIR_TARGET, FlatKeys, upgrade
from eir.engine.run_files import CONFIG_RECORD
from eir.engine.run_lock import RunFolderError
from eir.fileio import atomic_write_json

logger = logging.getLogger(__name__)

#: Config keys (dotted prefixes) that do not change a run's results: where it runs and
#: what it logs. Every other key of the config is compared on a rerun.
RESULT_NEUTRAL_KEYS = (
    "train.output_dir",  # the folder itself
    "train.device",  # the same run on another device
    "train.step",  # which steps this command runs
    "train.eval_checkpoint",  # --eval-only only
    "train.eval_output",  # --eval-only only
    "train.log_period",  # logging
    "train.gather_metric_period",  # logging (and when a NaN loss is noticed)
    "train.checkpointer",  # resumption is exact, so checkpoint period and count do not matter
    "train.ddp.find_unused_parameters",  # a DDP bookkeeping switch
    "train.allow_config_change",  # the opt-in itself
    "train.allow_data_change",  # the opt-in for data
    "train.cudnn_benchmark",  # the choice of cuDNN algorithms: speed (GPU runs are not bitwise reproducible anyway)
    "dataloader.train.num_workers",  # sample streams do not depend on workers
    "dataloader.test.num_workers",
)

#: The record's key for the number of processes (``--num-gpus`` x ``--num-machines``): with
#: ``dataloader.train.total_batch_size`` it fixes each process's batch, and so BatchNorm's
#: statistics and the samples' order; it is not a config key.
WORLD_SIZE_KEY = "launch.world_size"


def json_mapping(path: Path, key: str) -> dict:
    """The mapping under ``key`` of the JSON object in ``path``; OSError or ValueError (the
    reason, for a message naming the file) when the file holds none."""
    data = json.loads(path.read_bytes())
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"no {key!r} in it")
    if not isinstance(data[key], dict):
        raise ValueError(f"its {key!r} is a {type(data[key]).__name__}, not a mapping")
    return data[key]


def _plain(value: Any) -> Any:
    """A JSON value standing for ``value`` (callables by their import path)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> JSON leaf value of a (LazyConfig) config tree, interpolations resolved."""
    if hasattr(node, "keys") and not isinstance(node, str):
        out: dict[str, Any] = {}
        for key in node.keys():
            out.update(flatten(node[key], f"{prefix}{key}."))
        if not out and prefix:
            out[prefix[:-1]] = {}
        return out
    return {prefix[:-1]: _plain(node)}


def _neutral(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESULT_NEUTRAL_KEYS)


def results_config(cfg, world_size: int = 1) -> dict[str, Any]:
    """The dotted keys of ``cfg`` that change results (all but :data:`RESULT_NEUTRAL_KEYS`),
    and :data:`WORLD_SIZE_KEY`: the number of processes."""
    record = {k: v for k, v in flatten(cfg).items() if not _neutral(k)}
    record[WORLD_SIZE_KEY] = int(world_size)
    return record


#: Result-changing keys added to the config after runs were recorded, with the value that
#: describes what those runs did.
_ADDED_KEYS = {"train.float32_precision": ""}
#: The same for keys inside a node (``method.criterion``, ``method.paste``, which a run may have
#: set to None): added only where the record has the node.
_ADDED_NODE_KEYS = {
    "method.criterion.pasted_bce": "all", "method.paste.onto": "any", "method.paste.skip_classes": "[]",
}
#: The same for keys of one method's object, added where the record's method is that class (a
#: key that may hold a node, like ``method.instances``, only where the record has neither it
#: nor keys under it).
_ADDED_METHOD_KEYS = {EIR_TARGET: {"method.instances": None}}  # before it, EIR ran the paper's rule


def upgrade_record(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded config in today's keys: older schemas' keys are renamed by
    :func:`eir.engine.config_schema.upgrade` (the table a ``config.yaml`` goes through too). A
    record with ``task.dataset`` (before the classes came from the datasets' ``MetadataCatalog``)
    ran a built-in dataset: its value 0 is the background, and ADE20K's unseen classes are
    ignored. Keys added since (:data:`_ADDED_KEYS`, :data:`_ADDED_NODE_KEYS`,
    :data:`_ADDED_METHOD_KEYS`) get the value that describes the recorded run."""
    return _with_added_node_keys(_upgrade_schema({**_ADDED_KEYS, **recorded}))


def _with_added_node_keys(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with :data:`_ADDED_NODE_KEYS` where it has their node (a run with
    ``method.paste=null`` has no paste keys today either, so adding them would read as a change),
    and :data:`_ADDED_METHOD_KEYS` where its method is theirs."""
    for key, value in _ADDED_NODE_KEYS.items():
        if f"{key.rsplit('.', 1)[0]}._target_" in record:
            record.setdefault(key, value)
    for key, value in _ADDED_METHOD_KEYS.get(record.get("method._target_"), {}).items():
        if not any(k == key or k.startswith(key + ".") for k in record):
            record[key] = value
    return record


def _upgrade_schema(record: dict[str, Any]) -> dict[str, Any]:
    """:func:`upgrade_record`'s renames: ``task.dataset``, and the schema's renamed keys."""
    if "task.dataset" in record:  # before the classes came from the datasets' MetadataCatalog
        dataset = record.pop("task.dataset")
        record["task.background"] = True  # every built-in dataset's value 0 is its background
        record["task.unseen_test_label"] = 255 if dataset == "ade" else None
    upgrade(FlatKeys(record))
    return record


def config_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: recorded -> current`` for every key whose value differs (or exists in one only)."""
    missing = "(absent)"
    return [
        f"{k}: {json.dumps(recorded.get(k, missing))} -> {json.dumps(current.get(k, missing))}"
        for k in sorted(set(recorded) | set(current))
        if recorded.get(k, missing) != current.get(k, missing)
    ]


def check_recorded_config(
    folder: Path, cfg, allow_change: bool, world_size: int = 1
) -> tuple[dict | None, list[str]]:
    """Compare ``cfg`` run by ``world_size`` processes with the folder's record; raise unless
    equal or ``allow_change``.

    Returns the record to write (None when the folder's record already matches) and the
    differences (``key: recorded -> current``) that ``allow_change`` let through. A record
    written before the number of processes was recorded says nothing of it: any number is
    accepted, and recorded from then on.
    """
    current = results_config(cfg, world_size)
    path = folder / CONFIG_RECORD
    if not path.is_file():
        return current, []
    try:
        stored = json_mapping(path, "config")
        recorded = upgrade_record(stored)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFolderError(
            f"{path} is damaged ({e}): restore it, or delete it to record this command's config "
            "(the folder's finished steps are kept)"
        ) from e
    recorded.setdefault(WORLD_SIZE_KEY, int(world_size))
    diff = config_differences(recorded, current)
    if not diff:
        return (None if recorded == stored else current), []
    listing = "\n  ".join(diff)
    if not allow_change:
        raise RunFolderError(
            f"{folder} holds a run of another config; these keys differ (folder -> command):\n  "
            f"{listing}\nChoose another train.output_dir, or add train.allow_config_change=True to "
            "continue this run under the new config (finished steps keep their results)."
        )
    logger.warning("train.allow_config_change=True: continuing %s under a changed config:\n  %s", folder, listing)
    return current, diff


def write_config_record(folder: Path, record: Mapping[str, Any]) -> None:
    atomic_write_json(
        folder / CONFIG_RECORD,
        {"about": "config keys that change results, checked on every rerun", "config": dict(record)},
    )


def data_differences(recorded: Mapping[str, Any], current: Mapping[str, Any], shown: int = 5) -> list[str]:
    """What changed between two data records (``{dataset: {file: [size, mtime_ns]}}``): per
    dataset, the counts of files added, removed and changed, with the first ``shown`` names."""
    lines = []
    for name in sorted(set(recorded) | set(current)):
        old, new = recorded.get(name, {}), current.get(name, {})
        for what, files in (
            ("added", sorted(set(new) - set(old))),
            ("removed", sorted(set(old) - set(new))),
            ("changed (size or modification time)", sorted(f for f in set(old) & set(new) if old[f] != new[f])),
        ):
            if files:
                more = f" and {len(files) - shown} more" if len(files) > shown else ""
                lines.append(f"{name}: {len(files)} file(s) {what}: {', '.join(files[:shown])}{more}")
    return lines
