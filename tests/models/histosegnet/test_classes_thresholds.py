"""Class sets (bundled class-info files, pass resolution) and ROC-optimal thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from misc.errors import UserError
from models.histosegnet.classes import FUNC, GLAS, MORPH, passes_for, read_class_info, resolve_pass
from models.histosegnet.thresholds import roc_optimal_thresholds, youden_threshold

ADP_LEVEL5 = ["E", "E.M", "E.M.S", "E.M.U", "E.M.O", "E.T", "E.T.S", "E.T.U", "E.T.O", "E.P", "C", "C.D",
              "C.D.I", "C.D.R", "C.L", "H", "H.E", "H.K", "H.Y", "S", "S.M", "S.M.C", "S.M.S", "S.E",
              "S.C", "S.C.H", "S.R", "A", "A.W", "A.B", "A.M", "M", "M.M", "M.K", "N", "N.P", "N.R",
              "N.R.B", "N.R.A", "N.G", "N.G.M", "N.G.A", "N.G.O", "N.G.E", "N.G.R", "N.G.W", "N.G.T",
              "G", "G.O", "G.N", "T"]


def test_bundled_class_sets() -> None:
    morph, func, glas = read_class_info("adp_morph"), read_class_info("adp_func"), read_class_info("glas")
    assert len(morph.names) == 29 and morph.names[0] == "Background" and morph.colours[0] == (255, 255, 255)
    assert not any(name.endswith(".X") for name in morph.names + func.names)
    assert func.names == ("Background", "Other", "G.O", "G.N", "T")
    assert func.colours[1] == (3, 155, 229) and func.colours[4] == (173, 20, 87)
    assert glas.names == ("Other", "G.O") and glas.colours[1] == (0, 0, 128)
    assert len(set(morph.colours)) == len(morph.colours)


def test_passes_resolve_against_the_51_adp_outputs() -> None:
    assert [p.name for p in passes_for("both")] == ["morph", "func"]
    morph, func, glas = (resolve_pass(p, ADP_LEVEL5) for p in (MORPH, FUNC, GLAS))
    assert morph.source[0] == -1 and morph.source[1] == ADP_LEVEL5.index("E.M.S")
    assert [morph.info.names[i] for i in morph.exceptions] == ["A.W", "A.B", "A.M"]
    assert func.background == 0 and func.other == 1 and func.excluded == (0, 1)
    assert glas.forced == (ADP_LEVEL5.index("G.O"),) and glas.excluded == ()


def test_bad_class_sets_are_refused(tmp_path) -> None:
    with pytest.raises(UserError, match=r"not among the classifier's classes"):
        resolve_pass(FUNC, ["G.O", "T"])
    with pytest.raises(UserError, match="not found"):
        read_class_info("adp_nothing")
    bad = tmp_path / "gap.json"
    bad.write_text(json.dumps({"0": ["a", [1, 2, 3]], "2": ["b", [4, 5, 6]]}))
    with pytest.raises(UserError, match=r"0\.\.K-1"):
        read_class_info(bad)
    with pytest.raises(UserError, match="segmentation.mode"):
        passes_for("nope")


def test_youden_threshold_by_hand_and_against_sklearn() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.2])
    labels = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    # J = TPR - FPR at every threshold; ties go to the highest threshold
    j = {t: (labels[scores >= t].sum() / 4) - ((1 - labels[scores >= t]).sum() / 4) for t in scores}
    best = max(j.values())
    assert youden_threshold(scores, labels) == max(t for t, v in j.items() if v == best)
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    s, y = rng.random(200), rng.random(200) < 0.4
    s = np.where(y, s + 0.3, s)
    fpr, tpr, thr = sklearn.roc_curve(y, s)
    assert youden_threshold(s, y) == pytest.approx(thr[np.argmax(tpr - fpr)])


def test_classes_without_both_labels_keep_the_default() -> None:
    scores = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.9]])
    labels = np.array([[1, 1], [0, 1], [1, 1]])
    thresholds, kept = roc_optimal_thresholds(scores, labels)
    assert kept == [1] and thresholds[1] == 0.5 and thresholds[0] == pytest.approx(0.8)
    with pytest.raises(UserError, match="0 or 1"):
        roc_optimal_thresholds(scores, labels * 2)
