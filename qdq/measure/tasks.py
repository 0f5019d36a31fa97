"""Task-level agreement of a quantized (or FP16) model with the FP32 model: what users judge by.

Each task turns one sample's FP32 outputs and quantized outputs into a row of additive counts; the
pooled figures are computed from the summed rows, so a figure over samples, its bootstrap interval
(:func:`qdq.measure.metrics.bootstrap`) and each sample's own figure come from one definition.  The
first figure of a task is its headline; every figure is "higher is better" except ``cer``.

* ``classify`` — top-1 agreement, top-5 agreement (FP32's top-1 among the quantized top 5; not given
  for 5 classes or fewer, where it is always 100 %), and the
  mean rank (1 = first) of FP32's top-1 class in the quantized scores.
* ``detect`` — boxes decoded from the common layouts (``[N, 4+C, A]`` anchor-free as YOLOv8/v11 with
  class scores; ``[N, A, 5+C]`` with objectness as YOLOv5/YOLOX, raw YOLOX heads decoded on their
  stride-8/16/32 grids; DETR-style boxes ``[N, Q, 4]`` (cx, cy, w, h, normalised) + logits
  ``[N, Q, C+1]``), kept above ``score`` and through class-wise NMS at ``nms`` IoU (not for DETR), then
  F1 of the quantized detections against the FP32 ones (same class, IoU ≥ ``iou``, greedy by score)
  and the mean IoU of the matched pairs; the boxes only one model finds are told apart by their score
  in it: below :data:`BORDER` × the threshold, a score that crossed it.
* ``textmap`` — DB-style probability maps ``[N, 1, H, W]``: IoU of the maps binarised at ``map_thresh``
  (PaddleOCR's 0.3), and F1 of the boxes of their 4-connected components whose mean probability
  reaches ``box_thresh`` (0.6) at IoU ≥ ``iou``.
* ``ctc`` — greedy CTC decoding (argmax per step, repeats collapsed, ``blank`` dropped) of
  ``[N, T, C]`` or ``[T, N, C]``: exact-string agreement over the samples where either model reads
  text (two empty readings agree trivially and are not counted) and the character error rate
  CER = Σ edit distance / Σ FP32 string length.
* ``segment`` — ``[N, C, H, W]`` class scores: per-pixel argmax agreement and the mean over classes of
  the IoU of the two argmax maps (classes present in either).
* a figure with nothing to count on the samples (no box in either model, no text read by either, both
  maps empty) is NaN, unmeasured, never a perfect agreement (:data:`UNMEASURED` says why);
* a user metric ``module:function`` called with (FP32 outputs, quantized outputs) per sample, both
  ``{output name: array}``, returning a float (higher is better); pooled as the mean.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import numpy as np

from ..errors import QdqError

TASKS = ("auto", "classify", "detect", "textmap", "ctc", "segment", "none")
_EMBEDDING_WORDS = ("embed", "hidden", "feature", "pool", "vector", "token", "encod")
_STATE_WORDS = ("state", "cache", "past", "present", "memory")
_CLASS_WORDS = ("logit", "score", "prob", "softmax", "class", "cls")
# a DB map is near binary: of its pixels above 0.1, at least this share is above 0.7
DB_BINARY_SHARE = 0.5
# a CTC sequence: its blank is the commonest argmax, on at least this share of the steps
CTC_BLANK_SHARE = 0.1
# a box scoring below this many times its threshold is borderline (a small change of its score drops it
# or lets it in); a runner-up class within 1/BORDER of the top-1 probability makes a near tie
BORDER = 1.25


@dataclass
class TaskOptions:
    """The flags of ``--task`` and its decoding (documented defaults)."""

    task: str = "auto"
    blank: int | None = None    # CTC blank index (PaddleOCR: 0; None: the first or the last class, by evidence)
    score: float = 0.25         # detection score threshold
    nms: float = 0.45           # NMS IoU
    iou: float = 0.5            # IoU that makes two boxes the same detection
    map_thresh: float = 0.3     # DB probability map binarisation (PaddleOCR's thresh)
    box_thresh: float = 0.6     # DB box score (PaddleOCR's box_thresh)
    metric: str | None = None   # module:function
    confirmed: bool = False     # the user named the task (--task, --task auto included): it may drive decisions

    def __post_init__(self):
        if self.task not in TASKS:
            raise QdqError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")


class Task:
    """One task's per-sample rows and pooled figures (see the module doc)."""

    name = "none"
    columns: tuple = ()
    figures_of: tuple = ()      # figure names, headline first

    def __init__(self, output: str | None = None, reason: str = "", opts: TaskOptions | None = None):
        self.output, self.reason, self.opts = output, reason, opts or TaskOptions()
        self.detected = False    # inferred by qdq (not named by the user): --max-task-loss needs it confirmed

    def row(self, ref: dict, q: dict, feed: dict) -> np.ndarray:
        raise NotImplementedError

    def figures(self, sums: np.ndarray) -> dict:
        """Pooled figures from summed rows ``sums`` (m, k): name → (m,) values."""
        raise NotImplementedError

    def explain(self, total: np.ndarray) -> str:
        """Where the disagreement of the summed rows ``total`` (k,) comes from, in words ("" for nothing to say)."""
        return ""

    @property
    def lower_is_better(self) -> set:
        return {"cer"}


# why a figure is unmeasured (NaN) on a set of samples: nothing to count is not agreement
UNMEASURED = {"f1": "no boxes in either model", "box_f1": "no boxes in either model",
              "precision": "no boxes in the quantized output", "recall": "no boxes in the reference's output",
              "mean_iou": "no matched boxes", "box_iou": "no matched boxes", "map_iou": "both maps empty",
              "exact": "no text read by either model", "cer": "no text in the reference's readings"}


def why_unmeasured(figure: str) -> str:
    """Why task figure ``figure`` is NaN on a set of samples (:data:`UNMEASURED`)."""
    return UNMEASURED.get(figure, "nothing to count")


# how each task figure is named to people; {ref}: what the file is compared with
FIGURE_NAMES = {"top1": "top-1 agreement", "top5": "top-5 agreement", "rank": "mean rank of {ref}'s top-1",
                "f1": "box F1", "mean_iou": "mean IoU of matched boxes", "precision": "precision", "recall": "recall",
                "box_f1": "box F1", "map_iou": "map IoU", "box_iou": "box IoU", "exact": "exact strings",
                "cer": "character error rate", "miou": "mean IoU", "pixel": "pixel agreement", "metric": "your metric"}


def figure_name(figure: str, reference: str = "fp32") -> str:
    """Task figure ``figure`` as the summary, compare and the HTML report name it (``reference``: fp32,
    fp16, or what else the file is compared with, e.g. the device's FP16 run)."""
    return FIGURE_NAMES.get(figure, figure).format(ref=reference.upper())


def _ratio(num, den, empty=np.nan):
    """num / den, ``empty`` where den is 0: NaN (unmeasured, :data:`UNMEASURED` says why) unless the
    figure has a value there by definition."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), empty)


class Classify(Task):
    name, columns, figures_of = "classify", ("rows", "top1", "top5", "rank", "near"), ("top1", "top5", "rank")

    def __init__(self, output=None, reason="", opts=None, classes: int | None = None):
        super().__init__(output, reason, opts)
        if classes is not None and classes <= 5:   # the top 5 hold every class: a figure always 100 %
            self.figures_of = ("top1", "rank")

    def row(self, ref, q, feed):
        """(rows, top-1 agreements, top-5, Σ rank, near): ``near`` counts the rows whose top-1 changed where
        the reference's runner-up had over 1/:data:`BORDER` of its top-1 probability (softmax of the scores unless
        they are probabilities already): a near tie."""
        r, s = ref[self.output].reshape(len(ref[self.output]), -1), q[self.output].reshape(len(q[self.output]), -1)
        r1, same = r.argmax(1), s.argmax(1) == r.argmax(1)
        order = np.argsort(-s.astype(np.float64), axis=1, kind="stable")
        rank = (order == r1[:, None]).argmax(1) + 1
        p = np.sort(r.astype(np.float64) if _probabilities(r, 1) else _softmax(r.astype(np.float64)), axis=1)
        near = ~same & (p[:, -2] * BORDER > p[:, -1])
        return np.array([len(r), same.sum(), (rank <= 5).sum(), rank.sum(), near.sum()], np.float64)

    def figures(self, sums):
        out = {"top1": _ratio(sums[:, 1], sums[:, 0]), "top5": _ratio(sums[:, 2], sums[:, 0]),
               "rank": _ratio(sums[:, 3], sums[:, 0])}
        return {k: out[k] for k in self.figures_of}

    def explain(self, total: np.ndarray) -> str:
        flips, near = int(total[0] - total[1]), int(total[4])
        if not flips:
            return ""
        return (f"{flips} {'sample' if flips == 1 else 'samples'} with another top-1: {near} where the reference's top two "
                f"classes were within {BORDER:g}× of each other (a near tie)" + (f", {flips - near} not" if flips > near else ""))

    @property
    def lower_is_better(self):
        return {"rank"}


def _softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of (n, c) scores."""
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _f1(tp, fp, fn):
    return _ratio(2 * np.asarray(tp), 2 * np.asarray(tp) + np.asarray(fp) + np.asarray(fn))


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4), x1 y1 x2 y2."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def pairs(ref_boxes, ref_cls, q_boxes, q_cls, q_scores, iou: float) -> list:
    """Greedy matching, highest quantized score first, same class, IoU ≥ ``iou``: [(q index, ref index, IoU)]."""
    m = _iou_matrix(q_boxes, ref_boxes)
    taken, out = set(), []
    for i in np.argsort(-np.asarray(q_scores), kind="stable"):
        cands = [(m[i, j], j) for j in range(len(ref_boxes)) if j not in taken and ref_cls[j] == q_cls[i] and m[i, j] >= iou]
        if cands:
            best, j = max(cands)
            taken.add(j)
            out.append((i, j, best))
    return out


def _alone(found: list, q_scores: np.ndarray, ref_scores: np.ndarray, border: float) -> tuple:
    """(fp, fn, near) of :func:`pairs`' ``found``: the boxes only the quantized model finds, only FP32
    finds, and how many of those score below ``border`` in the model that finds them."""
    alone_q = np.setdiff1d(np.arange(len(q_scores)), [i for i, _, _ in found])
    alone_r = np.setdiff1d(np.arange(len(ref_scores)), [j for _, j, _ in found])
    return len(alone_q), len(alone_r), int((q_scores[alone_q] < border).sum() + (ref_scores[alone_r] < border).sum())


def _border_words(total: np.ndarray, what: str, threshold: float) -> str:
    """``total`` (…, fp, fn, near) summed: how many differing boxes crossed the threshold, in words."""
    differ, near = int(total[-3] + total[-2]), int(total[-1])
    if not differ:
        return ""
    parts = [f"{near} with a {what} under {BORDER:g}× the {threshold:g} threshold in that model, "
             f"{'a score' if near == 1 else 'scores'} that crossed it"] if near else []
    parts += [f"{differ - near} with a higher {what}"] if differ > near else []
    return f"{differ} {'box' if differ == 1 else 'boxes'} found by one model only: " + "; ".join(parts)


def _nms(boxes, scores, classes, iou: float) -> np.ndarray:
    """Indices kept by class-wise non-maximum suppression."""
    keep = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        while len(idx):
            keep.append(idx[0])
            idx = idx[1:][_iou_matrix(boxes[idx[:1]], boxes[idx[1:]])[0] < iou] if len(idx) > 1 else idx[1:]
    return np.asarray(sorted(keep), np.int64)


class Detect(Task):
    name, columns, figures_of = "detect", ("tp", "iou", "fp", "fn", "near"), ("f1", "mean_iou", "precision", "recall")

    def __init__(self, output, reason="", opts=None, layout="yolov8", boxes_output=None, grid=None):
        super().__init__(output, reason, opts)
        self.layout, self.boxes_output, self.grid = layout, boxes_output, grid

    def decode(self, out: dict, b: int) -> tuple:
        """Detections of item ``b``: (boxes x1y1x2y2, scores, classes) after threshold and NMS."""
        o = self.opts
        if self.layout == "detr":
            boxes, logits = out[self.boxes_output][b].astype(np.float64), out[self.output][b].astype(np.float64)
            p = _softmax(logits)
            cls, scores = p[:, :-1].argmax(1), p[:, :-1].max(1)
            keep = scores >= o.score
            return _xyxy(boxes[keep]), scores[keep], cls[keep]
        a = out[self.output][b].astype(np.float64)
        if self.layout == "yolov8":
            a = a.T                                  # (A, 4 + C)
            box, cls_scores = a[:, :4], a[:, 4:]
        else:
            box, cls_scores = a[:, :4], a[:, 5:] * a[:, 4:5] if a.shape[1] > 5 else a[:, 4:5]
            if self.grid is not None:               # raw YOLOX head: offsets and log sizes on the grid
                cells, strides = self.grid
                box = np.concatenate([(box[:, :2] + cells) * strides, np.exp(np.clip(box[:, 2:4], -20, 20)) * strides], 1)
        cls, scores = cls_scores.argmax(1), cls_scores.max(1)
        keep = scores >= o.score
        boxes, scores, cls = _xyxy(box[keep]), scores[keep], cls[keep]
        k = _nms(boxes, scores, cls, o.nms) if len(boxes) else np.zeros(0, np.int64)
        return boxes[k], scores[k], cls[k]

    def row(self, ref, q, feed):
        """(tp, Σ IoU of the pairs, fp, fn, near): ``near`` counts the boxes only one model finds that score
        below :data:`BORDER` × the threshold in it (a score that crossed the threshold, not a lost object)."""
        out = np.zeros(5)
        for b in range(len(ref[self.output])):
            rb, rs, rc = self.decode(ref, b)
            qb, qs, qc = self.decode(q, b)
            found = pairs(rb, rc, qb, qc, qs, self.opts.iou)
            out += [len(found), sum(x for _, _, x in found), *_alone(found, qs, rs, BORDER * self.opts.score)]
        return out

    def figures(self, sums):
        tp, fp, fn = sums[:, 0], sums[:, 2], sums[:, 3]
        return {"f1": _f1(tp, fp, fn), "mean_iou": _ratio(sums[:, 1], tp), "precision": _ratio(tp, tp + fp),
                "recall": _ratio(tp, tp + fn)}

    def explain(self, total: np.ndarray) -> str:
        return _border_words(total, "score", self.opts.score)


def _xyxy(cxcywh: np.ndarray) -> np.ndarray:
    c, s = cxcywh[:, :2], cxcywh[:, 2:4]
    return np.concatenate([c - s / 2, c + s / 2], 1)


def components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of a 2-D boolean mask (0 outside; labels are the smallest flat
    index of each component + 1), by vectorised union-find: hook along edges, then path halving."""
    h, w = mask.shape
    flat = mask.ravel()
    parent = np.arange(flat.size)
    idx = np.arange(flat.size).reshape(h, w)
    edges = [(idx[:, :-1][mask[:, :-1] & mask[:, 1:]], idx[:, 1:][mask[:, :-1] & mask[:, 1:]]),
             (idx[:-1][mask[:-1] & mask[1:]], idx[1:][mask[:-1] & mask[1:]])]
    u = np.concatenate([e[0] for e in edges])
    v = np.concatenate([e[1] for e in edges])
    while len(u):
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        if not differ.any():
            break
        lo, hi = np.minimum(pu, pv)[differ], np.maximum(pu, pv)[differ]
        np.minimum.at(parent, hi, lo)
        while True:   # point every node at its root
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    return np.where(flat, parent + 1, 0).reshape(h, w)


class TextMap(Task):
    name, columns = "textmap", ("inter", "union", "tp", "iou", "fp", "fn", "near")
    figures_of = ("box_f1", "map_iou", "box_iou")

    def boxes(self, prob: np.ndarray) -> np.ndarray:
        """Boxes (x1, y1, x2, y2) of the components of ``prob`` > map_thresh scoring ≥ box_thresh."""
        return self.scored_boxes(prob)[0]

    def scored_boxes(self, prob: np.ndarray) -> tuple:
        """:meth:`boxes` and their scores (the mean probability of each component)."""
        labels = components(prob > self.opts.map_thresh)
        ids, inverse = np.unique(labels.ravel(), return_inverse=True)
        ys, xs = np.divmod(np.arange(labels.size), labels.shape[1])
        out, scores = [], []
        for k, lab in enumerate(ids):
            if lab == 0:
                continue
            sel = inverse == k
            x1, x2, y1, y2 = xs[sel].min(), xs[sel].max() + 1, ys[sel].min(), ys[sel].max() + 1
            score = prob.ravel()[sel].mean()
            if min(x2 - x1, y2 - y1) >= 3 and score >= self.opts.box_thresh:
                out.append((x1, y1, x2, y2))
                scores.append(score)
        return np.asarray(out, np.float64).reshape(-1, 4), np.asarray(scores, np.float64)

    def row(self, ref, q, feed):
        """(map ∩, map ∪, tp, Σ IoU, fp, fn, near): ``near`` as :class:`Detect`'s, at the box threshold."""
        out = np.zeros(7)
        for b in range(len(ref[self.output])):
            r, s = ref[self.output][b].reshape(ref[self.output].shape[-2:]), q[self.output][b].reshape(q[self.output].shape[-2:])
            rm, qm = r > self.opts.map_thresh, s > self.opts.map_thresh
            (rb, rs), (qb, qs) = self.scored_boxes(r), self.scored_boxes(s)
            found = pairs(rb, np.zeros(len(rb)), qb, np.zeros(len(qb)), np.zeros(len(qb)), self.opts.iou)
            out += [(rm & qm).sum(), (rm | qm).sum(), len(found), sum(x for _, _, x in found),
                    *_alone(found, qs, rs, BORDER * self.opts.box_thresh)]
        return out

    def figures(self, sums):
        return {"box_f1": _f1(sums[:, 2], sums[:, 4], sums[:, 5]), "map_iou": _ratio(sums[:, 0], sums[:, 1]),
                "box_iou": _ratio(sums[:, 3], sums[:, 2])}

    def explain(self, total: np.ndarray) -> str:
        return _border_words(total, "mean probability", self.opts.box_thresh)


def ctc_decode(probs: np.ndarray, blank: int) -> tuple:
    """Greedy CTC: argmax per step (probs (T, C)), repeats collapsed, blanks dropped."""
    best = probs.argmax(-1)
    keep = np.ones(len(best), bool)
    keep[1:] = best[1:] != best[:-1]
    return tuple(int(c) for c in best[keep] if c != blank)


def edit_distance(a: tuple, b: tuple) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


class Ctc(Task):
    name, columns, figures_of = "ctc", ("read", "exact", "edits", "chars"), ("exact", "cer")

    def __init__(self, output, reason="", opts=None, time_major=False, blank: int = 0):
        super().__init__(output, reason, opts)
        self.time_major, self.blank = time_major, blank

    def row(self, ref, q, feed):
        r, s = ref[self.output], q[self.output]
        if self.time_major:
            r, s = np.moveaxis(r, 1, 0), np.moveaxis(s, 1, 0)
        out = np.zeros(4)
        for b in range(len(r)):
            a, c = ctc_decode(r[b], self.blank), ctc_decode(s[b], self.blank)
            read = bool(a or c)
            out += [read, read and a == c, edit_distance(a, c), len(a)]
        return out

    def figures(self, sums):
        return {"exact": _ratio(sums[:, 1], sums[:, 0]), "cer": _ratio(sums[:, 2], sums[:, 3])}


class Segment(Task):
    name, figures_of = "segment", ("miou", "pixel")

    def __init__(self, output, reason="", opts=None, classes=2):
        super().__init__(output, reason, opts)
        self.classes = classes
        self.columns = ("pixels", "agree") + tuple(f"inter{c}" for c in range(classes)) + tuple(f"union{c}" for c in range(classes))

    def row(self, ref, q, feed):
        r, s = ref[self.output].argmax(1).ravel(), q[self.output].argmax(1).ravel()
        c = self.classes
        inter = np.bincount(r[r == s], minlength=c)[:c]
        union = np.bincount(r, minlength=c)[:c] + np.bincount(s, minlength=c)[:c] - inter
        return np.concatenate([[r.size, (r == s).sum()], inter, union]).astype(np.float64)

    def figures(self, sums):
        c = self.classes
        inter, union = sums[:, 2:2 + c], sums[:, 2 + c:]
        present = union > 0
        miou = np.where(present.any(1), (np.where(present, inter / np.where(present, union, 1), 0)).sum(1)
                        / np.maximum(present.sum(1), 1), 1.0)
        return {"miou": miou, "pixel": _ratio(sums[:, 1], sums[:, 0])}


class UserMetric(Task):
    name, columns, figures_of = "metric", ("value", "samples"), ("metric",)

    def __init__(self, spec: str, opts=None):
        super().__init__(None, f"your metric {spec}", opts)
        self.fn = load_metric(spec)

    def row(self, ref, q, feed):
        try:
            v = float(self.fn(ref, q))
        except Exception as e:
            raise QdqError(f"--metric {self.opts.metric}: failed on a sample ({type(e).__name__}: {str(e)[:120]})") from None
        if not math.isfinite(v):
            raise QdqError(f"--metric {self.opts.metric}: returned {v}; it must return a finite float")
        return np.array([v, 1.0])

    def figures(self, sums):
        return {"metric": _ratio(sums[:, 0], sums[:, 1], empty=0.0)}

    @property
    def lower_is_better(self):
        return set()


def load_metric(spec: str):
    """``module:function`` → the function (the module imported from the current folder or sys.path)."""
    mod, sep, fn = spec.partition(":")
    if not sep or not mod or not fn:
        raise QdqError(f"--metric {spec!r}: expected module:function, e.g. mymetrics:box_agreement")
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise QdqError(f"--metric {spec!r}: cannot load it ({type(e).__name__}: {str(e)[:120]})") from None
    if not callable(f):
        raise QdqError(f"--metric {spec!r}: {fn} is not a function")
    return f


def choose_task(outputs: dict, feed: dict, opts: TaskOptions) -> Task:
    """The task to judge agreement by: the user's metric, the forced ``opts.task``, or the one the FP32
    outputs of one sample (``outputs``, name → array) show positive evidence of (the rules below
    :func:`not_a_task`);
    ``reason`` says why in one line, and ``detected`` is True when qdq inferred it."""
    if opts.metric:
        return UserMetric(opts.metric, opts)
    if opts.task == "none":
        return Task(None, "--task none", opts)
    found, rejected = _detect_all(outputs, feed, opts, strict=opts.task == "auto")
    if opts.task == "auto":
        if found:
            found[0].detected = True
            return found[0]
        return Task(None, "no output shows evidence of a task (" + "; ".join(rejected) + "); pass --task or --metric",
                    opts)
    match_ = [t for t in found if t.name == opts.task]
    if not match_:
        shapes = ", ".join(f"{k!r} {list(v.shape)}" for k, v in outputs.items())
        raise QdqError(f"--task {opts.task}: no output has the shape it needs ({shapes}); see qdq compare --help")
    match_[0].reason = f"--task {opts.task}: " + match_[0].reason
    return match_[0]


# samples whose outputs the task is inferred from (a first image without text shows no text map)
EVIDENCE_SAMPLES = 4


def choose_task_on(samples: list, opts: TaskOptions) -> Task:
    """:func:`choose_task` on each of the first :data:`EVIDENCE_SAMPLES` ``samples`` ((FP32 outputs,
    feed) pairs): the task the most of them show evidence of (the earliest on a tie), its reason
    saying on how many; none when none shows any."""
    samples = samples[:EVIDENCE_SAMPLES]
    tasks = [choose_task(out, feed, opts) for out, feed in samples]
    if opts.metric or opts.task != "auto" or len(tasks) == 1:
        return tasks[0]
    found = [t for t in tasks if t.name != "none"]
    if not found:
        return tasks[0]
    names = [t.name for t in found]
    best = next(t for t in found if names.count(t.name) == max(names.count(n) for n in names))
    against = _against(best, [out for (out, _), t in zip(samples, tasks) if t.name == "none"])
    if against >= names.count(best.name):
        return Task(None, f"no task: {best.reason}, but on {against} of the first {len(tasks)} samples the same output "
                          "is lit and not near binary (a DB text map is); pass --task or --metric", opts)
    best.reason += f" (evidence on {names.count(best.name)} of the first {len(tasks)} samples)"
    return best


def _against(task: Task, outputs: list) -> int:
    """How many of the samples showing no task (their FP32 ``outputs``) contradict ``task``: for a text
    map, its output lit (pixels above 0.1) but not near binary.  A text detector's map of an image
    without text is dark: no evidence either way, so a text map found on one sample in four stands."""
    if task.name != "textmap":
        return 0
    shares = [_binary_share(out[task.output]) for out in outputs if task.output in out]
    return sum(1 for share in shares if share is not None and share < DB_BINARY_SHARE)


def _batch(feed: dict) -> int:
    arrays = [v for v in feed.values() if getattr(v, "ndim", 0) >= 1]
    return int(arrays[0].shape[0]) if arrays else 1


def _image_size(feed: dict):
    """(H, W) of the first rank-4 float input (NCHW or NHWC), or None."""
    for v in feed.values():
        if getattr(v, "ndim", 0) == 4 and v.dtype.kind == "f":
            return (v.shape[2], v.shape[3]) if v.shape[1] in (1, 3, 4) else (v.shape[1], v.shape[2])
    return None


def _image_input(feed: dict) -> bool:
    """Whether the model reads an image: a rank-4 float input with 1, 3 or 4 channels."""
    for v in feed.values():
        if getattr(v, "ndim", 0) == 4 and v.dtype.kind == "f":
            return v.shape[1] in (1, 3, 4) or v.shape[3] in (1, 3, 4)
    return False


def _words(name: str, words: tuple) -> bool:
    low = name.lower()
    return any(w in low for w in words)


def not_a_task(name: str, v: np.ndarray, feed: dict) -> str | None:
    """Why output ``name`` is no task's output whatever its values, or None: a state the caller feeds
    back (named so, or shaped like a float input of the model) or an embedding / hidden-state / feature
    tensor (named so)."""
    if _words(name, _EMBEDDING_WORDS):
        return "named like an embedding, hidden state or features"
    same = [k for k, x in feed.items() if getattr(x, "dtype", np.dtype("O")).kind == "f" and x.ndim >= 2
            and tuple(x.shape) == tuple(v.shape) and x.ndim != 4]
    if same:
        return f"shaped like input {same[0]!r}: a state fed back"
    if _words(name, _STATE_WORDS):
        return "named like a recurrent state or cache"
    return None


def _detect_all(outputs: dict, feed: dict, opts: TaskOptions, strict: bool = True) -> tuple:
    """(every task an output shows evidence of, in order of preference: DETR pairs first, then output
    order; one line per output that shows none, saying why).  ``strict`` (auto-detection) asks for
    the evidence; a forced task needs the shape only."""
    b = _batch(feed)
    floats = {k: v for k, v in outputs.items() if getattr(v, "dtype", np.dtype("O")).kind == "f" and v.ndim >= 2}
    rejected = [f"{k!r} {list(getattr(v, 'shape', []))}: not a float tensor of rank 2 or more"
                for k, v in outputs.items() if k not in floats]
    out = _detr(floats, b, opts)
    for name, v in floats.items():
        why = not_a_task(name, v, feed) if strict else None
        found, notes = ([], [why]) if why else _detect_one(name, v, b, feed, opts, strict)
        out += found
        if not found:
            rejected.append(f"{name!r} {list(v.shape)}: " + ("; ".join(n for n in notes if n) or "no task has this shape"))
    return out, rejected


def _detr(floats: dict, b: int, opts) -> list:
    boxes = [k for k, v in floats.items() if v.ndim == 3 and v.shape[0] == b and v.shape[2] == 4 and v.shape[1] >= 10]
    for bk in boxes:
        q = floats[bk].shape[1]
        logits = [k for k, v in floats.items() if k != bk and v.ndim == 3 and v.shape[:2] == (b, q) and v.shape[2] >= 2]
        if logits:
            return [Detect(logits[0], f"outputs {bk!r} {list(floats[bk].shape)} and {logits[0]!r} "
                                      f"{list(floats[logits[0]].shape)}: DETR-style boxes and class logits", opts,
                           layout="detr", boxes_output=bk)]
    return []


def _probabilities(v: np.ndarray, axis: int) -> bool:
    """Non-negative and summing to 1 along ``axis`` (a softmax)."""
    return bool(v.min() >= 0 and np.allclose(v.astype(np.float64).sum(axis), 1.0, atol=1e-3))


def _detect_one(name: str, v: np.ndarray, b: int, feed: dict, opts, strict: bool = True) -> tuple:
    """(tasks output ``name`` shows evidence of, notes on what it lacks)."""
    shape, where = list(v.shape), f"output {name!r} {list(v.shape)}"
    if v.ndim == 2 or (v.ndim == 4 and v.shape[2:] == (1, 1)):
        return _classify(name, v.reshape(len(v), -1), b, opts, strict, where)
    if v.ndim == 4 and v.shape[0] == b:
        size, image = _image_size(feed), _image_input(feed)
        if strict and not (image and size is not None and tuple(v.shape[2:]) == tuple(size)):
            return [], ["a map, but not the size of an input image"]
        if v.shape[1] == 1:
            return _textmap(name, v, opts, strict, where)
        return _segment(name, v, opts, strict, where)
    if v.ndim == 3:
        return _detect_3d(name, v, b, feed, opts, where, strict)
    return [], [f"rank {len(shape)}"]


def _classify(name, v, b, opts, strict, where) -> tuple:
    """Rows of class scores: probabilities (a softmax), or named like logits/scores/probabilities."""
    if v.shape[0] != b or v.shape[1] < 2:
        return [], ["one value per sample"]
    if not strict:
        return [Classify(name, f"{where}: one score per class", opts, classes=v.shape[1])], []
    if _probabilities(v, 1):
        return [Classify(name, f"{where}: rows of {v.shape[1]} probabilities summing to 1 (class scores)", opts,
                         classes=v.shape[1])], []
    if _words(name, _CLASS_WORDS):
        return [Classify(name, f"{where}: named like class scores, {v.shape[1]} per row", opts, classes=v.shape[1])], []
    return [], ["rows are not probabilities and the name does not say logits/scores/probs"]


def _binary_share(v: np.ndarray) -> float | None:
    """The share of a probability map's lit pixels (> 0.1) above 0.7; None when nothing is lit."""
    lit = v[v > 0.1]
    return float((lit > 0.7).mean()) if lit.size else None


def _textmap(name, v, opts, strict, where) -> tuple:
    """DB text maps: probabilities, near binary (:data:`DB_BINARY_SHARE` of the pixels above 0.1 also
    above 0.7, as a map trained on shrunk text masks is), with at least one text box."""
    if v.min() < 0 or v.max() > 1:
        return [], ["a one-channel map with values outside [0, 1]"]
    task = TextMap(name, "", opts)
    if not strict:
        task.reason = f"{where}: a one-channel probability map"
        return [task], []
    binary = _binary_share(v) or 0.0
    boxes = sum(len(task.boxes(m.reshape(m.shape[-2:]))) for m in v)
    if binary < DB_BINARY_SHARE or not boxes:
        return [], [f"a probability map, but not a DB text map ({binary:.0%} of its lit pixels above 0.7, "
                    f"{boxes} boxes; DB maps are near binary with text boxes)"]
    task.reason = (f"{where}: a near-binary probability map the size of the image ({binary:.0%} of its lit pixels "
                   f"above 0.7), {boxes} text boxes (DB text detector)")
    return [task], []


def _segment(name, v, opts, strict, where) -> tuple:
    """Per-pixel class scores: a softmax over the channels, or named like class scores / masks."""
    c = v.shape[1]
    if c > 1000:
        return [], [f"{c} channels"]
    if not strict or _probabilities(v, 1) or _words(name, _CLASS_WORDS + ("seg", "mask", "label", "parsing")):
        evidence = "probabilities over the channels" if strict and _probabilities(v, 1) else "named like class scores"
        return [Segment(name, f"{where}: {c} class scores per pixel of the image ({evidence})", opts, classes=c)], []
    return [], ["an image-sized map, but not probabilities over its channels nor named like class scores or masks"]


def _ctc_evidence(v: np.ndarray, blank: int, time_major: bool) -> tuple:
    """(share of steps whose argmax is the blank, 0 when another class is commoner; readings that
    decode to something) of ``v``."""
    seq = np.moveaxis(v, 1, 0) if time_major else v
    best = seq.argmax(-1)
    reads = sum(bool(ctc_decode(s, blank)) for s in seq)
    counts = np.bincount(best.ravel(), minlength=v.shape[-1])
    return (float(counts[blank] / best.size) if counts.argmax() == blank else 0.0), reads


def _detect_3d(name, v, b, feed, opts, where, strict=True) -> tuple:
    """Rank-3 outputs: CTC sequences (:func:`_ctc`), YOLO-style boxes (pixel boxes of an image input,
    scores in [0, 1])."""
    out, notes = _ctc(name, v, b, opts, where, strict)
    yolo, why = _yolo(name, v, b, feed, opts, where, strict)
    return yolo + out, ([] if yolo else [why]) + ([] if out else notes)


def _ctc(name, v, b, opts, where, strict) -> tuple:
    """A CTC sequence, batch or time first: a blank column the argmax of many steps and a reading, from
    logits, log-probabilities or probabilities over the classes (CTC trains through a softmax), never
    independent per-class scores in [0, 1].  Returns ([Ctc] or [], notes on what it lacks)."""
    n, d1, d2 = v.shape
    if strict and v.min() >= 0 and v.max() <= 1 and not _probabilities(v, -1):
        return [], ["scores in [0, 1] that do not sum to 1 over the classes (independent per-class scores, as a "
                    "sigmoid gives): not a CTC distribution"]
    blanks = (opts.blank,) if opts.blank is not None else (0, d2 - 1)   # the two conventions: first or last class
    notes = []
    for time_major, steps in ((False, d1), (True, n)):
        batch_ok = (d1 == b and n >= 2) if time_major else (n == b and d1 >= 2)
        if not batch_ok or d2 < 3 or not all(0 <= k < d2 for k in blanks):
            continue
        first = ", time first" if time_major else ""
        if not strict:
            return [Ctc(name, f"{where}: {steps} steps × {d2} classes{first} (CTC sequence, blank {blanks[0]})", opts,
                        time_major, blanks[0])], notes
        for blank in blanks:
            blank_share, reads = _ctc_evidence(v, blank, time_major)
            if blank_share >= CTC_BLANK_SHARE and reads:
                return [Ctc(name, f"{where}: {steps} steps × {d2} classes{first}, blank {blank} the commonest class "
                                  f"({blank_share:.0%} of the steps) and a reading (CTC sequence)", opts, time_major, blank)], notes
        notes.append(f"no blank ({' or '.join(map(str, blanks))}) the commonest class on {CTC_BLANK_SHARE:.0%} or more of "
                     f"the steps{first}: not a CTC sequence")
    return [], notes


def _pixel_boxes(box: np.ndarray, size) -> bool:
    """Boxes (k, 4) cx, cy, w, h in pixels of an image of ``size`` (H, W): sizes ≥ 0, centres on the
    image (10 % margin), some coordinate above 1 (not normalised scores)."""
    h, w = size
    cx, cy, bw, bh = box.T.astype(np.float64)
    return bool(box.size and bw.min() >= 0 and bh.min() >= 0 and np.abs(box).max() > 1
                and -0.1 * w <= cx.min() and cx.max() <= 1.1 * w and -0.1 * h <= cy.min() and cy.max() <= 1.1 * h)


def _yolo(name, v, b, feed, opts, where, strict) -> tuple:
    """YOLOv5/YOLOX ``[N, A, 5+C]`` and YOLOv8 ``[N, 4+C, A]`` boxes of an image input."""
    n, d1, d2 = v.shape
    size = _image_size(feed)
    if n != b:
        return [], "not one row per sample"
    if strict and (size is None or not _image_input(feed)):
        return [], "the model reads no image: not boxes"
    if d1 >= 100 and 6 <= d2 <= 105 and 0 <= v[..., 4].min() and v[..., 4].max() <= 1:
        grid = _yolox_grid(d1, v, feed)
        if grid is not None or not strict or _pixel_boxes(v[..., :4].reshape(-1, 4), size):
            kind = "raw YOLOX head decoded on its stride-8/16/32 grid" if grid is not None else "YOLOv5/YOLOX pixel boxes"
            return [Detect(name, f"{where}: {d1} anchors × (4 box + objectness + {d2 - 5} classes), {kind}", opts,
                           layout="yolo", grid=grid)], ""
    if d2 >= 100 and 5 <= d1 <= 104 and d2 > d1:
        scores = v[:, 4:]
        if not strict or (scores.min() >= 0 and scores.max() <= 1
                          and _pixel_boxes(np.moveaxis(v[:, :4], 1, 2).reshape(-1, 4), size)):
            return [Detect(name, f"{where}: (4 box + {d1 - 4} class scores) × {d2} anchors, pixel boxes and scores in "
                                 "[0, 1] (YOLOv8/v11 layout)", opts, layout="yolov8")], ""
    return [], "not pixel boxes with scores in [0, 1]"


def _yolox_grid(anchors: int, v: np.ndarray, feed: dict):
    """(cells (A, 2), strides (A, 1)) when ``v`` is a raw YOLOX head over the input image: as many
    anchors as grid cells at strides 8, 16, 32 and box sizes that are log-scale (small), else None."""
    size = _image_size(feed)
    if size is None:
        return None
    h, w = size
    cells, strides = [], []
    for s in (8, 16, 32):
        gy, gx = np.meshgrid(np.arange(h // s), np.arange(w // s), indexing="ij")
        cells.append(np.stack([gx.ravel(), gy.ravel()], 1))
        strides.append(np.full((gx.size, 1), s))
    cells, strides = np.concatenate(cells), np.concatenate(strides)
    if len(cells) != anchors or np.median(np.abs(v[..., 2:4])) > 8:
        return None
    return cells.astype(np.float64), strides.astype(np.float64)
