"""How the second stage is judged on validation and test samples, and how its thresholds are chosen."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def validation_score(probs: npt.NDArray[np.float32], is_mitosis: npt.NDArray[Any], atypical: Any) -> float:
    """Average precision of the mitosis output, plus a little of the atypia AUC as a tie-breaker."""
    return average_precision(probs[:, 0], is_mitosis) + 0.1 * auc(probs[is_mitosis == 1, 1], atypical[is_mitosis == 1])


def average_precision(scores: npt.NDArray[np.float32], labels: npt.NDArray[Any]) -> float:
    order = np.argsort(-scores)
    hits = labels[order] == 1
    if not hits.any():
        return 0.0
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def auc(scores: npt.NDArray[np.float32], labels: npt.NDArray[Any]) -> float:
    known = labels >= 0
    pos, neg = scores[known & (labels == 1)], scores[known & (labels == 0)]
    if not len(pos) or not len(neg):
        return 0.0
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def choose_thresholds(probs: npt.NDArray[np.float32], is_mitosis: Any, atypical: Any, target_recall: float):
    positives = np.sort(probs[is_mitosis == 1, 0])
    # The highest threshold that keeps at least target_recall of the validation mitoses.
    k = int(np.floor((1 - target_recall) * len(positives)))
    mitosis_threshold = float(positives[k]) if len(positives) else 0.5
    known = (is_mitosis == 1) & (atypical >= 0)
    best_t, best_bacc = 0.5, -1.0
    for t in np.linspace(0.05, 0.95, 91):
        bacc = balanced_accuracy(probs[known, 1] >= t, atypical[known] == 1)
        if bacc > best_bacc:
            best_t, best_bacc = float(t), bacc
    return mitosis_threshold, best_t


def balanced_accuracy(predicted: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> float:
    if not truth.any() or truth.all():
        return 0.0
    return float((predicted[truth].mean() + (~predicted[~truth]).mean()) / 2)


def report(probs, data, idx, mitosis_t: float, atypical_t: float) -> dict[str, Any]:
    """Per source of the split: positives kept (recall), negatives called (false-call rate)."""
    out: dict[str, Any] = {}
    sources = np.array([s.split(":")[0] for s in data["source"][idx]])
    called = probs[:, 0] >= mitosis_t
    for source in sorted(set(sources)):
        mask = sources == source
        pos = mask & (data["is_mitosis"][idx] == 1)
        neg = mask & (data["is_mitosis"][idx] == 0)
        entry: dict[str, Any] = {"positives": int(pos.sum()), "negatives": int(neg.sum())}
        if pos.any():
            entry["recall"] = round(float(called[pos].mean()), 4)
        if neg.any():
            entry["false_calls_per_100_negatives"] = round(100 * float(called[neg].mean()), 2)
        known = pos & (data["atypical"][idx] >= 0)
        if known.any():
            entry["atypical_balanced_accuracy"] = round(
                balanced_accuracy(probs[known, 1] >= atypical_t, data["atypical"][idx][known] == 1), 4
            )
            entry["atypical_auc"] = round(auc(probs[known, 1], data["atypical"][idx][known]), 4)
        out[source] = entry
    return out
