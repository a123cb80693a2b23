"""StepPlan: each variant's switches, read from its config file, as METHOD.md and the
baselines' docstrings describe them (15-1: steps 0..5)."""
from pathlib import Path

import pytest
from conftest import DETECTRON2_SKIP_REASON

pytest.importorskip("detectron2", reason=DETECTRON2_SKIP_REASON)

from eir.engine.builders import build_method, build_run_task  # noqa: E402
from eir.engine.config_checks import load_config  # noqa: E402
from eir.tasks import build_task  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "projects/EIR/configs"

# (teacher, replay, paste) of an incremental step; step 0 has none of them.
INCREMENTAL = {
    "voc/15-1_overlap.py": (True, True, True),
    "baselines/eir_no_paste.py": (True, True, False),
    "baselines/eir_paste_only.py": (True, True, True),
    "baselines/image_replay.py": (True, True, False),
    "baselines/distill.py": (True, False, False),
    "baselines/finetune.py": (False, False, False),
}


def _plans(config):
    cfg = load_config(CONFIGS / config)
    task = build_run_task(cfg)
    method = build_method(cfg)
    return [method.plan(task, step) for step in range(task.num_steps)]


@pytest.mark.parametrize("config", sorted(INCREMENTAL))
def test_each_variant_plans_its_switches(config):
    plans = _plans(config)
    assert len(plans) == 6
    teacher, replay, paste = INCREMENTAL[config]
    first = plans[0]
    assert (first.teacher, first.replay, first.paste, first.old_model, first.prepass) == (False,) * 5
    for plan in plans[1:]:
        assert (plan.teacher, plan.replay, plan.paste) == (teacher, replay, paste)
        assert plan.old_model == (teacher or paste)
        assert plan.prepass == paste
    # a bank is written after every step but the last, when there is a memory
    assert [plan.save_bank for plan in plans] == [replay] * 5 + [False]
    assert [plan.last for plan in plans] == [False] * 5 + [True]


def test_artifacts_follow_the_plan():
    eir = _plans("voc/15-1_overlap.py")
    assert eir[0].artifacts == ("model_final.pth", "metrics.json", "bank/manifest.json")
    assert eir[1].artifacts == ("model_final.pth", "metrics.json", "bank/manifest.json", "prepass.npz")
    assert eir[5].artifacts == ("model_final.pth", "metrics.json", "prepass.npz")
    assert _plans("baselines/finetune.py")[3].artifacts == ("model_final.pth", "metrics.json")


def test_joint_is_one_step_without_old_model():
    (plan,) = _plans("baselines/joint.py")
    assert plan.last and not (plan.old_model or plan.replay or plan.save_bank)


def test_a_step_outside_the_task_is_refused():
    cfg = load_config(CONFIGS / "voc/15-1_overlap.py")
    task = build_task("voc", "15-1", "overlap")
    with pytest.raises(ValueError):
        build_method(cfg).plan(task, 6)
