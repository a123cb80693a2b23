"""Dataset registration and per-step views (Detectron2 layer).

:func:`register_eir_datasets` registers six datasets in Detectron2's
``DatasetCatalog`` / ``MetadataCatalog``, found under ``root`` (default: the
``DETECTRON2_DATASETS`` environment variable, else ``./datasets``)::

    eir_voc_train   root/VOC2012 or root/VOCdevkit/VOC2012 (either is accepted):
                      JPEGImages/<id>.jpg, SegmentationClassAug/<id>.png,
                      ImageSets/Segmentation/train_aug.txt        (10,582 images)
    eir_voc_val       JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
                      ImageSets/Segmentation/val.txt              (1,449 images)
    eir_ade_train   root/ADEChallengeData2016/images/training/*.jpg,
                      annotations/training/*.png (raw: 0 = other, 1..150) (20,210 images)
    eir_ade_val       images/validation/*.jpg, annotations/validation/*.png (2,000 images)
    eir_synthetic_{train,val}
                    root/eir_synthetic (VOC-like layout, SegmentationClassAug for both
                      splits); generated with default arguments on first use if absent.

Dataset dicts hold ``file_name``, ``sem_seg_file_name`` and ``image_id`` (the file
stem). They leave out ``height`` / ``width``: reading 20k image headers at start-up
costs more than it helps, and the mapper reports sizes of what it returns.

Any other dataset in the catalogs works the same way: :func:`catalog_spec` reads a run's class
table from the ``MetadataCatalog`` entries of its datasets (``stuff_classes``, ``stuff_colors``,
``ignore_label``; the built-in six are registered with theirs), and :func:`catalog_dicts` gives
their dicts an ``image_id`` where they have none (Detectron2's ``load_sem_seg``). Such a
dataset's class names, image/label pairs and left-out files are checked at start-up
(:mod:`eir.data.catalog_checks`), and a run's images, built-in or not, from their headers
(:mod:`eir.data.image_checks`).

Label files hold the dataset's values; the task's tables turn them into class ids as in the
rest of the project (0 background, 255 ignore; :meth:`eir.tasks.DatasetSpec.label_lut`).
:func:`class_presence` reads every label once (cached) to know which classes an
image has; :func:`step_dataset_dicts` then selects a step's training or test
images (METHOD.md section 2) and :func:`replay_dataset_dicts` joins the
bank's entries to the training set.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import hashlib
import logging
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from tqdm import tqdm

from eir.constants import IGNORE_LABEL
from eir.data.catalog_checks import (
    STEMS_DIFFER_KEY,
    check_class_names,
    check_pairs,
    describe_dropped,
    dropped_files,
)
from eir.data.image_checks import check_image_files
from eir.data.io import read_label
from eir.fileio import atomic_write
from eir.tasks import DATASETS, DatasetSpec, Task

__all__ = [
    "DATASET_NAMES",
    "UnregisteredDatasetError",
    "catalog_dicts",
    "catalog_spec",
    "check_label_values",
    "class_presence",
    "data_fingerprint",
    "register_eir_datasets",
    "replay_dataset_dicts",
    "step_dataset_dicts",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
LAYOUT_HELP = "see the 'Datasets' section of README.md for the expected layouts"
SYNTHETIC_DIR = "eir_synthetic"

#: Detectron2 dataset name -> (EIR dataset key, split).
DATASET_NAMES = {
    f"eir_{ds}_{split}": (ds, split)
    for ds in ("voc", "ade", "synthetic")
    for split in ("train", "val")
}

_registered_root: dict[str, str] = {}


class UnregisteredDatasetError(ValueError):
    """A config names a dataset that no code has registered in Detectron2's DatasetCatalog
    (a tool reading a run's config.yaml may still load the file that registers it)."""

#: Presence tables computed for a cache file that was not to be written yet (``write_cache=False``:
#: a command checks its data before it claims its run folder, and --eval-only writes nothing):
#: (cache file, key) -> table. Later calls for that file use it instead of reading the labels
#: again; the first that may write the cache writes it.
_unwritten: dict[tuple[str, str], np.ndarray] = {}

#: The catalog datasets whose left-out files were reported (dataset, first and last file, count).
_reported: set[tuple] = set()


# --------------------------------------------------------------------------- label values


# --------------------------------------------------------------------------- layouts


def _default_root(root: str | os.PathLike | None) -> Path:
    if root is None:
        root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    return Path(root).expanduser()


def _voc_dir(root: Path) -> Path:
    """root/VOC2012 or root/VOCdevkit/VOC2012, whichever exists (the first when neither does)."""
    candidates = [root / "VOC2012", root / "VOCdevkit" / "VOC2012"]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


def _missing(path: Path, what: str, dataset: str, extra: str = "") -> FileNotFoundError:
    return FileNotFoundError(
        f"{dataset}: {what} not found at {path}{extra}. Set DETECTRON2_DATASETS (or pass root) "
        f"to the folder that holds it; {LAYOUT_HELP}"
    )


def _read_ids(list_file: Path) -> list[str]:
    """Image ids of a VOC list file: one id per line (a 'JPEGImages/x.jpg label.png' pair also works)."""
    ids = []
    for line in list_file.read_text().splitlines():
        parts = line.split()
        if parts:
            ids.append(Path(parts[0]).stem)
    return ids


def _check_present(paths: Sequence[str], folder: Path, dataset: str, kind: str) -> None:
    """All files exist (one directory listing instead of a stat per file)."""
    names = set(os.listdir(folder))
    absent = [p for p in paths if Path(p).name not in names]
    if absent:
        shown = ", ".join(absent[:3]) + (" ..." if len(absent) > 3 else "")
        raise FileNotFoundError(
            f"{dataset}: {len(absent)} {kind} file(s) listed but missing, e.g. {shown}; "
            f"{LAYOUT_HELP}"
        )


def _voc_like_dicts(
    base: Path, label_dir: str, list_name: str, dataset: str
) -> list[dict[str, Any]]:
    image_dir = base / "JPEGImages"
    seg_dir = base / label_dir
    list_file = base / "ImageSets" / "Segmentation" / list_name
    for path, what in ((image_dir, "image folder"), (seg_dir, "label folder"), (list_file, "image list")):
        if not path.exists():
            extra = ""
            if dataset.startswith("eir_voc"):
                extra = (
                    " (VOC is looked for in DETECTRON2_DATASETS/VOC2012 and "
                    "DETECTRON2_DATASETS/VOCdevkit/VOC2012; SegmentationClassAug and train_aug.txt "
                    "come from the SBD-augmented set)"
                )
            raise _missing(path, what, dataset, extra)
    ids = _read_ids(list_file)
    dicts = [
        {
            "file_name": str(image_dir / f"{i}.jpg"),
            "sem_seg_file_name": str(seg_dir / f"{i}.png"),
            "image_id": i,
        }
        for i in ids
    ]
    _check_present([d["file_name"] for d in dicts], image_dir, dataset, "image")
    _check_present([d["sem_seg_file_name"] for d in dicts], seg_dir, dataset, "label")
    return dicts


def _ade_dicts(base: Path, split: str, dataset: str) -> list[dict[str, Any]]:
    sub = "training" if split == "train" else "validation"
    image_dir = base / "images" / sub
    seg_dir = base / "annotations" / sub
    for path, what in ((image_dir, "image folder"), (seg_dir, "label folder")):
        if not path.is_dir():
            raise _missing(path, what, dataset, " (ADE20K SceneParsing: ADEChallengeData2016)")
    stems = sorted(n[:-4] for n in os.listdir(image_dir) if n.endswith(".jpg"))
    if not stems:
        raise _missing(image_dir / "*.jpg", "images", dataset)
    dicts = [
        {
            "file_name": str(image_dir / f"{s}.jpg"),
            "sem_seg_file_name": str(seg_dir / f"{s}.png"),
            "image_id": s,
        }
        for s in stems
    ]
    _check_present([d["sem_seg_file_name"] for d in dicts], seg_dir, dataset, "label")
    return dicts


def _ensure_synthetic(base: Path) -> None:
    from eir.data import synthetic

    if (base / "meta.json").is_file() and not synthetic.is_stale(base):
        return
    if not base.exists():
        logger.info("Generating the synthetic dataset at %s (first use)", base)
    synthetic.ensure_synthetic(base, num_workers=min(8, os.cpu_count() or 1))  # same files for any count


def _paths(ds: str, split: str, root: Path) -> tuple[Path, Path, Callable[[], list[dict]]]:
    """(image_root, sem_seg_root, loader) of one dataset split."""
    name = f"eir_{ds}_{split}"
    if ds == "voc":
        def load():
            base = _voc_dir(root)
            if split == "train":
                return _voc_like_dicts(base, "SegmentationClassAug", "train_aug.txt", name)
            return _voc_like_dicts(base, "SegmentationClass", "val.txt", name)

        base = _voc_dir(root)
        label_dir = "SegmentationClassAug" if split == "train" else "SegmentationClass"
        return base / "JPEGImages", base / label_dir, load
    if ds == "ade":
        base = root / "ADEChallengeData2016"
        sub = "training" if split == "train" else "validation"
        return base / "images" / sub, base / "annotations" / sub, lambda: _ade_dicts(base, split, name)
    base = root / SYNTHETIC_DIR
    list_name = "train_aug.txt" if split == "train" else "val.txt"

    def load_synthetic():
        _ensure_synthetic(base)
        return _voc_like_dicts(base, "SegmentationClassAug", list_name, name)

    return base / "JPEGImages", base / "SegmentationClassAug", load_synthetic


def register_eir_datasets(root: str | os.PathLike | None = None) -> list[str]:
    """Register ``eir_{voc,ade,synthetic}_{train,val}``; returns their names.

    Idempotent: calling again with the same root does nothing; with another root the
    six datasets are re-registered there. Files are listed lazily, when
    ``DatasetCatalog.get`` is first called, so registering never fails on a missing dataset.
    """
    root = _default_root(root)
    key = str(root.resolve())
    for name, (ds, split) in DATASET_NAMES.items():
        if _registered_root.get(name) == key and name in DatasetCatalog.list():
            continue
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        image_root, seg_root, loader = _paths(ds, split, root)
        spec = DATASETS[ds]
        DatasetCatalog.register(name, loader)
        MetadataCatalog.get(name).set(
            stuff_classes=list(spec.class_names),
            stuff_colors=[list(c) for c in spec.colors],
            ignore_label=IGNORE_LABEL,
            evaluator_type="eir_sem_seg",
            eir_dataset=ds,
            eir_split=split,
            image_root=str(image_root),
            sem_seg_root=str(seg_root),
        )
        _registered_root[name] = key
    return list(DATASET_NAMES)


# --------------------------------------------------------------------------- class presence


def check_label_values(label: np.ndarray, spec: DatasetSpec, path) -> None:
    """Raise ValueError naming ``path`` when its label holds a value that is no class of ``spec``."""
    bad = spec.invalid_values(label)
    if bad:
        raise ValueError(
            f"label {path} holds values {bad} outside the label values of {spec.name} "
            f"({spec.describe_values()}); check the dataset root, that labels are raw class-id "
            "PNGs, and task.background (whether value 0 is the background)"
        )


def _presence_row(path: str, spec: DatasetSpec) -> np.ndarray:
    label = read_label(path)
    check_label_values(label, spec, path)
    counts = np.bincount(spec.label_lut()[label].ravel(), minlength=256)
    return counts[: spec.num_classes + 1] > 0


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1  # a missing file: reading it fails later, naming it
    return st.st_size, st.st_mtime_ns


def _presence_key(files: Sequence[str], spec: DatasetSpec) -> str:
    """The cache key of a presence table: how label values become class ids, and the label
    files with their sizes and modification times, so a label rewritten in place under its
    name is read again."""
    head = f"{spec.num_classes}"
    if not (spec.background and spec.unlabelled_value == IGNORE_LABEL):  # the built-in datasets' key is the class count
        head += f"\t{spec.label_lut().tobytes().hex()}"
    h = hashlib.sha1(f"{head}\n".encode())
    for f in files:
        size, mtime = _stat(f)
        h.update(f"{f}\t{size}\t{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def data_fingerprint(dataset_dicts: Sequence[dict]) -> dict[str, list[int]]:
    """``{file: [size, mtime_ns]}`` of every image and label file of ``dataset_dicts``, each file
    named relative to the folder that holds them all (so a dataset moved or copied with its
    times kept has the same fingerprint). Cheap: one ``stat`` per file, no file is read."""
    files = [str(d[key]) for d in dataset_dicts for key in ("file_name", "sem_seg_file_name") if key in d]
    if not files:
        return {}
    base = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0])
    return {os.path.relpath(f, base): list(_stat(f)) for f in files}


def class_presence(
    dataset_dicts: Sequence[dict],
    spec: DatasetSpec,
    cache_file: str | os.PathLike | None = None,
    num_workers: int = 0,
    verbose: bool | None = None,
    write_cache: bool = True,
) -> np.ndarray:
    """Which classes each label holds: bool ``[len(dataset_dicts), K + 1]`` (column c = class
    id c of ``spec``, a :class:`~eir.tasks.DatasetSpec` of K classes; column 0 = background).

    Labels are read in ``num_workers`` threads (0: in this thread). A label with a value
    that is no label value of ``spec`` raises ValueError naming the file.
    With ``cache_file`` (an .npz), the table is reused when it was computed for the
    same label files (names, sizes and modification times) and the same class table, and
    recomputed (and rewritten) otherwise. Only the main process writes the cache, and only
    with ``write_cache``; with ``write_cache=False`` the cache is read, never written (nor its
    folder made), and the table is kept in memory for the next call with that cache file.
    ``verbose=None`` shows the progress bar on the main process only.
    """
    if verbose is None:
        verbose = comm.is_main_process()
    files = [str(d["sem_seg_file_name"]) for d in dataset_dicts]
    if cache_file is None:
        return _read_presence(files, spec, num_workers, verbose)
    key = _presence_key(files, spec)
    cache_file = Path(cache_file)
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    table = z["presence"].astype(bool)
                    if table.shape == (len(files), spec.num_classes + 1):
                        return table
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile):
            pass
        logger.info("class-presence cache %s does not match the dataset or is damaged; recomputing", cache_file)
    pending = (str(cache_file), key)
    table = _unwritten.pop(pending, None)
    if table is None:
        table = _read_presence(files, spec, num_workers, verbose)
    if not write_cache:
        _unwritten[pending] = table
    elif comm.is_main_process():
        def write(f):
            np.savez_compressed(f, presence=table, key=np.array(key))

        atomic_write(cache_file, write)
    return table


def _read_presence(files: Sequence[str], spec: DatasetSpec, num_workers: int, verbose: bool) -> np.ndarray:
    """:func:`class_presence`'s table, from the labels (``num_workers`` threads)."""
    num_classes = spec.num_classes

    def row(path: str) -> np.ndarray:
        return _presence_row(path, spec)

    table = np.zeros((len(files), num_classes + 1), dtype=bool)
    bar = tqdm(total=len(files), desc="reading labels", unit="img", disable=not verbose)
    try:
        if num_workers and num_workers > 0:
            with ThreadPoolExecutor(max_workers=num_workers) as pool:
                for i, r in enumerate(pool.map(row, files, chunksize=1)):
                    table[i] = r
                    bar.update()
        else:
            for i, f in enumerate(files):
                table[i] = row(f)
                bar.update()
    finally:
        bar.close()
    return table


# --------------------------------------------------------------------------- step views


def catalog_dicts(dataset_name: str) -> list[dict]:
    """``DatasetCatalog.get(dataset_name)``, checked to be semantic segmentation dicts, each
    with an ``image_id`` (the prepass and the bank key images by it; Detectron2's
    ``load_sem_seg`` gives none): the file's stem, or its path below the images' common
    folder when stems repeat."""
    if dataset_name not in DatasetCatalog.list():
        raise UnregisteredDatasetError(
            f"dataset {dataset_name!r} is not registered in Detectron2's DatasetCatalog; register it "
            "(e.g. with detectron2.data.datasets.load_sem_seg) before the run, or name one of: "
            + ", ".join(sorted(DatasetCatalog.list()))
        )
    dicts = DatasetCatalog.get(dataset_name)
    lacking = [i for i, d in enumerate(dicts) if "file_name" not in d or "sem_seg_file_name" not in d]
    if lacking:
        raise ValueError(
            f"dataset {dataset_name!r}: {len(lacking)} of its {len(dicts)} dicts (the first: number "
            f"{lacking[0]}) lack 'file_name' or 'sem_seg_file_name'; a semantic segmentation "
            "dataset gives both"
        )
    if dataset_name not in DATASET_NAMES:  # the built-in layouts are checked as they are listed
        _check_catalog_files(dataset_name, dicts)
    if all("image_id" in d for d in dicts):
        return dicts
    stems = [os.path.splitext(os.path.basename(str(d["file_name"])))[0] for d in dicts]
    if len(set(stems)) < len(stems):
        files = [str(d["file_name"]) for d in dicts]
        base = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0])
        stems = [os.path.splitext(os.path.relpath(f, base))[0] for f in files]
    return [d if "image_id" in d else dict(d, image_id=stem) for d, stem in zip(dicts, stems)]


def _check_catalog_files(dataset_name: str, dicts: Sequence[dict]) -> None:
    """A user's dataset: refuse images paired with labels of other names (unless its metadata
    says they differ on purpose) and a dataset without images; report, once, the files of its
    folders that it leaves out (:mod:`eir.data.catalog_checks`). The metadata's ``image_root``
    and ``sem_seg_root``, when set, are searched too."""
    meta = MetadataCatalog.get(dataset_name)
    if not meta.get(STEMS_DIFFER_KEY, False):
        check_pairs(dataset_name, dicts)
    key = (dataset_name, len(dicts), str(dicts[0]["file_name"]) if dicts else meta.get("image_root"))
    if key in _reported and dicts:
        return
    roots = [meta.get("image_root")], [meta.get("sem_seg_root")]
    dropped = dropped_files(dicts, *([r for r in rs if r] for rs in roots))
    report = describe_dropped(dataset_name, dropped)
    if not dicts:
        raise ValueError(
            f"dataset {dataset_name!r} has no image: its loader left out every file"
            + (f":\n{report}" if report else " (set its MetadataCatalog image_root and sem_seg_root to be told which)")
            + "\nCheck the folders, and image_ext / gt_ext of load_sem_seg (they are case-sensitive)"
        )
    _reported.add(key)
    if report:
        logger.warning("%s", report)


def catalog_spec(
    train_dataset: str, test_dataset: str, *, background: bool | None, unseen_test_label: int | None = None,
) -> DatasetSpec:
    """The class table of a continual run on the registered datasets ``train_dataset`` and
    ``test_dataset``, from their ``MetadataCatalog`` entries: ``stuff_classes`` (the name of
    each label value), ``stuff_colors`` (optional), ``ignore_label`` (default 255) and
    ``eir_dataset`` (optional: the name runs record, default ``train_dataset``).
    ``background`` and ``unseen_test_label``: :meth:`DatasetSpec.from_label_values` (the
    config's ``task.background`` / ``task.unseen_test_label``)."""
    for name in (train_dataset, test_dataset):
        if name not in DatasetCatalog.list():
            catalog_dicts(name)  # raises, naming the registered datasets
    meta = MetadataCatalog.get(train_dataset)
    classes = meta.get("stuff_classes")
    if not classes:
        raise ValueError(
            f"dataset {train_dataset!r} has no stuff_classes in MetadataCatalog: set "
            f"MetadataCatalog.get({train_dataset!r}).stuff_classes to the name of each label value"
        )
    test_classes = MetadataCatalog.get(test_dataset).get("stuff_classes")
    if test_classes is not None and list(test_classes) != list(classes):
        raise ValueError(
            f"the training dataset {train_dataset!r} and the test dataset {test_dataset!r} name "
            f"different classes ({len(classes)} and {len(test_classes)} stuff_classes); a run needs "
            "one class table"
        )
    if background is None:
        raise ValueError(
            f"task.background is not set for {train_dataset!r}: set it to True when label value 0 "
            f"({classes[0]!r}) is the background (VOC style), or False when values "
            f"0..{len(classes) - 1} are the classes and ignore_label marks pixels of none "
            "(Detectron2's ADE20K and Cityscapes formats)"
        )
    check_class_names(train_dataset, list(classes), bool(background))
    name = meta.get("eir_dataset", train_dataset)
    return DatasetSpec.from_label_values(
        name,
        classes,
        background=bool(background),
        unlabelled_value=int(meta.get("ignore_label", IGNORE_LABEL)),
        unseen_test_label=unseen_test_label,
        value_colors=meta.get("stuff_colors"),
        named_tasks=DATASETS[name].named_tasks if name in DATASETS else (),
    )


def _as_task(task: Any) -> Task:
    return task if isinstance(task, Task) else Task.from_dict(task)


def step_dataset_dicts(
    dataset_name: str,
    task: Any,
    step: int,
    split: str,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
    verbose: bool | None = None,
    write_cache: bool = True,
    require_every_class: bool = False,
) -> list[dict]:
    """The dataset dicts of ``dataset_name`` that belong to step ``step`` of ``task``.

    ``split="train"``: images kept by ``task.keeps_train_image`` (overlap: a pixel of
    the step's classes; disjoint: also no pixel of a later step's class).
    ``split="test"``: images with a class seen by the step (C_0..C_t).
    Each returned dict is a copy with ``"eir_step": step``. The class-presence table
    is cached in ``cache_dir/presence_<dataset_name>.npz`` when ``cache_dir`` is given
    (only read with ``write_cache=False``); ``num_workers`` threads read the labels the first time.
    ``require_every_class``: a step's class that none of the returned images holds is an error
    (a run's training images, :func:`eir.engine.builders.build_train_dicts`).
    With ``cache_dir`` (a run's folder), the returned images and labels are checked from their
    headers too (:func:`eir.data.image_checks.check_image_files`), the pairs that passed cached
    in ``cache_dir/headers_<dataset_name>.json`` (written as the presence table is).
    """
    task = _as_task(task)
    step = task.check_step(step)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    names = MetadataCatalog.get(dataset_name).get("stuff_classes")
    if names is not None and tuple(names) != task.spec.value_names:
        raise ValueError(
            f"dataset {dataset_name} names other classes ({len(names)} stuff_classes) than the task "
            f"{task} ({len(task.spec.value_names)}: {task.dataset}'s); build the task from this dataset's "
            "MetadataCatalog (eir.data.datasets.catalog_spec)"
        )
    dicts = catalog_dicts(dataset_name)
    cache_file = Path(cache_dir) / f"presence_{dataset_name}.npz" if cache_dir is not None else None
    presence = class_presence(dicts, task.spec, cache_file, num_workers, verbose, write_cache)
    keep = task.keeps_train_image if split == "train" else task.keeps_test_image
    kept = np.array([keep(np.flatnonzero(row), step) for row in presence], dtype=bool)
    out = [dict(d, eir_step=step) for d, k in zip(dicts, kept) if k]
    if cache_dir is not None:
        check_image_files(
            out, Path(cache_dir) / f"headers_{dataset_name}.json", write_cache and comm.is_main_process(),
            verbose=comm.is_main_process() if verbose is None else verbose,
        )
    logger.info(
        "%s, step %d (%s), %s: %d of %d images", dataset_name, step, task.name, split, len(out), len(dicts)
    )
    if not out:
        logger.warning("%s has no image for step %d of %s (%s split)", dataset_name, step, task, split)
    elif require_every_class:
        _check_every_class_has_images(dataset_name, task, step, presence[kept])
    return out


def _check_every_class_has_images(dataset_name: str, task: Task, step: int, presence: np.ndarray) -> None:
    """Refuse a step with a class that none of its training images holds: the step would
    train that class's channel on negatives only."""
    missing = [c for c in task.new_classes(step) if not presence[:, c].any()]
    if missing:
        names = ", ".join(f"{c} ({task.class_names[c]})" for c in missing)
        raise ValueError(
            f"no training image of {dataset_name} for step {step} of {task} holds class {names} "
            f"({task.setting} setting): check the dataset's labels, task.name and task.order"
        )


def replay_dataset_dicts(bank: Any) -> list[dict]:
    """One dataset dict per bank entry, ``{"bank_index": i, "image_id": "bank_<i>"}``; the mapper renders them."""
    if bank is None:
        return []
    return [{"bank_index": i, "image_id": f"bank_{i}"} for i in range(len(bank))]
