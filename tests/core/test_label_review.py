"""The Label page's computations (core.services.label_review)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from core.evaluation.scored import ScoredSet
from core.services.label_review import (
    canvas_mask,
    display_image,
    fit_within,
    model_disagreements,
    native_shape,
    resize_mask,
    scores_in_order,
)


def test_fit_within_keeps_the_aspect() -> None:
    assert fit_within(np.zeros((100, 50, 3), np.uint8), 40).shape == (40, 20, 3)
    small = np.arange(4, dtype=np.uint8).reshape(2, 2)
    big = fit_within(small, 4)
    assert big.shape == (4, 4) and set(np.unique(big)) == {0, 1, 2, 3}  # nearest-neighbour: no new values


def test_display_image_and_native_shape(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.full((30, 60), 128, np.uint8)).save(path)
    assert native_shape(path) == (30, 60)
    shown = display_image(path, 120)
    assert isinstance(shown, np.ndarray) and shown.shape == (60, 120, 3)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert isinstance(display_image(bad, 120), str) and native_shape(bad) is None


def test_canvas_mask_adds_paint_and_removes_erase() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 32, 32, 255)  # paint
    rgba[1, 1] = (32, 64, 255, 255)  # erase
    existing = np.zeros((2, 2), bool)
    existing[0, 0] = True  # covers rows/cols 0-1 at the canvas size
    mask = canvas_mask(rgba, existing)
    assert mask.shape == (4, 4) and mask[0, 0] and mask[0, 1] and not mask[1, 1] and not mask[3, 3]
    assert canvas_mask(rgba, None).sum() == 1
    assert resize_mask(existing, (4, 4)).sum() == 4


def test_scores_in_order_and_disagreements() -> None:
    ss = ScoredSet("r", "reconstruction", ("b", "a"), ("good", "crack"), np.array([0, 1]), np.array([0.2, 0.9]))
    np.testing.assert_array_equal(scores_in_order(ss, ["a", "b"]), [0.9, 0.2])
    assert scores_in_order(ss, ["a", "c"]) is None and scores_in_order(None, ["a"]) is None
    labels, scores = np.array([1, 0, 1, -1]), np.array([0.9, 0.8, 0.1, 0.9])
    assert model_disagreements(labels, scores, 0.5) == 2  # the flagged good one and the passed defective one
