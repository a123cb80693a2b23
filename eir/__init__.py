"""EIR: Enhanced Instance Replay for continual semantic segmentation.

``eir`` has two layers. The core (``eir.tasks``, ``eir.data.bank``,
``eir.data.paste``, ``eir.data.synthetic``, ``eir.modeling.losses``,
``eir.evaluation.metrics``) needs only PyTorch, NumPy and OpenCV. The Detectron2
layer (datasets, mapper, model, trainer, runner, evaluator) wires it into
Detectron2 and is imported only where Detectron2 is installed.
"""

__version__ = "0.1.0"
