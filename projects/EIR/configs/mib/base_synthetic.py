"""MiB on the synthetic dataset: EIR's synthetic model, data and schedule, with the method swapped.

Everything but ``method`` is ../base_synthetic.py's, learning rates and epochs included (not
MiB's VOC recipe): the synthetic benchmark compares methods, so a difference in its table is
the method's, not the schedule's. Only what the method decides changes: the background channel
is a softmax class trained through the body, the losses are MiB's, there is no bank. The head's
``prior_prob`` (biases that make the background win at the start of training from scratch)
acts on the softmax as on the sigmoid: it starts every pixel as background.
Task files in synthetic/ import this.
"""
from detectron2.config import LazyCall as L

from eir.methods.mib import MiB

from ..base_synthetic import dataloader, model, optimizer, schedule, task, train

method = L(MiB)(w_kd=10.0)  # lambda, the paper's distillation weight (METHOD.md, MiB)
