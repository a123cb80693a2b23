"""Start-up checks of a dataset a user registers in Detectron2's catalogs: what its loader
would otherwise get silently wrong.

* :func:`check_class_names`: ``stuff_classes`` that name a class twice, or name value 0 like a
  background while ``task.background=False`` adds one (found at start-up, not after step 0).
* :func:`check_pairs`: an image paired with a label of another file stem. Detectron2's
  ``load_sem_seg`` pairs the sorted folders by position when they hold equally many files, so
  one image without a label and one label without an image shift every pair after them.
  A dataset whose files are paired on purpose across different stems (Cityscapes'
  ``*_leftImg8bit.png`` / ``*_gtFine_labelTrainIds.png``) says so in its metadata:
  ``MetadataCatalog.get(name).set(eir_stems_differ=True)``.
* :func:`dropped_files`: the files of the dataset's folders that its dicts leave out (an
  extension of another case, images without labels, labels without images), for a report.

Core layer: no Detectron2; the callers pass the dicts and metadata.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Iterable, Sequence

__all__ = ["STEMS_DIFFER_KEY", "check_class_names", "check_pairs", "dropped_files", "describe_dropped"]

#: The metadata key by which a dataset says its images and labels differ in stem on purpose.
STEMS_DIFFER_KEY = "eir_stems_differ"
#: Names that say a label value is the background (compared in lower case).
BACKGROUND_NAMES = ("background", "bg", "_background_", "__background__", "backgrounds")
#: File extensions of images (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_SHOWN = 3


def check_class_names(dataset: str, names: Sequence[str], background: bool) -> None:
    """Refuse ``stuff_classes`` that give two label values one name, and a class named like the
    background the run adds when ``background`` is False, saying which setting fits."""
    looks_like_background = [v for v, n in enumerate(names) if str(n).strip().lower() in BACKGROUND_NAMES]
    if not background and looks_like_background:
        value = looks_like_background[0]
        advice = (
            "The names suggest task.background=True (value 0 is the background, 1..K the classes); "
            "if value 0 is a class of its own, rename it in stuff_classes"
            if value == 0 else "rename that class in stuff_classes"
        )
        raise ValueError(
            f"dataset {dataset!r}: label value {value} is named {names[value]!r}, but with "
            "task.background=False every value of stuff_classes is a class beside the background "
            f"the run adds (the pixels of ignore_label). {advice}."
        )
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        listing = "; ".join(
            f"{name!r} (values {', '.join(str(v) for v, n in enumerate(names) if n == name)})" for name in repeated
        )
        raise ValueError(
            f"dataset {dataset!r}: stuff_classes names a class more than once: {listing}. Each label "
            "value needs a name of its own (metrics and reports are keyed by name)"
        )


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def check_pairs(dataset: str, dicts: Sequence[dict]) -> None:
    """Refuse dicts whose image and label differ in file stem, naming the first such pairs."""
    bad = [(d["file_name"], d["sem_seg_file_name"]) for d in dicts
           if _stem(str(d["file_name"])) != _stem(str(d["sem_seg_file_name"]))]
    if not bad:
        return
    shown = "; ".join(f"{image} with {label}" for image, label in bad[:_SHOWN])
    raise ValueError(
        f"dataset {dataset!r}: {len(bad)} of its {len(dicts)} images are paired with a label of "
        f"another name, e.g. {shown}. Detectron2's load_sem_seg pairs the sorted folders by position "
        "when they hold equally many files, so an image without a label and a label without an image "
        "shift every pair after them: give each image the label of its name and remove the strays. "
        "If the dataset pairs files of different names on purpose, set "
        f"MetadataCatalog.get({dataset!r}).set({STEMS_DIFFER_KEY}=True)"
    )


def _listing(folder: str) -> list[str]:
    """The visible file names of ``folder``, sorted; none when it cannot be listed."""
    try:
        return sorted(n for n in os.listdir(folder) if not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))
    except OSError:
        return []


def dropped_files(
    dicts: Sequence[dict], image_dirs: Iterable[str] = (), label_dirs: Iterable[str] = ()
) -> dict[str, dict[str, list[str]]]:
    """``{folder: {reason: [file name, ...]}}``: the files of the dataset's folders (those of its
    dicts, and ``image_dirs`` / ``label_dirs``, e.g. its metadata's ``image_root`` /
    ``sem_seg_root``) that no dict uses, by reason: ``"extension differs in case"`` (``x.JPG``
    beside a label ``x.png`` where the images are ``.jpg``), ``"images without a label"``,
    ``"labels without an image"``. Hidden files and files of other extensions are not counted."""
    images = [str(d["file_name"]) for d in dicts]
    labels = [str(d["sem_seg_file_name"]) for d in dicts]
    used = {os.path.normpath(f) for f in images + labels}
    image_suffixes = {os.path.splitext(f)[1].lower() for f in images}
    label_suffixes = {os.path.splitext(f)[1].lower() for f in labels} or {".png"}
    image_folders = sorted({os.path.dirname(f) for f in images} | set(map(str, image_dirs)))
    label_folders = sorted({os.path.dirname(f) for f in labels} | set(map(str, label_dirs)))
    listed = {folder: _listing(folder) for folder in image_folders + label_folders}
    label_stems = {_stem(n) for f in label_folders for n in listed[f] if os.path.splitext(n)[1].lower() in label_suffixes}
    image_stems = {_stem(n) for f in image_folders for n in listed[f] if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES}
    out: dict[str, dict[str, list[str]]] = {}

    def left_out(folder: str, reason: str, name: str) -> None:
        out.setdefault(folder, {}).setdefault(reason, []).append(name)

    for folder in image_folders:
        for name in listed[folder]:
            suffix = os.path.splitext(name)[1]
            if os.path.normpath(os.path.join(folder, name)) in used or suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if _stem(name) not in label_stems:
                left_out(folder, "images without a label", name)
            elif suffix != suffix.lower() and (not image_suffixes or suffix.lower() in image_suffixes):
                left_out(folder, "extension differs in case", name)
    for folder in label_folders:
        for name in listed[folder]:
            if os.path.normpath(os.path.join(folder, name)) in used:
                continue
            if os.path.splitext(name)[1].lower() in label_suffixes and _stem(name) not in image_stems:
                left_out(folder, "labels without an image", name)
    return out


def describe_dropped(dataset: str, dropped: dict[str, dict[str, list[str]]]) -> str:
    """One line per folder: how many of its files ``dataset`` leaves out, why, and the first names."""
    lines = []
    for folder, reasons in dropped.items():
        parts = [
            f"{len(names)} {reason} ({', '.join(names[:_SHOWN])}{' ...' if len(names) > _SHOWN else ''})"
            for reason, names in reasons.items()
        ]
        lines.append(f"{dataset} leaves out files of {folder}: {'; '.join(parts)}")
    return "\n".join(lines)
