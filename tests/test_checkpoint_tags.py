"""A checkpoint of another class table is refused showing the class names that differ."""
import pytest
import torch
from conftest import requires_detectron2

pytestmark = requires_detectron2


def test_a_checkpoint_of_other_class_names_shows_the_names_that_differ(tmp_path):
    from eir.engine.checkpoint import read_step_checkpoint
    from eir.tasks import DatasetSpec, build_task

    def task(names):
        return build_task(DatasetSpec.from_label_values("my_dataset_train", names, background=False), "2-1")

    trained, config = task(["sky", "grass", "road"]), task(["sky", "lawn", "road"])
    path = tmp_path / "model_final.pth"
    torch.save({"model": {}, "eir": {"task": trained.to_dict(), "step": 0}}, path)
    with pytest.raises(ValueError, match=r"their class names differ: class 2: 'grass' in the checkpoint, 'lawn' "
                                         r"in the config\)"):
        read_step_checkpoint(path, config, 0)
