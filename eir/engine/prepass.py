"""The prepass: the old model's pseudo-labels over a step's training images, once per step.

Pasting (METHOD.md section 6) needs, for every training image, the old classes the old
model finds in the image's background. Running the old model once at the start of the step
and storing a low-resolution map lets the data loader paste on the CPU; the map is
transformed with the same augmentation as the image. :func:`step_prepass` gives a step its
maps: the stored ``step_t/prepass.npz`` when it was made from the same settings, old weights
and images (:func:`step_prepass_key`), else a fresh :func:`run_prepass`.

The prepass lives in two modules along one line: this one runs the old model (Detectron2
layer) under the method's prepass settings, which come in as arguments (``method.prepass``);
:mod:`eir.data.prepass` is the artifact it makes (format, key, staleness).
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import logging

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from eir.data.io import check_same_size, read_image, read_label
from eir.data.prepass import PrepassStore, StalePrepassError, prepass_key
from eir.engine.run_files import FINAL_CHECKPOINT, PREPASS_FILE
from eir.modeling.losses import PSEUDO_LABEL_RULE, pseudo_labels
from eir.tasks import Task

logger = logging.getLogger(__name__)


class _PrepassImages(Dataset):
    """Images resized to ``short_side`` and step labels at the map's resolution."""

    def __init__(self, dicts, label_lut, short_side, stride):
        self.dicts = dicts
        self.lut = label_lut
        self.short_side = short_side
        self.stride = stride

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, i):
        d = self.dicts[i]
        image = read_image(d["file_name"])
        label = read_label(d["sem_seg_file_name"])
        check_same_size(image, label, d["file_name"], d["sem_seg_file_name"])
        h, w = label.shape
        scale = self.short_side / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        low = (max(1, -(-w // self.stride)), max(1, -(-h // self.stride)))
        label = cv2.resize(self.lut[label], low, interpolation=cv2.INTER_NEAREST)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": torch.from_numpy(label),
            "image_id": d["image_id"],
        }


@torch.no_grad()
def pseudo_label_map(old_model, image: torch.Tensor, label: torch.Tensor, tau: float, channel_to_class):
    """Class ids the old model is sure of where the step label is background (the rule of
    :func:`eir.modeling.losses.pseudo_labels`: top channel of all, background included, >= tau).

    ``image`` is a CHW uint8 tensor, ``label`` the step label at the map's resolution;
    returns a uint8 map of the label's size (0 where nothing is detected).
    """
    images = old_model.preprocess_image([{"image": image}])
    logits = old_model.logits(images.tensor)
    h, w = images.image_sizes[0]
    logits = F.interpolate(
        logits[:, :, :h, :w].float(), size=tuple(label.shape), mode="bilinear", align_corners=False
    )
    label = label.to(logits.device).long()[None]
    # Any non-zero value shields a pixel from pseudo-labelling; only zeros can change.
    channels = pseudo_labels(label, logits, tau, logits.shape[1])
    detected = torch.where((label == 0) & (channels > 0), channels, 0)
    return channel_to_class[detected][0].to(torch.uint8).cpu().numpy()


def prepass_precision(device: torch.device, amp: bool) -> str:
    """The precision the prepass runs the old model in: float16 autocast on CUDA when the run
    uses AMP, else float32 (on the CPU too: bfloat16's 8-bit mantissa would move sigmoid scores
    across the threshold, and the prepass runs once per step, so its speed matters little)."""
    return "float16" if device.type == "cuda" and amp else "float32"


def run_prepass(
    old_model, dicts, task: Task, step: int, *, tau, short_side, stride, num_workers=0, key=None, amp=True,
):
    """Run the old model over ``dicts`` (sharded over ranks); every rank gets the full store.

    ``key`` (:func:`eir.data.prepass.prepass_key`) is recorded in the store; ``amp``: the run's
    AMP setting (:func:`prepass_precision`).
    """
    rank, world = comm.get_rank(), comm.get_world_size()
    shard = dicts[rank::world]
    lut = task.train_label_lut(step)
    loader = DataLoader(
        _PrepassImages(shard, lut, short_side, stride),
        batch_size=None,
        num_workers=num_workers,
    )
    device = old_model.device
    channel_to_class = torch.as_tensor(task.channel_classes(step - 1), device=device)
    store = PrepassStore(task.to_dict(), step, stride, key)
    half = prepass_precision(device, amp) == "float16"
    with torch.autocast(device.type, dtype=torch.float16, enabled=half):
        for item in tqdm(loader, desc=f"prepass step {step}", disable=not comm.is_main_process()):
            store.add(
                item["image_id"],
                pseudo_label_map(old_model, item["image"], item["label"], tau, channel_to_class),
            )
    if world > 1:
        parts = comm.all_gather(store)
        store = PrepassStore(task.to_dict(), step, stride, key)
        for part in parts:
            store.merge(part)
    logger.info("Prepass of step %d: %d images", step, len(store))
    return store


def step_prepass_key(cfg, folder, step: int, dicts, device: torch.device, settings) -> dict:
    """What step ``step``'s prepass maps depend on: the method's prepass ``settings`` (``tau``,
    ``short_side``, ``stride``), the pseudo-label rule, the weights of step - 1 in ``folder``
    (a RunFolder), the images, and the device and precision the old model runs in."""
    return prepass_key(
        tau=settings["tau"],
        stride=settings["stride"],
        short_side=settings["short_side"],
        rule=PSEUDO_LABEL_RULE,
        old_checkpoint=folder.step_dir(step - 1) / FINAL_CHECKPOINT,
        dataset_dicts=dicts,
        device=device.type,
        precision=prepass_precision(device, cfg.train.amp.enabled),
    )


def step_prepass(cfg, task: Task, folder, step: int, dicts, old_model, settings) -> PrepassStore:
    """Step ``step``'s prepass maps of ``dicts`` under the method's prepass ``settings``:
    ``step_t/prepass.npz`` of ``folder`` when its key matches, else computed with ``old_model``
    (and saved by the main process)."""
    path = folder.step_dir(step) / PREPASS_FILE
    device = old_model.device if old_model is not None else torch.device("cpu")
    key = step_prepass_key(cfg, folder, step, dicts, device, settings)
    if path.is_file():
        try:
            return PrepassStore.load(path, task=task, step=step, key=key)
        except StalePrepassError as e:
            logger.info("Recomputing the prepass of step %d: %s", step, e)
        except (OSError, ValueError) as e:
            raise RuntimeError(f"{path} cannot be read ({e}): delete it and rerun to compute it again") from e
    store = run_prepass(
        old_model,
        dicts,
        task,
        step,
        tau=settings["tau"],
        short_side=settings["short_side"],
        stride=settings["stride"],
        num_workers=cfg.dataloader.train.num_workers,
        key=key,
        amp=cfg.train.amp.enabled,
    )
    if comm.is_main_process():
        store.save(path)
    comm.synchronize()
    return store
