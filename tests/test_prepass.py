"""PrepassStore: maps in and out, file round trip, validation, merging of rank parts, and the
key that makes a rerun recompute maps made with other settings, weights or images."""
import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
from conftest import requires_detectron2

from eir.data.prepass import PrepassStore, StalePrepassError, prepass_key
from eir.fileio import tensor_digest
from eir.tasks import build_task

TASK = build_task("voc", "15-1")


def _save_weights(path, value):
    """A checkpoint file of one weight (the prepass key digests what a checkpoint holds)."""
    torch.save({"model": {"w": torch.tensor([float(value)])}}, path)



def _maps():
    rng = np.random.default_rng(0)
    a = np.zeros((4, 6), np.uint8)
    a[1:3, 2:5] = 7
    a[0, 0] = 15
    b = rng.choice(np.array([0, 3, 9], np.uint8), size=(5, 3))
    c = np.zeros((2, 2), np.uint8)  # nothing detected
    return {"img_a": a, "img_b": b, "img_c": c}


def _store(maps=None, step=1, stride=16):
    store = PrepassStore(TASK, step, stride)
    for k, v in (maps or _maps()).items():
        store.add(k, v)
    return store


def test_add_lookup_classes():
    maps = _maps()
    store = _store(maps)
    assert len(store) == 3
    for k, v in maps.items():
        got = store.lookup(k)
        assert got.dtype == np.uint8 and got.shape == v.shape
        np.testing.assert_array_equal(got, v)
        assert not got.flags.writeable
    assert store.lookup("missing") is None
    assert store.classes("img_a") == [7, 15]
    assert store.classes("img_b") == sorted(int(c) for c in np.unique(maps["img_b"]) if c)
    assert store.classes("img_c") == []
    assert store.classes("missing") == []
    assert "img_b" in store and "nope" not in store
    assert store.nbytes == sum(v.size for v in maps.values())


def test_one_buffer_grows_without_losing_maps():
    store = PrepassStore(TASK.to_dict(), 1, 8)
    rng = np.random.default_rng(1)
    maps = {f"i{k}": rng.integers(0, 16, size=(rng.integers(1, 90), 70), dtype=np.uint8)
            for k in range(40)}
    for k, v in maps.items():
        store.add(k, v)
    assert store.nbytes == sum(v.size for v in maps.values())
    for k, v in maps.items():
        np.testing.assert_array_equal(store.lookup(k), v)
    # all maps live in one buffer
    bases = {store.lookup(k).base is not None for k in maps}
    assert bases == {True}


def test_save_load_round_trip(tmp_path):
    maps = _maps()
    store = _store(maps, step=2, stride=8)
    path = store.save(tmp_path / "step_2" / "prepass.npz")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["prepass.npz"]  # no temp file left
    loaded = PrepassStore.load(path, task=TASK, step=2)
    assert loaded.step == 2 and loaded.stride == 8 and loaded.task == TASK.to_dict()
    assert sorted(loaded.image_ids()) == sorted(maps)
    for k, v in maps.items():
        np.testing.assert_array_equal(loaded.lookup(k), v)
    # without the checks too, and a loaded store can keep growing
    again = PrepassStore.load(path)
    again.add("img_d", np.full((3, 3), 4, np.uint8))
    assert len(again) == 4 and again.classes("img_d") == [4]
    np.testing.assert_array_equal(again.lookup("img_a"), maps["img_a"])


def test_empty_store_round_trip(tmp_path):
    store = PrepassStore(TASK, 1, 16)
    loaded = PrepassStore.load(store.save(tmp_path / "p.npz"), TASK, 1)
    assert len(loaded) == 0 and loaded.lookup("x") is None


def test_load_validation_errors(tmp_path):
    path = _store(step=1).save(tmp_path / "prepass.npz")
    with pytest.raises(ValueError, match="made for step 1, but step 2"):
        PrepassStore.load(path, task=TASK, step=2)
    with pytest.raises(ValueError, match=r"made for task voc 15-1 overlap.*this run is task voc 15-5"):
        PrepassStore.load(path, task=build_task("voc", "15-5"), step=1)
    with pytest.raises(ValueError, match="this run is task voc 15-1 disjoint"):
        PrepassStore.load(path, task=build_task("voc", "15-1", "disjoint"), step=1)
    order = list(range(20, 0, -1))
    with pytest.raises(ValueError, match="order"):
        PrepassStore.load(path, task=build_task("voc", "15-1", order=order), step=1)
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        PrepassStore.load(tmp_path / "nothere.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a prepass file"):
        PrepassStore.load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(2))
    with pytest.raises(ValueError, match="not a prepass file"):
        PrepassStore.load(other)


def test_add_validation():
    store = PrepassStore(TASK, 1, 16)
    with pytest.raises(ValueError, match="2-D"):
        store.add("a", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="holds 255"):
        store.add("a", np.full((2, 2), 255, np.uint8))
    with pytest.raises(ValueError, match="outside 0..254"):
        store.add("a", np.full((2, 2), 300, np.int64))
    with pytest.raises(ValueError, match="integer class ids"):
        store.add("a", np.zeros((2, 2), np.float32))
    store.add("b", np.full((2, 2), 3, np.int64))  # integer input is converted
    assert store.lookup("b").dtype == np.uint8
    store.add("b", np.full((2, 2), 3, np.uint8))  # identical duplicate: no-op
    assert len(store) == 1
    with pytest.raises(ValueError, match="added twice"):
        store.add("b", np.full((2, 2), 4, np.uint8))
    with pytest.raises(ValueError, match="step"):
        PrepassStore(TASK, -1, 16)
    with pytest.raises(ValueError, match="stride"):
        PrepassStore(TASK, 1, 0)


def test_merge_rank_parts():
    maps = _maps()
    part0 = PrepassStore(TASK, 1, 16)
    part1 = PrepassStore(TASK, 1, 16)
    part0.add("img_a", maps["img_a"])
    part1.add("img_b", maps["img_b"])
    part1.add("img_c", maps["img_c"])
    part1.add("img_a", maps["img_a"])  # a padded sampler repeats an image: identical, accepted
    # parts travel between ranks pickled (torch.distributed gather)
    part1 = pickle.loads(pickle.dumps(part1))
    merged = part0.merge(part1)
    assert merged is part0 and len(merged) == 3
    for k, v in maps.items():
        np.testing.assert_array_equal(merged.lookup(k), v)
    with pytest.raises(ValueError, match="different runs"):
        merged.merge(PrepassStore(TASK, 2, 16))
    with pytest.raises(ValueError, match="different runs"):
        merged.merge(PrepassStore(build_task("voc", "15-5"), 1, 16))


def test_pickle_is_compact():
    store = _store()
    state = store.__getstate__()
    assert state["data"].nbytes == store.nbytes  # no spare buffer capacity travels
    clone = pickle.loads(pickle.dumps(store))
    assert clone.classes("img_a") == [7, 15] and len(clone) == 3


# --------------------------------------------------------------------------- what produced the maps


def _key(tmp_path, **change):
    ckpt = tmp_path / "model_final.pth"
    if not ckpt.exists():
        _save_weights(ckpt, 1)
    args = dict(tau=0.7, stride=8, short_side=512, rule="argmax over all old channels",
                old_checkpoint=ckpt, dataset_dicts=[{"image_id": "a", "file_name": "a.jpg",
                                                     "sem_seg_file_name": "a.png"}])
    return prepass_key(**{**args, **change})


def test_prepass_key_records_every_input(tmp_path):
    key = _key(tmp_path)
    assert key["tau"] == 0.7 and key["stride"] == 8 and key["short_side"] == 512
    assert key["pseudo_label_rule"] == "argmax over all old channels"
    assert key["old_checkpoint_tensors_sha256"] == tensor_digest(tmp_path / "model_final.pth")
    assert key["images_sha256"] == hashlib.sha256(b"a\ta.jpg\ta.png\n").hexdigest()
    assert _key(tmp_path) == key  # deterministic
    for change in ({"tau": 0.5}, {"stride": 4}, {"short_side": 256}, {"rule": "classes only"},
                   {"dataset_dicts": [{"image_id": "b", "file_name": "a.jpg", "sem_seg_file_name": "a.png"}]}):
        assert _key(tmp_path, **change) != key, change
    _save_weights(tmp_path / "model_final.pth", 2)
    assert _key(tmp_path)["old_checkpoint_tensors_sha256"] != key["old_checkpoint_tensors_sha256"]
    _save_weights(tmp_path / "model_final.pth", 1)  # saved again: other bytes, the same weights
    assert _key(tmp_path) == key


def test_a_prepass_made_on_another_device_or_precision_is_not_reused(tmp_path):
    """A CPU prepass (float32) is not the maps a GPU run with AMP (float16) would make."""
    from omegaconf import OmegaConf

    prepass_module = pytest.importorskip("eir.engine.prepass", reason="needs Detectron2")
    from eir.engine.run_folder import RunFolder

    (tmp_path / "step_0").mkdir()
    _save_weights(tmp_path / "step_0" / "model_final.pth", 1)
    folder = RunFolder(tmp_path, TASK)
    dicts = [{"image_id": "a", "file_name": "a.jpg", "sem_seg_file_name": "a.png"}]

    def key(device, amp):
        cfg = OmegaConf.create({"train": {"amp": {"enabled": amp}}})
        settings = {"tau": 0.7, "short_side": 512, "stride": 8}  # the method's prepass
        return prepass_module.step_prepass_key(cfg, folder, 1, dicts, torch.device(device), settings)

    cpu = key("cpu", True)
    assert (cpu["device"], cpu["precision"]) == ("cpu", "float32")  # AMP or not, the CPU prepass is float32
    assert key("cpu", False) == cpu
    assert (key("cuda", True)["device"], key("cuda", True)["precision"]) == ("cuda", "float16")
    assert key("cuda", False)["precision"] == "float32"
    assert len({str(k) for k in (cpu, key("cuda", True), key("cuda", False))}) == 3
    assert PrepassStore(TASK, 1, 8, cpu).key != key("cuda", True)


def test_load_compares_the_key(tmp_path):
    key = _key(tmp_path)
    store = PrepassStore(TASK, 1, 8, key)
    for k, v in _maps().items():
        store.add(k, v)
    path = store.save(tmp_path / "prepass.npz")
    assert store.path == path
    loaded = PrepassStore.load(path, task=TASK, step=1, key=key)
    assert loaded.key == key and loaded.path == path and len(loaded) == 3
    assert PrepassStore.load(path).key == key  # no key given: not compared
    with pytest.raises(StalePrepassError, match=r"other settings \(tau 0.7 -> 0.5\)"):
        PrepassStore.load(path, task=TASK, step=1, key=dict(key, tau=0.5))
    with pytest.raises(StalePrepassError, match="stride 8 -> 4, short_side 512 -> 128"):
        PrepassStore.load(path, key=dict(key, stride=4, short_side=128))
    with pytest.raises(ValueError, match="different runs"):
        PrepassStore(TASK, 1, 8, key).merge(PrepassStore(TASK, 1, 8, dict(key, tau=0.5)))
    # pickled parts keep their key
    assert pickle.loads(pickle.dumps(store)).key == key


def test_a_file_of_the_first_format_is_stale(tmp_path):
    """Version 1 files recorded no key: they cannot be trusted, so they are recomputed."""
    header = {"format": "eir-prepass", "version": 1, "task": TASK.to_dict(), "step": 1,
              "stride": 8, "count": 0}
    path = tmp_path / "prepass.npz"
    np.savez(path, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
             data=np.zeros(0, np.uint8), offsets=np.zeros(0, np.int64),
             shapes=np.zeros((0, 2), np.int32), ids=np.zeros(0, "<U1"))
    with pytest.raises(StalePrepassError, match="version 1, not 2"):
        PrepassStore.load(path, task=TASK, step=1)


@requires_detectron2
def test_a_stale_prepass_is_recomputed(tmp_path, monkeypatch, caplog):
    """A step reuses step_t/prepass.npz only when what produced it is unchanged."""
    from omegaconf import OmegaConf

    from eir.engine import prepass as prepass_module
    from eir.engine.run_folder import RunFolder

    calls = []

    def fake_run_prepass(old_model, dicts, task, step, *, tau, short_side, stride, num_workers, key=None, amp=True):
        calls.append((tau, short_side, stride))
        store = PrepassStore(task.to_dict(), step, stride, key)
        for d in dicts:
            store.add(d["image_id"], np.full((2, 2), 3, np.uint8))
        return store

    monkeypatch.setattr(prepass_module, "run_prepass", fake_run_prepass)
    folder = RunFolder(tmp_path, TASK)
    cfg = OmegaConf.create({"dataloader": {"train": {"num_workers": 0}}, "train": {"amp": {"enabled": True}}})
    settings = {"tau": 0.7, "short_side": 512, "stride": 8}  # the method's prepass
    (tmp_path / "step_0").mkdir()
    _save_weights(tmp_path / "step_0" / "model_final.pth", 1)
    (tmp_path / "step_1").mkdir()
    dicts = [{"image_id": "a", "file_name": "a.jpg", "sem_seg_file_name": "a.png"}]

    def run(expected_calls, why=None):
        caplog.clear()
        with caplog.at_level("INFO", logger="eir.engine.prepass"):
            store = prepass_module.step_prepass(cfg, TASK, folder, 1, dicts, None, settings)
        assert len(calls) == expected_calls
        assert sorted(store.image_ids()) == sorted(d["image_id"] for d in dicts)
        if why is not None:
            assert f"Recomputing the prepass of step 1: prepass file {tmp_path / 'step_1' / 'prepass.npz'}" \
                   f" was made with other settings ({why}" in caplog.text
        return store

    run(1)
    run(1)  # the same settings: reused
    settings["tau"] = 0.5
    run(2, "tau 0.7 -> 0.5")
    run(2)
    settings["stride"] = 4
    run(3, "stride 8 -> 4")
    settings["short_side"] = 256
    run(4, "short_side 512 -> 256")
    weights_a = tensor_digest(tmp_path / "step_0" / "model_final.pth")
    _save_weights(tmp_path / "step_0" / "model_final.pth", 2)
    run(5, "old_checkpoint_tensors_sha256 " + weights_a)
    dicts.append({"image_id": "b", "file_name": "b.jpg", "sem_seg_file_name": "b.png"})
    store = run(6, "images_sha256")
    assert store.key["tau"] == 0.5 and store.key["pseudo_label_rule"] == prepass_module.PSEUDO_LABEL_RULE
    run(6)
