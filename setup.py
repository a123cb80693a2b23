"""Install the EIR project: the core layer's dependencies only.

Detectron2 is not on PyPI; install it separately (see README.md) to use the
Detectron2 layer (training, evaluation, configs).
"""
from setuptools import find_packages, setup

setup(
    name="eir",
    version="0.1.0",
    description="Enhanced Instance Replay (CVPR 2025) for continual semantic segmentation, as a Detectron2 project",
    python_requires=">=3.9",
    packages=find_packages(include=["eir", "eir.*"]),
    install_requires=[
        "torch>=2.0",
        "numpy",
        "opencv-python-headless",
        "pycocotools",
        "fvcore",
        "matplotlib",
        "tensorboard",  # Detectron2's TensorboardXWriter: each step's training and evaluation scalars
        "tqdm",
    ],
    extras_require={"dev": ["pytest", "ruff"]},
)
