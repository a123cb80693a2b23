"""Install the EIR project.

Declared here is what the code imports. Detectron2 itself is not on PyPI and cannot be
declared: ``tools/setup_env.sh`` (run by ``tools/run.sh`` and ``tools/test.sh``) installs it
from the upstream repository or from a wheel or folder you name (README.md, Install).
"""
from setuptools import find_packages, setup

setup(
    name="eir",
    version="0.1.0",
    description="Enhanced Instance Replay (CVPR 2025) for continual semantic segmentation, as a Detectron2 project",
    python_requires=">=3.9",
    packages=find_packages(include=["eir", "eir.*"]),
    install_requires=[
        # Tested with torch 2.13 and 2.14.1 (torchvision 0.29.1); Detectron2 must be built for the same torch.
        "torch>=2.0,<2.15",
        "torchvision>=0.15,<0.30",
        "numpy",
        "Pillow",
        "opencv-python-headless",
        "Pillow",
        "fvcore",
        "matplotlib",
        "tensorboard",  # Detectron2's TensorboardXWriter: each step's training and evaluation scalars
        "tqdm",
    ],
    extras_require={"dev": ["pytest", "ruff"]},
)
