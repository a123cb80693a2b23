"""The config schema's history: how a key of an older schema reads today (core module).

A run folder outlives the code that wrote it: its ``config.yaml`` (a LazyConfig tree) and its
``run_config.json`` (the result-changing keys, flattened to dotted keys) may use an older
schema. Both are upgraded by :func:`upgrade`, through one table of renames
(:data:`RENAMED_KEYS`), applied to either form by a :class:`Keys` view:

1. the first schema had the loss settings and one threshold directly under ``eir``
   (``eir.pseudo_label``, ``eir.tau``, ``eir.w_kd``, ...); they became the criterion object
   ``eir.criterion`` (pseudo-labels off is ``tau=None``) and the prepass's own ``eir.prepass.tau``;
2. the method's node ``eir`` became the method object ``method = L(EIR)(...)``.
"""
from __future__ import annotations

from typing import Any, MutableMapping

__all__ = ["RENAMED_KEYS", "FlatKeys", "Keys", "TreeKeys", "renamed_key", "upgrade"]

CRITERION_TARGET = "eir.modeling.criterion.EIRCriterion"
EIR_TARGET = "eir.methods.eir.EIR"

#: Old key (or node) -> new key, in the order the schema changed.
RENAMED_KEYS = (
    ("eir.w_bce", "eir.criterion.w_bce"),
    ("eir.w_kd", "eir.criterion.w_kd"),
    ("eir.rskd_mask", "eir.criterion.rskd_mask"),
    ("eir.rskd_normalize", "eir.criterion.rskd_normalize"),
    ("eir", "method"),
)


def renamed_key(key: str) -> str | None:
    """Today's name of ``key`` when a rename of :data:`RENAMED_KEYS` applies to it, else None
    (the first schema's ``eir.tau`` and ``eir.pseudo_label`` became ``method.criterion.tau``)."""
    new = key
    for old_key in ("eir.tau", "eir.pseudo_label"):
        if new == old_key:
            new = "eir.criterion.tau"
    for old, replacement in RENAMED_KEYS:
        if new == old or new.startswith(old + "."):
            new = replacement + new[len(old):]
    return None if new == key else new


class Keys:
    """Dotted-key access to one form of a config: ``has``, ``pop``, ``set`` a leaf, ``move`` a
    key or node."""

    def has(self, key: str) -> bool:
        raise NotImplementedError

    def pop(self, key: str) -> Any:
        raise NotImplementedError

    def set(self, key: str, value: Any) -> None:
        raise NotImplementedError

    def move(self, old: str, new: str) -> None:
        raise NotImplementedError


class FlatKeys(Keys):
    """A flattened record (``{"eir.criterion.tau": 0.7, ...}``), changed in place."""

    def __init__(self, record: MutableMapping[str, Any]):
        self.record = record

    def has(self, key):
        return key in self.record or any(k.startswith(key + ".") for k in self.record)

    def pop(self, key):
        return self.record.pop(key)

    def set(self, key, value):
        self.record[key] = value

    def move(self, old, new):
        for key in [k for k in self.record if k == old or k.startswith(old + ".")]:
            self.record[new + key[len(old):]] = self.record.pop(key)


class TreeKeys(Keys):
    """A config tree (a LazyConfig's DictConfig, or nested dicts), changed in place; ``set``
    creates the nodes on the way."""

    def __init__(self, root):
        self.root = root

    def _parent(self, key: str, create: bool = False):
        node = self.root
        *path, _ = key.split(".")
        for part in path:
            if part not in node:
                if not create:
                    return None
                node[part] = {}
            node = node[part]
            if not hasattr(node, "keys"):
                return None
        return node

    def has(self, key):
        parent = self._parent(key)
        return parent is not None and key.rsplit(".", 1)[-1] in parent

    def pop(self, key):
        return self._parent(key).pop(key.rsplit(".", 1)[-1])

    def set(self, key, value):
        self._parent(key, create=True)[key.rsplit(".", 1)[-1]] = value

    def move(self, old, new):
        self.set(new, self.pop(old))


def upgrade(keys: Keys) -> Keys:
    """Bring ``keys`` (a :class:`FlatKeys` or :class:`TreeKeys`) to today's schema, in place;
    a config of today's schema is left as it is."""
    if keys.has("eir.pseudo_label"):
        pseudo_label, tau = keys.pop("eir.pseudo_label"), keys.pop("eir.tau")
        keys.set("eir.criterion._target_", CRITERION_TARGET)
        keys.set("eir.criterion.tau", tau if pseudo_label else None)
        keys.set("eir.prepass.tau", tau)
    for old, new in RENAMED_KEYS:
        if keys.has(old):
            keys.move(old, new)
            if (old, new) == ("eir", "method"):
                keys.set("method._target_", EIR_TARGET)
    return keys
