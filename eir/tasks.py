"""Continual segmentation protocols: which classes each step learns, and label remapping.

A task ``B-I`` puts the first B classes of the class order in step 0 and then I
classes per step (METHOD.md, section 2); ``joint`` is one step with every
class. Everything else in the project asks the :class:`Task` which classes are
new, old or seen at a step, which model channel holds a class, and how a
dataset label is rewritten for training or testing at that step.

Class ids (dataset side): 0 background, 255 ignore, 1..N dataset classes.
Channels (model side): channel 0 is background, then the seen classes in task
order, so with an explicit ``order`` channel k means the k-th class of that order.
"""
from __future__ import annotations

import colorsys
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from eir.constants import IGNORE_LABEL

__all__ = [
    "DATASETS",
    "SETTINGS",
    "DatasetSpec",
    "Task",
    "ade_palette",
    "build_task",
    "get_dataset",
    "same_task",
    "task_text",
    "voc_colormap",
]

SETTINGS = ("overlap", "disjoint")


def voc_colormap(n: int) -> tuple[tuple[int, int, int], ...]:
    """Pascal VOC's colour map (bits of the id spread over R, G, B), as RGB tuples for ids 0..n-1."""
    ids = np.arange(n, dtype=np.int64)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            cmap[:, channel] |= bit << (7 - shift)
    return tuple(tuple(int(v) for v in row) for row in cmap)


def ade_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """A fixed palette of n distinct bright colours (index 0, "other", is black).

    Hues step by the golden ratio so neighbouring ids differ strongly; saturation and
    value cycle through three levels so that 150 colours stay distinguishable.
    """
    colors = [(0, 0, 0)]
    golden = 0.618033988749895
    for i in range(1, n):
        hue = (i * golden) % 1.0
        sat = (0.95, 0.65, 0.8)[i % 3]
        val = (0.95, 0.8, 0.65)[(i // 3) % 3]
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colors)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's classes as the tasks see them, and how its label values become class ids.

    ``class_names[c]`` names class id c, ``class_names[0]`` the background ("background", or
    "other" for ADE20K); ``colors[c]`` is its RGB colour (visualisation only; default: VOC's
    colour map); ``unseen_test_label`` is what a not-yet-seen class becomes in a test label
    (0 = background for VOC and synthetic, 255 = ignored for ADE20K); ``named_tasks`` are
    the tasks the paper reports, listed in error messages.

    Label files hold the dataset's values, turned into class ids by :meth:`label_lut`:
    ``background=True`` (VOC style): value 0 is the background, 1..K the classes, and
    ``unlabelled_value`` marks pixels that are ignored. ``background=False`` (Detectron2's
    ADE20K and Cityscapes formats): values 0..K-1 are the K classes (class ids 1..K) and
    ``unlabelled_value`` marks pixels of none of them, which become the background (class 0):
    in training it stands for "none of the step's classes".
    """

    name: str
    class_names: tuple[str, ...]
    unseen_test_label: int
    colors: tuple[tuple[int, int, int], ...] | None = field(default=None, compare=False)
    named_tasks: tuple[str, ...] = field(default=(), compare=False)
    background: bool = True
    unlabelled_value: int = IGNORE_LABEL

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if len(self.class_names) < 2:
            raise ValueError(f"dataset {self.name!r} needs a background name and at least one class")
        if len(self.class_names) > IGNORE_LABEL:
            raise ValueError(
                f"dataset {self.name!r} has {len(self.class_names) - 1} classes; at most 254 fit "
                "uint8 labels with 255 reserved for ignore"
            )
        colors = voc_colormap(len(self.class_names)) if self.colors is None else self.colors
        colors = tuple(tuple(int(v) for v in c) for c in colors)
        if len(colors) != len(self.class_names) or any(len(c) != 3 for c in colors):
            raise ValueError(
                f"dataset {self.name!r}: {len(colors)} colours for {len(self.class_names)} "
                "class ids; give one RGB colour per id, background included"
            )
        object.__setattr__(self, "colors", colors)
        if self.unseen_test_label not in (0, IGNORE_LABEL):
            raise ValueError(
                f"dataset {self.name!r}: unseen_test_label must be 0 (background) or 255 (ignored), "
                f"got {self.unseen_test_label!r}"
            )
        k = self.num_classes
        class_values = range(k + 1) if self.background else range(k)
        if not isinstance(self.unlabelled_value, int) or not 0 <= self.unlabelled_value <= 255 or (
            self.unlabelled_value in class_values
        ):
            raise ValueError(
                f"dataset {self.name!r}: the unlabelled value (Detectron2's ignore_label) must be a "
                f"uint8 value that is no class value ({class_values.start}..{class_values.stop - 1}), "
                f"got {self.unlabelled_value!r}"
            )

    @classmethod
    def from_label_values(
        cls, name: str, value_names: Sequence[str], *, background: bool, unlabelled_value: int = IGNORE_LABEL,
        unseen_test_label: int | None = None, value_colors: Sequence[Sequence[int]] | None = None,
        named_tasks: Sequence[str] = (),
    ) -> DatasetSpec:
        """The spec of a dataset described as Detectron2's metadata describes it:
        ``value_names[v]`` (``stuff_classes``) and ``value_colors[v]`` (``stuff_colors``) name
        and colour label value v, ``unlabelled_value`` is its ``ignore_label``. Without a
        background value, class 0 is named "background" and drawn black. ``unseen_test_label``
        None: 0 with a background class (VOC's protocol), 255 without (ADE20K's)."""
        names, colors = list(value_names), None if value_colors is None else [tuple(c) for c in value_colors]
        if colors is not None and len(colors) != len(names):
            raise ValueError(
                f"dataset {name!r}: {len(colors)} stuff_colors for {len(names)} stuff_classes; give one "
                "colour per label value"
            )
        if not background:
            names = ["background"] + names
            colors = None if colors is None else [(0, 0, 0)] + colors
        if unseen_test_label is None:
            unseen_test_label = 0 if background else IGNORE_LABEL
        return cls(
            name=name, class_names=tuple(names), unseen_test_label=unseen_test_label,
            colors=None if colors is None else tuple(colors), named_tasks=tuple(named_tasks),
            background=bool(background), unlabelled_value=unlabelled_value,
        )

    @property
    def num_classes(self) -> int:
        """Number of foreground classes (ids 1..num_classes)."""
        return len(self.class_names) - 1

    @property
    def value_names(self) -> tuple[str, ...]:
        """The name of each class label value (Detectron2's ``stuff_classes``)."""
        return self.class_names if self.background else self.class_names[1:]

    def label_lut(self) -> np.ndarray:
        """uint8 table of 256: a label value of the dataset -> class id (0 background,
        1..K, 255 ignored). With a background value the table is the identity but for the
        unlabelled value (-> 255); without, value v < K -> v + 1 and the unlabelled value -> 0.
        Values that are no class of the dataset (:meth:`invalid_values`) map to 255, or to
        themselves with a background value."""
        k = self.num_classes
        if self.background:
            lut = np.arange(256, dtype=np.uint8)
            lut[self.unlabelled_value] = IGNORE_LABEL
        else:
            lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
            lut[:k] = np.arange(1, k + 1)
            lut[self.unlabelled_value] = 0
        return lut

    def invalid_values(self, label: np.ndarray) -> list[int]:
        """Values of a uint8 label file that are neither a class value nor the unlabelled one
        (empty when the label is valid)."""
        top = self.num_classes + 1 if self.background else self.num_classes  # values below are classes
        if not label.size or int(label.max()) < top:
            return []
        counts = np.bincount(label.ravel(), minlength=256)
        counts[: top] = 0
        counts[self.unlabelled_value] = 0
        return [int(v) for v in np.flatnonzero(counts)]

    def describe_values(self) -> str:
        """The valid label values, for messages: ``0..20 and 255 (ignored)``."""
        if self.background:
            return f"0..{self.num_classes} and {self.unlabelled_value} (ignored)"
        return f"0..{self.num_classes - 1} and {self.unlabelled_value} (unlabelled)"

    def to_dict(self) -> dict[str, Any]:
        """What a task records of a dataset that is not built in (colours are left out)."""
        return {
            "class_names": list(self.class_names),
            "unseen_test_label": self.unseen_test_label,
            "background": self.background,
            "unlabelled_value": self.unlabelled_value,
        }


#: The synthetic dataset's classes (:mod:`eir.data.synthetic` draws them), background first.
SYNTHETIC_CLASSES = (
    "background", "disc", "square", "triangle", "ring", "cross", "star", "hexagon",
    "crescent", "bar", "diamond",
)  # fmt: skip

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# ADE20K SceneParsing, in the official objectInfo150 order (short names).
ADE_CLASSES = (
    "other", "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

DATASETS: dict[str, DatasetSpec] = {
    "voc": DatasetSpec(
        name="voc",
        class_names=VOC_CLASSES,
        unseen_test_label=0,
        colors=voc_colormap(len(VOC_CLASSES)),
        named_tasks=("19-1", "15-5", "15-1", "10-1", "5-3", "2-2", "10-5", "10-10", "joint"),
    ),
    "ade": DatasetSpec(
        name="ade",
        class_names=ADE_CLASSES,
        unseen_test_label=IGNORE_LABEL,
        colors=ade_palette(len(ADE_CLASSES)),
        named_tasks=("100-50", "100-10", "100-5", "50-50", "joint"),
    ),
    "synthetic": DatasetSpec(
        name="synthetic",
        class_names=SYNTHETIC_CLASSES,
        unseen_test_label=0,
        colors=voc_colormap(len(SYNTHETIC_CLASSES)),
        named_tasks=("6-1", "4-2", "2-2", "5-5", "joint"),
    ),
}

_ALIASES = {"ade20k": "ade", "pascal_voc": "voc", "voc2012": "voc"}
_NAME_RE = re.compile(r"^(\d+)-(\d+)$")


def get_dataset(dataset: str) -> DatasetSpec:
    """The :class:`DatasetSpec` for a dataset key (case-insensitive; "ade20k" means "ade")."""
    if not isinstance(dataset, str):
        raise ValueError(f"dataset must be a name string, got {dataset!r}; known datasets: {_known()}")
    key = dataset.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {_known()}")
    return DATASETS[key]


def _known() -> str:
    return ", ".join(sorted(DATASETS))


def _accepted_names(spec: DatasetSpec) -> str:
    return (
        "use 'joint' (one step with all classes) or 'B-I' (B classes in step 0, then steps of "
        f"I classes, e.g. '15-1'); the paper's tasks for {spec.name} are "
        + ", ".join(spec.named_tasks)
    )


def _parse_name(spec: DatasetSpec, name: Any) -> tuple[str, int, int]:
    """Canonical name and (B, I); I == 0 means joint."""
    n = spec.num_classes
    if not isinstance(name, str):
        raise ValueError(f"task name must be a string, got {name!r}; {_accepted_names(spec)}")
    text = name.strip().lower()
    if text == "joint":
        return "joint", n, 0
    match = _NAME_RE.match(text)
    if match is None:
        raise ValueError(f"unknown task name {name!r} for {spec.name}; {_accepted_names(spec)}")
    base, inc = int(match.group(1)), int(match.group(2))
    if base < 1:
        raise ValueError(f"task {name!r}: step 0 needs at least one class (B >= 1)")
    if inc < 1:
        raise ValueError(f"task {name!r}: each later step needs at least one class (I >= 1)")
    if base >= n:
        raise ValueError(
            f"task {name!r}: step 0 would take {base} of {spec.name}'s {n} classes, leaving none "
            f"for later steps; B must be below {n} (use 'joint' for one step with all classes)"
        )
    rest = n - base
    if rest % inc:
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        raise ValueError(
            f"task {name!r} does not cover {spec.name}'s {n} classes: after the {base} classes "
            f"of step 0, {rest} classes remain, which is not a multiple of {inc}; "
            f"with B={base} choose I among {divisors}"
        )
    return f"{base}-{inc}", base, inc


def _parse_order(spec: DatasetSpec, order: Any) -> tuple[int, ...]:
    n = spec.num_classes
    if order is None:
        return tuple(range(1, n + 1))
    if isinstance(order, (str, bytes)) or not isinstance(order, Iterable):
        raise ValueError(
            f"order must be a sequence of class ids (a permutation of 1..{n}), got {order!r}"
        )
    ids = []
    for item in order:
        if isinstance(item, (bool, np.bool_)):
            raise ValueError(f"order entries must be integer class ids, got {item!r}")
        try:
            ids.append(operator.index(item))
        except TypeError:
            raise ValueError(f"order entries must be integer class ids, got {item!r}") from None
    seen: set[int] = set()
    duplicated = sorted({c for c in ids if c in seen or seen.add(c)})
    out_of_range = sorted({c for c in ids if not 1 <= c <= n})
    missing = sorted(set(range(1, n + 1)) - set(ids))
    if duplicated or out_of_range or missing:
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        if duplicated:
            problems.append(f"duplicated {duplicated}")
        if out_of_range:
            problems.append(f"out of range {out_of_range}")
        raise ValueError(
            f"order for {spec.name} must be a permutation of the class ids 1..{n} "
            f"(each exactly once, 0 and 255 excluded): " + "; ".join(problems)
        )
    return tuple(ids)


def _ranges(ids: Sequence[int]) -> str:
    """Compact step text: ascending consecutive runs as 'a-b', runs joined by ','."""
    parts = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True, repr=False)
class Task:
    """One continual-learning protocol: a dataset, a ``B-I`` or ``joint`` name, a setting and a class order.

    Build it with :func:`build_task` (same arguments). Equal tasks compare equal, so a
    checkpoint or bank can be checked with ``Task.from_dict(saved) == task``.
    Accessors return fresh lists / arrays; the task itself cannot be changed.
    """

    dataset: str | DatasetSpec
    name: str
    setting: str = "overlap"
    order: tuple[int, ...] | None = None
    _spec: DatasetSpec = field(init=False, repr=False)
    _steps: tuple[tuple[int, ...], ...] = field(init=False, compare=False)
    _step_lut: np.ndarray = field(init=False, compare=False, hash=False)

    def __post_init__(self):
        spec = self.dataset if isinstance(self.dataset, DatasetSpec) else get_dataset(self.dataset)
        name, base, inc = _parse_name(spec, self.name)
        if not isinstance(self.setting, str) or self.setting.strip().lower() not in SETTINGS:
            raise ValueError(f"unknown setting {self.setting!r}; use 'overlap' or 'disjoint'")
        order = _parse_order(spec, self.order)
        if inc == 0:
            steps = (order,)
        else:
            steps = (order[:base],) + tuple(
                order[s : s + inc] for s in range(base, spec.num_classes, inc)
            )
        # step_lut[c] = the step that introduces class id c, -1 for 0, 255 and non-class ids.
        step_lut = np.full(256, -1, dtype=np.int64)
        for t, classes in enumerate(steps):
            step_lut[np.asarray(classes, dtype=np.int64)] = t
        step_lut.setflags(write=False)
        object.__setattr__(self, "dataset", spec.name)
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "setting", self.setting.strip().lower())
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "_steps", steps)
        object.__setattr__(self, "_step_lut", step_lut)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        """Rebuild a task from :meth:`to_dict` output (e.g. read from a manifest or checkpoint)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a task dict is expected (keys dataset, name, setting, order), got {data!r}")
        allowed = {"dataset", "name", "setting", "order", "classes"}
        unknown = sorted(set(data) - allowed)
        missing = sorted({"dataset", "name"} - set(data))
        if unknown or missing:
            raise ValueError(
                f"task dict must have keys dataset, name (and optionally setting, order, classes); "
                f"unknown keys {unknown}, missing keys {missing}"
            )
        data = dict(data)
        classes = data.pop("classes", None)
        if classes is not None:
            if not isinstance(classes, Mapping):
                raise ValueError(f"a task dict's 'classes' must be a mapping, got {classes!r}")
            data["dataset"] = DatasetSpec(name=data["dataset"], **classes)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able description; ``Task.from_dict(task.to_dict()) == task``. The classes
        of a dataset that is not built in (:data:`DATASETS`) are recorded under "classes"."""
        out = {
            "dataset": self.dataset,
            "name": self.name,
            "setting": self.setting,
            "order": list(self.order),
        }
        if DATASETS.get(self.dataset) != self._spec:
            out["classes"] = self._spec.to_dict()
        return out

    # ----------------------------------------------------------------- structure
    @property
    def spec(self) -> DatasetSpec:
        return self._spec

    @property
    def steps(self) -> list[list[int]]:
        """Class ids of every step, in task order (a fresh copy)."""
        return [list(s) for s in self._steps]

    @property
    def num_steps(self) -> int:
        return len(self._steps)

    @property
    def num_classes(self) -> int:
        """Foreground classes of the dataset (all of them are learned by the last step)."""
        return self.spec.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """Dataset class names, index = class id (0 = background / other)."""
        return self.spec.class_names

    @property
    def unseen_test_label(self) -> int:
        return self.spec.unseen_test_label

    @property
    def is_custom_order(self) -> bool:
        return self.order != tuple(range(1, self.num_classes + 1))

    def check_step(self, t: Any) -> int:
        """``t`` as an int, or ValueError when it is not a step of this task."""
        if isinstance(t, (bool, np.bool_)):
            raise ValueError(f"step must be an integer, got {t!r}")
        try:
            step = operator.index(t)
        except TypeError:
            raise ValueError(f"step must be an integer, got {t!r}") from None
        if not 0 <= step < self.num_steps:
            raise ValueError(
                f"step {step} out of range 0..{self.num_steps - 1} for task {self.describe()}"
            )
        return step

    def step_of(self, class_id: int) -> int:
        """The step that introduces ``class_id`` (ValueError for 0, 255 and non-class ids)."""
        c = operator.index(class_id)
        if not 1 <= c <= self.num_classes:
            raise ValueError(
                f"class id {class_id!r} is not a class of {self.dataset} (ids 1..{self.num_classes})"
            )
        return int(self._step_lut[c])

    def new_classes(self, t: int) -> list[int]:
        """C_t: the classes step t learns."""
        return list(self._steps[self.check_step(t)])

    def old_classes(self, t: int) -> list[int]:
        """Classes of the steps before t, in task order (empty at step 0)."""
        t = self.check_step(t)
        return [c for s in self._steps[:t] for c in s]

    def seen_classes(self, t: int) -> list[int]:
        """Classes of steps 0..t, in task order."""
        t = self.check_step(t)
        return [c for s in self._steps[: t + 1] for c in s]

    def step_sizes(self, t: int) -> list[int]:
        """Number of classes of steps 0..t (the sizes of the classifier heads 1..t+1)."""
        t = self.check_step(t)
        return [len(s) for s in self._steps[: t + 1]]

    # ----------------------------------------------------------------- channels
    def channel_classes(self, t: int) -> list[int]:
        """Class id held by each output channel at step t: background, then seen classes."""
        return [0] + self.seen_classes(t)

    def num_channels(self, t: int) -> int:
        return 1 + len(self.seen_classes(t))

    def channel_of(self, class_id: int, t: int) -> int:
        """Output channel of ``class_id`` at step t (0 for background)."""
        t = self.check_step(t)
        c = operator.index(class_id)
        if c == 0:
            return 0
        s = self.step_of(c)
        if s > t:
            raise ValueError(
                f"class {c} ({self.class_names[c]}) is learned at step {s}, so it has no channel "
                f"at step {t} of task {self.describe()}"
            )
        return 1 + self.seen_classes(t).index(c)

    def class_to_channel_lut(self, t: int) -> np.ndarray:
        """int64 table of 256: seen class -> channel, 0 -> 0, 255 -> 255, anything else -> 0."""
        seen = np.asarray(self.seen_classes(t), dtype=np.int64)
        lut = np.zeros(256, dtype=np.int64)
        lut[seen] = np.arange(1, len(seen) + 1, dtype=np.int64)
        lut[IGNORE_LABEL] = IGNORE_LABEL
        return lut

    # ----------------------------------------------------------------- labels
    def train_label_lut(self, t: int) -> np.ndarray:
        """uint8 table of 256 from a label file's values to step-t training labels: C_t kept,
        255 kept, everything else 0 (the values first become class ids, :meth:`DatasetSpec.label_lut`)."""
        new = np.asarray(self.new_classes(t), dtype=np.int64)
        lut = np.zeros(256, dtype=np.uint8)
        lut[new] = new
        lut[IGNORE_LABEL] = IGNORE_LABEL
        return lut[self._spec.label_lut()]

    def test_label_lut(self, t: int) -> np.ndarray:
        """uint8 table of 256 from a label file's values to step-t test labels (the values
        first become class ids, :meth:`DatasetSpec.label_lut`).

        Seen classes and 0 are kept, 255 stays 255, dataset classes not yet seen become
        the dataset's ``unseen_test_label`` (0 VOC / synthetic, 255 ADE20K). Ids that are
        no class of the dataset become 255, so evaluation never counts them.
        """
        t = self.check_step(t)
        ids = np.arange(256, dtype=np.int64)
        step = self._step_lut
        lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
        lut[(step >= 0) & (step <= t)] = ids[(step >= 0) & (step <= t)]
        lut[step > t] = self.unseen_test_label
        lut[0] = 0
        return lut[self._spec.label_lut()]

    def _present_steps(self, present_classes: Iterable[int]) -> np.ndarray:
        """Steps of the dataset classes among ``present_classes`` (0, 255 and other ids dropped)."""
        if isinstance(present_classes, np.ndarray):
            ids = present_classes.astype(np.int64, copy=False).ravel()
        else:
            ids = np.fromiter((operator.index(c) for c in present_classes), dtype=np.int64)
        ids = ids[(ids >= 1) & (ids <= self.num_classes)]
        return self._step_lut[ids]

    def keeps_train_image(self, present_classes: Iterable[int], t: int) -> bool:
        """Whether an image with these label classes is in step t's training set.

        overlap: it has a pixel of a class of C_t. disjoint: that, and no pixel of a class
        of a later step. 0 and 255 (and ids outside the dataset) are ignored.
        """
        t = self.check_step(t)
        steps = self._present_steps(present_classes)
        if not np.any(steps == t):
            return False
        return self.setting == "overlap" or not np.any(steps > t)

    def keeps_test_image(self, present_classes: Iterable[int], t: int) -> bool:
        """Whether a validation image is in step t's test set: it has a class seen by step t."""
        t = self.check_step(t)
        steps = self._present_steps(present_classes)
        return bool(np.any(steps <= t))

    # ----------------------------------------------------------------- text
    def describe(self, names: bool = False) -> str:
        """One line such as ``voc 15-1 overlap: 6 steps: 1-15 | 16 | ... | 20``.

        With ``names=True``, one extra line per step listing its class names.
        """
        head = f"{self.dataset} {self.name} {self.setting}"
        if self.is_custom_order:
            head += " (custom order)"
        plural = "step" if self.num_steps == 1 else "steps"
        text = f"{head}: {self.num_steps} {plural}: " + " | ".join(
            _ranges(s) for s in self._steps
        )
        if names:
            lines = [text]
            for t, s in enumerate(self._steps):
                lines.append(f"  step {t} ({len(s)}): " + ", ".join(self.class_names[c] for c in s))
            text = "\n".join(lines)
        return text

    def __repr__(self) -> str:
        return f"Task({self.describe()})"

    def __str__(self) -> str:
        return self.describe()


def build_task(
    dataset: str | DatasetSpec,
    name: str,
    setting: str = "overlap",
    order: Sequence[int] | None = None,
) -> Task:
    """The :class:`Task` for ``dataset`` (a built-in key, "voc", "ade", "synthetic", or a
    :class:`DatasetSpec`) and ``name`` ("15-1", "joint", ...).

    ``order`` is a permutation of the class ids 1..N; steps then take the classes in that
    order (default: id order). Bad input raises ValueError saying what to change.
    """
    return Task(dataset=dataset, name=name, setting=setting, order=order)


def task_text(task: Mapping[str, Any]) -> str:
    """How messages name a task dict stored in a file (a checkpoint's tag, a bank's manifest, a
    prepass header, ``task.json``): ``"voc 15-1 overlap"``."""
    return f"{task.get('dataset')} {task.get('name')} {task.get('setting', 'overlap')}"


def same_task(stored: Any, task: Task) -> bool:
    """Whether ``stored`` (a task dict read from a file) describes ``task``; False for anything
    that is no valid task dict."""
    try:
        return Task.from_dict(stored) == task
    except (ValueError, TypeError):
        return False
