"""The baselines: config files, the benchmark's variant overrides, and what each variant runs.

The grouping of the joint run's IoUs runs everywhere (core only); the config and run tests
need Detectron2 and skip without it.
"""
import collections
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import load_script, requires_detectron2, synthetic_datasets

from eir.evaluation.metrics import summarize
from eir.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "projects" / "EIR" / "configs"


bench = load_script("benchmarks/css_benchmark.py")
SYNTHETIC = bench.DATASETS["synthetic"]

#: What each continual variant must (not) do, read back from a run's artifacts: the bank's
#: storage after step 0 (None: no bank), whether step 1 pastes (a prepass), whether it distils.
EXPECTED = {
    "finetune": dict(bank=None, pastes=False, distils=False),
    "distill": dict(bank=None, pastes=False, distils=True),
    "image_replay": dict(bank="image", pastes=False, distils=True),
    "eir_no_paste": dict(bank="instance", pastes=False, distils=True),
    "eir_paste_only": dict(bank="image", pastes=True, distils=True),
    "eir": dict(bank="instance", pastes=True, distils=True),
    "eir_regions": dict(bank="instance", pastes=True, distils=True),
    "mib": dict(bank=None, pastes=False, distils=True),
}
#: The distillation's loss term of each method, in a step's training log.
DISTILLATION_TERMS = ("loss_rskd", "loss_kd")


def _swaps_method(variant: str) -> bool:
    """Whether a variant replaces the method (``method=...``) rather than switching EIR's knobs."""
    return any(o.startswith("method=") for o in bench.VARIANTS[variant])


def test_every_variant_has_a_baseline_file_and_a_description():
    assert set(bench.VARIANTS) == set(bench.BASELINE_FILES) == set(bench.DESCRIPTIONS)
    assert set(EXPECTED) == set(bench.VARIANTS) - {"joint"}
    for name, rel in bench.BASELINE_FILES.items():
        assert (CONFIGS / rel).is_file(), (name, rel)
    files = {p.name for p in (CONFIGS / "baselines").glob("*.py")}
    assert files == {Path(rel).name for rel in bench.BASELINE_FILES.values() if rel.startswith("baselines/")}


def test_continual_variants_switch_only_what_acts_after_step_0():
    """The benchmark shares step 0 between continual variants: their switches must be fields of
    EIR's method (method.*), which step 0 never reads (no old model, no bank, no pasting before step 1)."""
    for name, overrides in bench.VARIANTS.items():
        if name != "joint" and not _swaps_method(name):
            assert all(o.startswith("method.") for o in overrides), (name, overrides)
    assert bench.VARIANTS["joint"] == ["task.name=joint"]


@requires_detectron2
def test_a_variant_that_swaps_the_method_trains_its_own_step_0(tmp_path):
    """MiB's step 0 is not EIR's (softmax cross-entropy, a background trained through the body):
    its step-0 key differs, so neither takes the other's step-0 model."""
    args = SimpleNamespace(work=tmp_path, out=tmp_path / "results", data=SYNTHETIC)
    eir, distill = bench.Run("4-2", "eir", 0, args, ["schedule.epochs=3"]), bench.Run("4-2", "distill", 0, args, ["schedule.epochs=3"])
    mib = bench.Run("4-2", "mib", 0, args, ["schedule.epochs=3"])
    assert _swaps_method("mib") and not _swaps_method("eir")
    assert eir.step0_key == distill.step0_key != mib.step0_key
    assert mib.step0_key[: len(eir.step0_key)] == eir.step0_key  # plus the swap


@pytest.mark.parametrize("task_name", ["6-1", "4-2", "2-2"])
def test_joint_regrouping_matches_summarize(task_name):
    """A joint run reports every class as old; regrouped, it equals summarize with the task's groups."""
    task = build_task("synthetic", task_name)
    rng = np.random.default_rng(3)
    matrix = rng.integers(0, 50, size=(11, 11)) + np.diag(rng.integers(50, 400, size=11))
    matrix[7, :] = 0  # class 7 absent from ground truth and prediction: n/a in every group
    matrix[:, 7] = 0
    joint = summarize(matrix, list(range(1, 11)), [], task.class_names)
    assert joint["new"] is None and "hexagon" in joint["na_classes"]
    expected = summarize(matrix, task.steps[0], [c for s in task.steps[1:] for c in s], task.class_names)
    got = bench.regroup(joint["per_class"], task)
    for key in ("old", "new", "all", "hiou"):
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def test_regroup_needs_every_class_and_handles_zero():
    task = build_task("synthetic", "6-1")
    with pytest.raises(ValueError, match="lack classes"):
        bench.regroup({"background": 50.0}, task)
    zeros = {name: 0.0 for name in task.class_names}
    assert bench.regroup(zeros, task) == {"old": 0.0, "new": 0.0, "all": 0.0, "hiou": 0.0}


def test_mean_std_over_seeds():
    assert bench.mean_std([1.0, 3.0, None]) == (2.0, pytest.approx(np.sqrt(2.0)), 2)
    assert bench.mean_std([5.0]) == (5.0, 0.0, 1)
    assert bench.fmt_mean_std([None]) == "n/a"


@requires_detectron2
def test_a_run_folder_is_known_by_its_overrides_not_its_path(tmp_path):
    real = tmp_path / "work"
    run = bench.Run("4-2", "eir", 0, SimpleNamespace(work=real, out=tmp_path / "results", data=SYNTHETIC), ["schedule.epochs=3"])
    run.dir.mkdir(parents=True)
    run.write_record()
    (tmp_path / "link").symlink_to(real)  # the same runs reached through another path
    bench.Run("4-2", "eir", 0, SimpleNamespace(work=tmp_path / "link", out=tmp_path / "results", data=SYNTHETIC), ["schedule.epochs=3"]).check_record()
    other = bench.Run("4-2", "eir", 0, SimpleNamespace(work=real, out=tmp_path / "results", data=SYNTHETIC), ["schedule.epochs=4"])
    with pytest.raises(SystemExit, match="other overrides"):
        other.check_record()
    # a record of another version of the config file (its digest) is refused too
    record = json.loads((run.dir / "bench.json").read_text())
    assert record["config_sha256"] == run.config_sha256 == bench.config_digest(run.cmd[3])
    (run.dir / "bench.json").write_text(json.dumps({**record, "config_sha256": "0123456789abcdef"}))
    with pytest.raises(SystemExit, match="another version of .*4-2_overlap.py"):
        run.check_record()


@requires_detectron2
def test_the_step_0_digest_leaves_out_the_task_name_and_the_later_steps_schedule(tmp_path):
    """Config files that differ in the task's name, output folder or incremental_* schedule keys
    train the same step 0; any other key is another run, and another step 0."""
    def config(name, body):
        path = tmp_path / f"{name}.py"
        path.write_text("task = dict(name='8-3')\ntrain = dict(output_dir='out/a')\n"
                        "schedule = dict(lr=0.02, incremental_lr=0.002, incremental_epochs=12)\n" + body)
        return path

    base = config("base", "")
    later = config("later", "task['name'] = '8-1'\ntrain['output_dir'] = 'out/b'\nschedule['incremental_lr'] = 0.001\n")
    step0 = config("step0", "schedule['lr'] = 0.01\n")
    renamed = config("renamed", "task['name'] = '8-1'\n")
    assert bench.config_digest(renamed) == bench.config_digest(base)  # the task's name is not the config's
    assert bench.config_digest(later) != bench.config_digest(base)
    assert bench.config_digest(later, for_step0=True) == bench.config_digest(base, for_step0=True)
    assert bench.config_digest(step0, for_step0=True) != bench.config_digest(base, for_step0=True)


@requires_detectron2
def test_step0_source_tells_donor_trained_here_and_not_started(tmp_path):
    args = SimpleNamespace(work=tmp_path, out=tmp_path / "results", data=SYNTHETIC)
    donor = bench.Run("6-1", "finetune", 0, args, [])
    taker = bench.Run("6-1", "eir", 0, args, [])
    assert bench.step0_source(taker) == "-"  # never started: no record, no step 0
    donor.dir.mkdir(parents=True)
    donor.write_record()
    assert bench.step0_source(donor) == "-"  # started, step 0 still training
    (donor.dir / "step_0").mkdir()
    (donor.dir / "step_0" / "DONE").write_text("{}")
    assert bench.step0_source(donor) == "(trained here)"
    taker.dir.mkdir(parents=True)
    taker.write_record(step0_from=donor.dir)
    assert bench.step0_source(taker) == "finetune"


@requires_detectron2
def test_jobs_run_groups_of_a_seed_and_first_step_side_by_side_each_in_order(monkeypatch, tmp_path):
    import threading
    import time

    lock, active, peak, calls, starts = threading.Lock(), [0], [0], [], []

    def fake_execute(run, i, total, args, env):  # stands in for a subprocess run
        with lock:
            starts.append((run.task_name, run.seed, run.variant))
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
            calls.append((run.task_name, run.seed, run.variant))
        return (run.task_name, run.variant), 0, "ran", run.seed

    monkeypatch.setattr(bench, "execute", fake_execute)
    argv = ["--tasks", "6-1", "4-2", "--seeds", "0", "1", "--variants", "eir", "joint",
            "--jobs", "2", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    bench.main(argv)
    assert peak[0] == 2  # two groups at a time
    # the joint run is made once per seed, in the first task's group, after that group's eir
    assert sorted(calls) == sorted([("6-1", 0, "eir"), ("6-1", 0, "joint"), ("6-1", 1, "eir"),
                                    ("6-1", 1, "joint"), ("4-2", 0, "eir"), ("4-2", 1, "eir")])
    for seed in (0, 1):
        assert calls.index(("6-1", seed, "eir")) < calls.index(("6-1", seed, "joint"))
    # seed by seed: the two first groups are seed 0's, so a benchmark cut short has whole seeds
    assert sorted(starts[:2]) == [("4-2", 0, "eir"), ("6-1", 0, "eir")]
    assert "2 runs at a time" in (tmp_path / "out" / "css_synthetic.md").read_text()
    # a report of earlier runs does not describe this invocation's settings as theirs
    bench.main(argv + ["--report-only"])
    text = (tmp_path / "out" / "css_synthetic.md").read_text()
    assert "report only: the runs were made by earlier invocations" in text
    assert "runs at a time" not in text and "load average" not in text
    # folders outside the repository are named by placeholders, never by the machine's paths
    assert str(tmp_path) not in text
    assert "| 6-1 / eir / seed 0 | `<work>/6-1/eir/seed_0` |" in text
    assert "--jobs 2 --work <work> --out <out> --report-only`" in text

    # tasks that start alike share step 0: one group per seed, in order, never side by side
    calls.clear()
    peak[0] = 0
    bench.main(["--tasks", "6-1", "6-2", "--seeds", "0", "--variants", "eir", "distill", "--jobs", "2",
                "--work", str(tmp_path / "work2"), "--out", str(tmp_path / "out2")])
    assert peak[0] == 1 and calls == [("6-1", 0, "eir"), ("6-1", 0, "distill"), ("6-2", 0, "eir"), ("6-2", 0, "distill")]


def test_progress_lines_are_written_whole(monkeypatch):
    writes = []  # print() writes the text and its newline separately: jobs' lines would merge

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(bench.sys, "stdout", Recorder())
    bench.say("[3/39] 6-1 / eir / seed 0: finished before, skipped")
    assert writes == ["[3/39] 6-1 / eir / seed 0: finished before, skipped\n"]


def test_each_run_gets_its_jobs_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(bench, "num_cores", lambda: 4)
    assert bench.parse_args([]).threads == 4
    assert bench.parse_args(["--jobs", "2"]).threads == 2
    assert bench.parse_args(["--jobs", "8"]).threads == 1
    assert bench.parse_args(["--jobs", "2", "--threads", "3"]).threads == 3


def test_report_names_folders_relative_to_the_repository(tmp_path):
    inside = bench.ROOT / "output" / "css_synthetic"
    assert bench.shown_path(inside, "<work>") == "output/css_synthetic"
    assert bench.shown_path(tmp_path / "w", "<work>") == "<work>"
    assert bench.shown_command(["--work", str(inside), f"--datasets={tmp_path}", "--tasks", "6-1",
                                "train.output_dir=a b"]) == (
        "python benchmarks/css_benchmark.py --work output/css_synthetic --datasets=<datasets> "
        "--tasks 6-1 'train.output_dir=a b'"
    )


def test_overrides_are_split_from_options():
    own, overrides = bench.split_argv(["--tasks", "6-1", "4-2", "schedule.lr=0.1", "--quick", "method.paste=null"])
    assert own == ["--tasks", "6-1", "4-2", "--quick"]
    assert overrides == ["schedule.lr=0.1", "method.paste=null"]


# --------------------------------------------------------------------------- Detectron2


def _container(cfg):
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg)
    data["train"].pop("output_dir")
    return data


@requires_detectron2
@pytest.mark.parametrize("variant", [v for v in bench.VARIANTS if not _swaps_method(v)])
def test_baseline_file_is_the_eir_config_with_the_benchmark_overrides(variant):
    """Each VOC baseline file equals voc/15-1_overlap.py with the benchmark's overrides applied."""
    from detectron2.config import LazyConfig, instantiate

    base = LazyConfig.load(str(CONFIGS / "voc" / "15-1_overlap.py"))
    expected = LazyConfig.apply_overrides(base, bench.VARIANTS[variant])
    got = LazyConfig.load(str(CONFIGS / bench.BASELINE_FILES[variant]))
    # the instance rule by what it builds (the file names its class, the override a dotted string)
    assert repr(instantiate(got.method.instances)) == repr(instantiate(expected.method.instances))
    got.method.instances = expected.method.instances = None
    assert _container(got) == _container(expected)
    if "method.paste=null" in bench.VARIANTS[variant]:
        assert got.method.paste is None and expected.method.paste is None  # None, not the string "None"
    assert got.train.output_dir.startswith("output/eir/voc_")


@requires_detectron2
@pytest.mark.parametrize("variant", [v for v in bench.VARIANTS if _swaps_method(v)])
@pytest.mark.parametrize("task_name", ["4-2", "6-1"])
def test_a_method_swap_is_that_methods_synthetic_config(variant, task_name):
    """The benchmark's mib runs are EIR's synthetic config with the method swapped, which is
    what projects/EIR/configs/mib/synthetic/ holds: the same model, data and schedule."""
    from detectron2.config import LazyConfig, instantiate

    base = LazyConfig.load(str(CONFIGS / "synthetic" / f"{task_name}_overlap.py"))
    if "method" not in base:
        pytest.skip("the config has no method node yet (issue 28's seam): a method cannot be swapped")
    expected = LazyConfig.apply_overrides(base, bench.VARIANTS[variant])
    got = LazyConfig.load(str(CONFIGS / variant / "synthetic" / f"{task_name}_overlap.py"))
    # the method by what it builds (the file names its class, the override a dotted string)
    assert repr(instantiate(got.method)) == repr(instantiate(expected.method))
    got.pop("method")
    expected.pop("method")
    assert _container(got) == _container(expected)


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory):
    with synthetic_datasets(tmp_path_factory.mktemp("datasets"), 40, 10) as root:
        yield root


# Two steps (classes 1-5, then 6-10), two iterations each: every variant's code path, quickly.
TINY = [
    "task.name=5-5",
    "schedule.max_iter=2",
    "dataloader.train.total_batch_size=4",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "method.memory=6",
    "train.device=cpu",
    "train.log_period=1",
]


@requires_detectron2
@pytest.mark.slow
@pytest.mark.parametrize("variant", list(bench.VARIANTS))
def test_variant_runs_and_does_what_it_says(variant, tiny_datasets, tmp_path):
    import torch
    from detectron2.config import LazyConfig

    from eir.engine.runner import ContinualRunner

    torch.manual_seed(0)
    cfg = LazyConfig.load(str(CONFIGS / "synthetic" / "4-2_overlap.py"))
    if _swaps_method(variant) and "method" not in cfg:
        pytest.skip("the config has no method node yet (issue 28's seam): a method cannot be swapped")
    # The variant's switches last, as the benchmark orders them.
    cfg = LazyConfig.apply_overrides(cfg, TINY + bench.VARIANTS[variant] + [f"train.output_dir={tmp_path}"])
    summaries = ContinualRunner(cfg).run()

    if variant == "joint":
        assert sorted(summaries) == [0]
        assert len(summaries[0]["per_class"]) == 11  # background and the 10 classes in one step
        assert not (tmp_path / "step_0" / "bank").exists()
        task = build_task("synthetic", "5-5")
        grouped = bench.regroup(summaries[0]["per_class"], task)
        assert grouped["all"] == pytest.approx(summaries[0]["all"])
        return

    want = EXPECTED[variant]
    assert sorted(summaries) == [0, 1]
    assert summaries[1]["new"] is not None  # step 1 was evaluated on old and new classes
    manifest = tmp_path / "step_0" / "bank" / "manifest.json"
    if want["bank"] is None:
        assert not manifest.exists()
    else:
        assert json.loads(manifest.read_text())["storage"] == want["bank"]
    assert (tmp_path / "step_1" / "prepass.npz").is_file() == want["pastes"]
    log = [json.loads(line) for line in (tmp_path / "step_1" / "training_log.json").read_text().splitlines()]
    assert log and all(any(k in row for k in DISTILLATION_TERMS) == want["distils"] for row in log)
    assert not (tmp_path / "step_1" / "bank").exists()  # the last step builds no bank
    if variant in ("eir", "eir_no_paste"):
        LazyConfig.save(cfg, str(tmp_path / "config.yaml"))  # as tools/train_net.py does
        _check_paste_diagnostics(tmp_path, pastes=want["pastes"])


def _check_paste_diagnostics(run, pastes):
    """benchmarks/paste_diagnostics.py on the finished run: pastes counted, or a clear refusal."""
    import torch

    diag = load_script("benchmarks/paste_diagnostics.py")
    if not pastes:
        with pytest.raises(SystemExit, match="does not paste"):
            diag.diagnose(run, 1, num_images=4)
        return
    d = diag.diagnose(run, 1, [run], num_images=8)
    assert d["samples"] == 8
    assert 0 < d["pasted"][0] < d["pasted"][1]  # some, not all, of the BCE's pixels are pasted
    assert d["old_natural"][1] > 0 and 0 <= d["old_on_paste"][0] <= d["old_on_paste"][1]
    row = d["runs"][str(run)]
    assert 0 <= row["new_right"][0] <= row["new_right"][1] and row["bce_pasted"][1] > 0
    assert "pasted share of the BCE's pixels" in diag.report(d, run, 1, 0)

    # --where: checked against the eval-mode model's scores (Detectron2's argmax convention)
    shares = diag.where_pixels_go(run, 1, "disc")
    runner = diag.load_runner(run)
    model = runner.trained_model(1).eval()
    names = list(runner.task.class_names)
    dicts, mapper = runner.test_data(1)
    counts = collections.Counter()
    with torch.no_grad():
        for x in map(mapper, dicts):
            pred = model([x])[0]["sem_seg"].argmax(0)
            counts.update(pred[x["sem_seg"] == names.index("disc")].tolist())
    total = sum(counts.values())
    assert total > 0
    assert shares == pytest.approx({names[k]: n / total for k, n in counts.items()})
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    with pytest.raises(SystemExit, match="not a class"):
        diag.where_pixels_go(run, 1, "unicorn")

    # --focus: one class's training signal, at the step's start and end; the loss parts' effect
    # needs the class's unpasted pixels among the samples, so some step-1 class must have them
    runner = diag.load_runner(run)
    influenced = False
    for cid in runner.task.new_classes(1):
        f = diag.focus(run, 1, runner.task.class_names[cid], ["start", "final"], num_images=8)
        assert f["samples"] == 8 and 0 <= f["choices"]["with_fallback"] <= f["choices"]["samples"] <= 8
        for forces in f["forces"].values():
            assert forces["pixels"].sum() > 0
            assert bool(forces["influence"]) == (forces["pixels"][0] > 0)  # group 0: its unpasted pixels
            influenced |= {"RSKD", "BCE, class channel, its own pixels"} <= set(forces["influence"])
        assert "what training sees" in diag.focus_report(f, run, 1)
    assert influenced



def _run_in_process(run):
    """What the benchmark's subprocess does (tools/train_net.py), in this process."""
    import torch
    from detectron2.config import LazyConfig

    from eir.engine.runner import ContinualRunner

    torch.manual_seed(run.seed)
    config = run.cmd[run.cmd.index("--config-file") + 1]
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config), run.overrides)
    return ContinualRunner(cfg).run()


@requires_detectron2
@pytest.mark.slow
def test_shared_step0_is_evaluated_not_retrained(tiny_datasets, tmp_path):
    """A variant that adopts another run's step-0 model gets the same step 0 and its own bank."""
    args = SimpleNamespace(work=tmp_path, out=tmp_path / "results", data=SYNTHETIC)
    common = [o for o in TINY if not o.startswith("task.name=")]
    donor = bench.Run("5-5", "eir_no_paste", 0, args, common)
    other = bench.Run("5-5", "eir_paste_only", 0, args, common)
    assert other.step0_donor(tmp_path) is None  # nothing finished yet
    donor.write_record()
    first = _run_in_process(donor)
    # Another seed or other common overrides may not donate.
    assert bench.Run("5-5", "eir_paste_only", 1, args, common).step0_donor(tmp_path) is None
    assert bench.Run("5-5", "eir_paste_only", 0, args, common + ["schedule.lr=0.5"]).step0_donor(tmp_path) is None
    assert other.needs_step0() and other.step0_donor(tmp_path) == donor.dir

    other.adopt_step0(donor.dir)
    assert not other.needs_step0()
    second = _run_in_process(other)
    assert second[0] == first[0]  # the same step-0 model, evaluated again
    assert not (other.dir / "step_0" / "training_log.json").exists()  # ... not trained again
    assert json.loads((other.dir / "bench.json").read_text())["step0_from"] == str(donor.dir)
    manifest = json.loads((other.dir / "step_0" / "bank" / "manifest.json").read_text())
    assert manifest["storage"] == "image"  # the adopting variant's own bank
    assert json.loads((donor.dir / "step_0" / "bank" / "manifest.json").read_text())["storage"] == "instance"
    assert (other.dir / "step_1" / "prepass.npz").is_file() and other.is_finished()


def test_loss_peak_ratio_is_the_largest_logged_loss_over_the_first(tmp_path):
    step = tmp_path / "step_1"
    assert bench.loss_peak_ratio(step) is None  # not trained here (a step-0 model taken from another run)
    step.mkdir()
    rows = [{"iteration": 19, "total_loss": 1.25}, {"iteration": 39, "total_loss": 5.0},
            {"iteration": 59, "total_loss": 0.75}]
    (step / "training_log.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.loss_peak_ratio(step) == 4.0  # 5.0 / 1.25: diverged for a while
    (step / "training_log.json").write_text(json.dumps(rows[2]) + "\n")
    assert bench.loss_peak_ratio(step) == 1.0
