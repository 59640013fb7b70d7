"""The per-image jobs' pure pieces (core.services.panels, image_request, projection_job, anounet_job):
display panels, default picks, request identity, stored steps, frame composites and the Ano-Unet summary."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.config import AnoUnetConfig, ProjectionConfig
from core.services import anounet_job, panels, projection_job
from core.services.anounet_job import AnoUnetRequest, summarize
from core.services.projection_job import ProjectionRequest


# --------------------------------------------------------------------------- panels
def test_display_scale_enlarges_small_images_by_whole_factors() -> None:
    assert panels.display_scale(32) == 4 and panels.display_scale(64) == 2 and panels.display_scale(28) == 4
    assert panels.display_scale(128) == 1 and panels.display_scale(512) == 1
    img = np.arange(4, dtype=np.uint8).reshape(2, 2)
    assert panels.enlarge_nn(img, 3).shape == (6, 6) and panels.enlarge_nn(img, 3)[2, 3] == img[0, 1]


def test_display_rgb_from_tensors_floats_and_uint8() -> None:
    gray = torch.tensor([[[[0.0, 1.0], [0.5, 2.0]]]])  # [1, 1, 2, 2], one value above 1
    out = panels.display_rgb(gray)
    assert out.shape == (1, 2, 2, 3) and out.dtype == np.uint8
    assert out[0, :, :, 0].tolist() == [[0, 255], [128, 255]] and (out[..., 0] == out[..., 2]).all()
    chw = np.zeros((3, 2, 4), np.uint8)
    chw[1] = 200
    rgb = panels.display_rgb(chw)
    assert rgb.shape == (2, 4, 3) and rgb[0, 0].tolist() == [0, 200, 0]
    np.testing.assert_array_equal(panels.display_rgb(chw.astype(np.float32) / 255.0), rgb)


def test_short_label() -> None:
    assert panels.short_label("test/broken/003.png") == "broken/003" and panels.short_label("x.png") == "x"


def test_default_picks_cover_defect_types_and_one_good() -> None:
    names = ["test/good/0.png", "test/good/1.png", "test/good/2.png", "test/a/0.png", "test/a/1.png", "test/b/0.png"]
    defects = ["good", "good", "good", "a", "a", "b"]
    scores = np.array([0.1, 0.5, 0.3, 0.9, 0.95, 0.2])
    assert panels.default_picks(names, defects, scores) == ["test/a/1.png", "test/b/0.png", "test/good/2.png", "test/a/0.png"]
    assert panels.default_picks(names, defects, scores, n=2) == ["test/a/1.png", "test/good/2.png"]
    # Without scores: the first image of each type in the test set's order, the middle good one.
    assert panels.default_picks(names, defects) == ["test/a/0.png", "test/b/0.png", "test/good/1.png", "test/good/0.png"]


# --------------------------------------------------------------------------- requests
def test_projection_request_id_depends_on_images_and_settings() -> None:
    a = ProjectionRequest("run", 1, ("x.png",), ("x",), ("good",), ProjectionConfig(steps=3))
    assert a.job_id == ProjectionRequest("run", 1, ("x.png",), ("other label",), (None,), ProjectionConfig(steps=3)).job_id
    assert a.job_id != replace(a, cfg=ProjectionConfig(steps=4)).job_id
    assert a.job_id != replace(a, mtime_ns=2).job_id
    assert a.job_id != replace(a, keys=("y.png",)).job_id
    assert a.job_id.startswith(projection_job.JOB_KIND + "-")
    state = a.job_state()
    assert state["run_id"] == "run" and state["labels"] == ["x"] and state["config"]["steps"] == 3


def test_anounet_request_id_ignores_batch_but_not_settings() -> None:
    base = AnoUnetRequest("f", 1, ("a",), ("a",), (None,), AnoUnetConfig(), "none")
    assert replace(base, cfg=AnoUnetConfig(batch=2)).job_id == base.job_id
    assert replace(base, cfg=AnoUnetConfig(beta=5.0)).job_id != base.job_id
    assert replace(base, warm_start="auto").job_id != base.job_id
    assert replace(base, mtime_ns=2).job_id != base.job_id
    assert base.job_id.startswith(anounet_job.JOB_KIND + "-") and base.job_state()["fnet_id"] == "f"
    assert base.job_id != ProjectionRequest("f", 1, ("a",), ("a",), (None,), ProjectionConfig()).job_id


# --------------------------------------------------------------------------- projection frames
def test_stored_steps_keep_first_and_last_and_stay_bounded() -> None:
    assert projection_job.stored_steps(3) == [0, 1, 2, 3]
    many = projection_job.stored_steps(200)
    assert many[0] == 0 and many[-1] == 200 and len(many) <= projection_job.MAX_FRAMES
    assert many == sorted(set(many))


def test_composite_lays_out_rows_of_panels_with_white_gaps() -> None:
    frames = [np.full((2, 3, 4, 5, 3), v, np.uint8) for v in (10, 20, 30)]  # [F, B, H, W, 3]
    out = projection_job.composite(frames, gap=1)
    assert out.shape == (2, 3 * 4 + 2, 3 * 5 + 2, 3)
    assert out[0, 0, 0, 0] == 10 and out[0, 0, 6, 0] == 20 and out[1, 5, 12, 0] == 30
    assert (out[:, 4, :, :] == 255).all() and (out[:, :, 5, :] == 255).all()


def test_gif_frames_are_enlarged_one_per_stored_step() -> None:
    f, b, h = 3, 2, 32
    result = {"x": np.zeros((f, b, h, h, 3), np.uint8), "recon": np.zeros((f, b, h, h, 3), np.uint8),
              "heat": np.zeros((f, b, h, h, 3), np.uint8), "frame_steps": [0, 5, 10], "steps": 10,
              "energy": [float(e) for e in range(11)]}
    frames = projection_job.gif_frames(result)
    composite = projection_job.animation_frames(result)
    assert len(frames) == 3 and composite.shape[0] == 3
    factor = panels.display_scale(h, projection_job.GIF_PX)
    assert frames[0].shape[1] == composite.shape[2] * factor


# --------------------------------------------------------------------------- Ano-Unet summary
def _result(cached: bool = False, stop: str = "plateau", hot: tuple[int, int] | None = None) -> SimpleNamespace:
    amap = np.zeros((4, 4), np.float32)
    if hot is not None:
        amap[hot] = 1.0
    return SimpleNamespace(anomaly_map=amap, cached=cached, stop_reason=stop)


def test_summary_counts_and_pixel_aurocs() -> None:
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    results = [_result(hot=(1, 1)), _result(cached=True, hot=(0, 0)), None, _result(stop="stopped")]
    other = np.zeros((4, 4, 4), np.float32)  # the comparison ranks nothing
    s = summarize(results, [mask, mask, None, None], other, seconds=6.0)
    assert s.done == [0, 1, 3] and s.cached == 1 and s.stopped == 1 and s.with_masks == 2
    assert s.auroc_ano == pytest.approx(44 / 60)  # positives [1, 0] against 29 zeros and one 1, ties count half
    assert s.compared and s.auroc_other == pytest.approx(0.5)
    assert s.computed == 2 and s.seconds_per_image == pytest.approx(3.0)


def test_summary_without_defect_pixels_or_comparison() -> None:
    s = summarize([_result(cached=True)], [np.zeros((4, 4), bool)], None, seconds=1.0)
    assert s.with_masks == 0 and s.auroc_ano is None and not s.compared and s.auroc_other is None
    assert s.computed == 0 and s.seconds_per_image is None
    assert anounet_job.maps_vmax(np.zeros((2, 3))) == pytest.approx(1e-6)


# --------------------------------------------------------------------------- stored projection results (#16)
def test_a_finished_projection_is_stored_in_the_run_and_found_by_another_registry(tmp_path) -> None:
    """A projection's result goes to RUN/projections/: a fresh registry (another server process, or after a
    restart) shows it for the same request without computing it again."""
    from core.config import TrainConfig
    from core.services.jobs import FINISHED, JobRegistry
    from core.training.loop import fit

    run = fit(TrainConfig(data="builtin:synthetic", category="bottle", model="ae", size=32, base_channels=4, depth=3,
                          epochs=1, device="cpu"), tmp_path / "ae")
    x0 = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:9, 4:9] = 1
    job_id = "projection-0123456789ab"
    task = projection_job.projection_task(run, x0, ProjectionConfig(steps=3), ["a", "b"], [None, mask], device="cpu",
                                          job_id=job_id)
    first = JobRegistry(workers="thread").start("projection", "p", task, job_id=job_id)
    assert first.join(120) and first.snapshot().status == FINISHED, first.snapshot().error
    computed = first.snapshot().result
    assert projection_job.stored_result_path(run, job_id).is_file()

    def must_not_run(ctx):
        raise AssertionError("the stored result should have been used")

    other = JobRegistry(workers="thread")
    job, started = other.start_or_get(job_id, must_not_run, "projection", "p",
                                      stored=lambda: projection_job.load_result(run, job_id))
    snap = job.snapshot()
    assert not started and snap.status == FINISHED and snap.state["stored"] is True
    got = snap.result
    assert got.keys() == computed.keys()
    for key, value in computed.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got[key], value, err_msg=key)
        elif key == "masks":
            assert got[key][0] is None and np.array_equal(got[key][1], mask)
        elif key != "seconds":
            assert got[key] == value, key

    assert projection_job.load_result(run, "projection-ffffffffffff") is None  # never computed
    projection_job.stored_result_path(run, job_id).write_bytes(b"not an npz")
    assert projection_job.load_result(run, job_id) is None  # unreadable: computed again
    with pytest.raises(ValueError):
        projection_job.stored_result_path(run, "../../etc/passwd")


def test_stored_projection_results_are_bounded_per_run(tmp_path) -> None:
    fake = {"x": np.zeros((1, 1, 2, 2, 3), np.uint8), "labels": ["a"], "masks": [None], "diverged": [("a", np.int64(2))],
            "guarded": [], "plain_recon": None, "stopped": False, "steps": np.int64(3)}
    for k in range(projection_job.KEEP_STORED + 3):
        projection_job.save_result(tmp_path, f"projection-{k:012d}", fake)
    kept = sorted(p.name for p in (tmp_path / projection_job.RESULTS_DIR).glob("*.npz"))
    assert len(kept) == projection_job.KEEP_STORED
    back = projection_job.load_result(tmp_path, f"projection-{projection_job.KEEP_STORED + 2:012d}")
    assert back["diverged"] == [("a", 2)] and back["plain_recon"] is None and back["steps"] == 3
