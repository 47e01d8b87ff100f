"""The catalogue of bad inputs and faults, run on every model kind.

Each case either must work (a valid input, with a check of the result) or must raise a
:class:`camkit.CamkitError` whose message matches ``match`` (the argument, the value received and
the fix). Every case ends in one outcome:

- ``clear``: the expected camkit error, with a message that names what it must;
- ``works``: a valid input that worked and gave the right result;
- ``vague``: a camkit error whose message misses the argument, the value or the fix, or a camkit
  error for a valid input;
- ``raw``: an exception that is not a camkit error (a traceback from deep inside);
- ``silent``: no error where one was due, or a wrong result.

and the model must be exactly as it was before (``changed`` otherwise).

``python tests/catalogue.py`` prints the counts per kind.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from model_kinds import (
    SIZE,
    Kind,
    framework_array,
    kind,
    same_snapshot,
    with_value,
)

import camkit
from camkit import metrics, targets

#: A map per image at the inputs' resolution, for the metrics.
MAPS = np.stack([np.linspace(0, 1, SIZE * SIZE).reshape(SIZE, SIZE)] * 2).astype(np.float32)
PHOTO = np.zeros((SIZE, SIZE, 3), np.uint8)
#: Kinds whose model takes one input size only (a Keras ``Input`` shape).
FIXED_SIZE = ("keras-functional", "keras-sequential", "keras-nested")


@dataclass(frozen=True)
class Case:
    """One entry: ``run(kind)``; ``match`` the message regex of the error it must raise, or
    ``None`` for a valid input whose result ``check(result, kind)`` must accept."""

    id: str
    run: Callable[[Kind], Any]
    match: str | None = None
    check: Callable[[Any, Kind], bool] | None = None
    applies: Callable[[Kind], bool] = lambda kind: True


def explain(k: Kind, **options: Any) -> camkit.Explanation:
    options.setdefault("layer", k.layer)
    inputs = options.pop("inputs", k.inputs)
    model = options.pop("model", k.model)
    return camkit.explain(model, inputs, **options)


def targets_are(*expected: int) -> Callable[[Any, Kind], bool]:
    return lambda result, k: result.targets.tolist() == list(expected)


def shape_is(*shape: int) -> Callable[[Any, Kind], bool]:
    return lambda result, k: tuple(result.cams.shape) == shape


def finite_maps(result: Any, k: Kind) -> bool:
    return bool(np.isfinite(result.cams).all() and result.cams.shape == (2, SIZE, SIZE))


def _explain_case(id: str, match: str | None = None, check: Any = None, **options: Any) -> Case:
    return Case(id, lambda k: explain(k, **options), match, check)


def _metric(name: str, cams: Any = MAPS, **options: Any) -> Callable[[Kind], Any]:
    function = getattr(metrics, name)
    if name in ("deletion", "insertion", "confidence_change", "road"):
        return lambda k: function(k.model, k.inputs, cams, **options)
    return lambda k: function(cams, **options)


def _cases() -> list[Case]:
    # fmt: off
    cases = [
        # -- the method, layer and backend -------------------------------------------------
        _explain_case("method unknown", r"method='gradcam\+'.*closest", method="gradcam+"),
        _explain_case("method not a string", r"method=3\b.*one of", method=3),
        _explain_case("layer unknown", r"layer='nope'.*(closest|valid)", layer="nope"),
        _explain_case("layer empty list", r"layer=\[\].*None", layer=[]),
        _explain_case("layer an int", r"layer=3\b", layer=3),
        Case("layer not spatial", lambda k: explain(k, layer=k.classifier),
             r"(shape \(2, 3\)|\(N, C, H, W\)|spatial)",
             applies=lambda k: k.name != "functions"),
        Case("layer never called", lambda k: explain(k, layer=k.unused_layer),
             r"'spare' was not called", applies=lambda k: k.unused_layer is not None),
        _explain_case("backend unknown", r"backend='nope'.*not registered", backend="nope"),
        Case("backend of another framework",
             lambda k: explain(k, backend="jax" if k.framework != "jax" else "torch"),
             r"(backend=|needs a|framework)"),
        _explain_case("unknown option", r"'colour' is not an option", colour="red"),
        _explain_case("model None", r"no camkit backend can handle.*NoneType", model=None),
        _explain_case("model a string", r"no camkit backend can handle.*str", model="resnet"),
        # -- targets ------------------------------------------------------------------------
        _explain_case("target True", r"target=True.*(bool|class index)", target=True),
        _explain_case("target False", r"target=False", target=False),
        _explain_case("target huge", r"target=1000000000000 is out of range", target=10**12),
        _explain_case("target negative", r"target=-1 is out of range", target=-1),
        _explain_case("target out of range", r"target=99 is out of range.*3 outputs", target=99),
        _explain_case("target too few", r"1 ind\w+ for a batch of 2", target=[0]),
        _explain_case("target too many", r"3 ind\w+ for a batch of 2", target=[0, 1, 2]),
        _explain_case("target floats", r"target=\[0\.5, 1\]", target=[0.5, 1]),
        _explain_case("target a string", r"target='cat'", target="cat"),
        _explain_case("target 2-d array: classes per sample", None,
                      lambda r, k: r.targets.tolist() == [[0, 1]] * 2 and r.cams.shape[1] == 2,
                      target=np.array([[0, 1]])),
        _explain_case("target ragged classes", r"Classes.index=.*\(K,\).*\(N, K\)",
                      target=[[0, 1], [2]]),
        _explain_case("target classes out of range", r"Classes.index holds 7, out of range",
                      target=[[0, 7], [1, 2]]),
        _explain_case("target classes for another batch", r"classes for 3 samples.*has 2",
                      target=[[0], [1], [2]]),
        _explain_case("target top-k", None,
                      lambda r, k: r.cams.shape == (2, 2, SIZE, SIZE) and r.scores.shape == (2, 2),
                      target=targets.TopK(2)),
        _explain_case("target top-k of more classes", r"TopK.k=5 is more than.*3 classes",
                      target=targets.TopK(5)),
        Case("target top-k zero", lambda k: explain(k, target=targets.TopK(0)),
             r"TopK.k=0 is not valid"),
        Case("target top-k score unknown",
             lambda k: explain(k, target=targets.TopK(2, score="softmax")),  # type: ignore[arg-type]
             r"TopK.score='softmax'.*'probability'"),
        _explain_case("target sigmoid", None, targets_are(2, 2), target=targets.SigmoidTarget(2)),
        _explain_case("box target on a classifier", r"BoxTarget cannot read.*shape \(2, 3\)",
                      target=targets.BoxTarget([[0, 0, 4, 4]])),
        Case("box target of 3 numbers", lambda k: explain(k, target=targets.BoxTarget([[0, 0, 4]])),
             r"BoxTarget.boxes has shape \(1, 3\)"),
        _explain_case("similarity of other dimensions", r"reference has 5 dim.*embedding has 3",
                      target=targets.SimilarityTarget(np.ones(5))),
        Case("similarity to a zero vector",
             lambda k: explain(k, target=targets.SimilarityTarget(np.zeros(3))),
             r"reference.*all-zero"),
        _explain_case("similarity", None, targets_are(-1, -1),
                      target=targets.SimilarityTarget(np.ones(3))),
        _explain_case("target float array", r"target=.*float", target=np.array([0.0, 1.0])),
        _explain_case("target numpy int", None, targets_are(1, 1), target=np.int64(1)),
        _explain_case("target numpy 0-d", None, targets_are(2, 2), target=np.array(2)),
        Case("target framework 0-d", lambda k: explain(k, target=k.scalar(1)), None,
             targets_are(1, 1)),
        Case("target framework per sample", lambda k: explain(k, target=k.vector([0, 2])), None,
             targets_are(0, 2)),
        _explain_case("target tuple per sample", None, targets_are(2, 0), target=(2, 0)),
        _explain_case("target callable (N, 2)", r"returned shape \(2, 3\).*\(2,\)",
                      target=lambda y: y),
        # TensorFlow tensors have no .sum(): there the callable itself fails
        _explain_case("target callable scalar",
                      r"returned shape \(\).*\(2,\)|target .* failed on the model's outputs",
                      target=lambda y: y[:, 0].sum()),
        _explain_case("target callable not an array", r"returned.*str",
                      target=lambda y: "score"),
        _explain_case("target callable raises", r"target.*ZeroDivisionError",
                      target=lambda y: 1 / 0),
        _explain_case("target callable works", None, targets_are(-1, -1),
                      target=lambda y: y[:, 1] - y[:, 0]),
        _explain_case("cam with a callable target", r"(target=|capability)",
                      method="cam", target=lambda y: y[:, 0]),
        _explain_case("softmax target out of range", r"index=\[?9\]? is out of range|=9 is out",
                      target=targets.SoftmaxTarget(9)),
        _explain_case("regression output out of range", r"output=7 is out of range",
                      target=targets.RegressionTarget(7)),
        _explain_case("segmentation target on a classifier", r"SegmentationTarget needs outputs",
                      target=targets.SegmentationTarget(0)),
        _explain_case("class target with one bad index", r"=99 is out of range",
                      target=targets.ClassTarget([0, 99])),
        Case("dict outputs without logits", lambda k: explain(k, model=k.dict_outputs("probs")),
             r"dict.*target="),
        Case("dict outputs with logits", lambda k: explain(k, model=k.dict_outputs("logits")),
             None, lambda result, k: result.targets.min() >= 0),
        Case("dict outputs with a callable",
             lambda k: explain(k, model=k.dict_outputs("probs"), target=lambda y: y["probs"][:, 2]),
             None, targets_are(-1, -1)),
        # -- the pipeline's options ---------------------------------------------------------
        _explain_case("relu a string", r"relu='no'.*(True|bool)", relu="no"),
        _explain_case("relu an int", r"relu=1\b", relu=1),
        _explain_case("normalize unknown", r"normalize='l2'", normalize="l2"),
        _explain_case("normalize None", r"normalize=None", normalize=None),
        _explain_case("size zero", r"size=\(0, 3\)", size=(0, 3)),
        _explain_case("size numpy ints", None, shape_is(2, 5, 6), size=(np.int64(5), np.int64(6))),
        _explain_case("size a list", None, shape_is(2, 4, 5), size=[4, 5]),
        _explain_case("size floats", r"size=\(8\.5, 8\)", size=(8.5, 8)),
        _explain_case("size a word", r"size='big'", size="big"),
        _explain_case("size one number", r"size=\(8,\)", size=(8,)),
        _explain_case("size bools", r"size=\(True, True\)", size=(True, True)),
        _explain_case("fusion unknown", r"fusion='sum'", fusion="sum"),
        _explain_case("layout unknown", r"layout='nchw' is not valid", layout="nchw"),
        _explain_case("image with one input", r"image=1 needs several inputs", image=1),
        _explain_case("forward_kwargs not a dict", r"forward_kwargs=\[1\] is not valid",
                      forward_kwargs=[1]),
        _explain_case("grid zero", r"grid=\(0, 0\)", grid=(0, 0)),
        _explain_case("grid one number", r"grid=\(2,\)", grid=(2,)),
        _explain_case("grid a word", r"grid='auto'", grid="auto"),
        _explain_case("prefix tokens negative", r"prefix_tokens=-5", prefix_tokens=-5),
        _explain_case("prefix tokens float", r"prefix_tokens=1\.5", prefix_tokens=1.5),
        _explain_case("variant unknown", r"variant='x'", method="gradcam++", variant="x"),
        _explain_case("classifier unknown",
                      r"classifier='nope'|capability 'classifier_weights'",
                      method="cam", classifier="nope"),
        # -- the perturbation family's options ----------------------------------------------
        _explain_case("batch_size zero", r"batch_size=0\b.*positive integer",
                      method="scorecam", batch_size=0),
        _explain_case("batch_size a string", r"batch_size='4'.*positive integer",
                      method="scorecam", batch_size="4"),
        _explain_case("batch_size a float", r"batch_size=2\.0.*positive integer",
                      method="ablationcam", batch_size=2.0),
        _explain_case("batch_size True", r"batch_size=True.*positive integer",
                      method="scorecam", batch_size=True),
        _explain_case("samples zero", r"samples=0\b", method="sscam", samples=0),
        _explain_case("noise a string", r"noise='0\.1'", method="sscam", noise="0.1"),
        _explain_case("noise negative", r"noise=-1\b", method="smoothgradcam++", noise=-1),
        _explain_case("noise NaN", r"noise=nan", method="smoothgradcam++", noise=math.nan),
        _explain_case("seed a string", r"seed='x'", method="sscam", seed="x"),
        _explain_case("seed negative", r"seed=-1\b", method="smoothgradcam++", seed=-1),
        _explain_case("channels zero", r"channels=0\b", method="fasterscorecam", channels=0),
        _explain_case("weighting unknown", r"weighting='x'", method="scorecam", weighting="x"),
        _explain_case("precision unknown", r"precision='fp8'", method="scorecam",
                      precision="fp8"),
        _explain_case("progress a string", r"progress='yes'", method="scorecam",
                      progress="yes"),
        # -- inputs -------------------------------------------------------------------------
        _explain_case("inputs None", r"inputs (must|are).*None", inputs=None),
        _explain_case("inputs a string", r"inputs (must|are).*str", inputs="cat.jpg"),
        Case("inputs a nested list", lambda k: explain(k, inputs=np.asarray(k.inputs).tolist()),
             r"inputs (must|are|is).*list"),
        Case("inputs one image", lambda k: explain(k, inputs=k.inputs[0]), r"inputs\[None\]"),
        Case("inputs 6-d", lambda k: explain(k, inputs=k.inputs[None, None]), r"inputs have shape"),
        Case("inputs integers",
             lambda k: explain(k, inputs=framework_array(k, np.asarray(k.inputs).astype(np.int32))),
             r"floating-point"),
        Case("inputs booleans",
             lambda k: explain(k, inputs=framework_array(k, np.asarray(k.inputs) > 0)),
             r"floating-point"),
        Case("inputs complex",
             lambda k: explain(k, inputs=np.asarray(k.inputs).astype(np.complex64)),
             r"(floating-point|complex)"),
        Case("inputs empty batch", lambda k: explain(k, inputs=k.inputs[:0]),
             r"inputs.*(no samples|empty|shape \(0,)"),
        Case("inputs float64 numpy",
             lambda k: explain(k, inputs=np.asarray(k.inputs).astype(np.float64)),
             None, finite_maps),
        Case("inputs strided numpy",
             lambda k: explain(k, inputs=np.repeat(np.asarray(k.inputs), 2, axis=0)[::2]),
             None, finite_maps),
        Case("inputs one sample", lambda k: explain(k, inputs=k.inputs[:1]), None,
             lambda result, k: result.cams.shape == (1, SIZE, SIZE)),
        Case("inputs wrong channel count",
             lambda k: explain(k, inputs=k.inputs[..., :2] if k.channels_last
                               else k.inputs[:, :2]),
             r"failed on inputs of shape"),
        Case("inputs in the other layout", lambda k: explain(k, inputs=k.wrong_layout),
             r"failed on inputs of shape.*(channels|layout)"),
        Case("inputs with NaN", lambda k: explain(k, inputs=with_value(k, math.nan)),
             r"(NaN|finite).*sample.*\b1\b"),
        Case("inputs with inf", lambda k: explain(k, inputs=with_value(k, math.inf)),
             r"(NaN|inf|finite).*sample.*\b1\b"),
        Case("inputs with NaN, Score-CAM",
             lambda k: explain(k, inputs=with_value(k, math.nan, 0), method="scorecam"),
             r"(NaN|finite).*sample.*\b0\b"),
        # -- the model's own faults ---------------------------------------------------------
        Case("model raises RuntimeError",
             lambda k: explain(k, model=k.faulty(RuntimeError("broken on purpose"))),
             r"failed.*RuntimeError: .*broken on purpose"),
        Case("model raises KeyError",
             lambda k: explain(k, model=k.faulty(KeyError("weights"))),
             r"failed.*KeyError"),
        Case("model raises in a masked pass",
             lambda k: explain(k, model=k.faulty(IndexError("bad index")), method="scorecam"),
             r"failed.*IndexError: .*bad index"),
        # -- metrics ------------------------------------------------------------------------
        Case("deletion steps zero", _metric("deletion", steps=0), r"steps=0\b"),
        Case("deletion of a top-k target", _metric("deletion", target=targets.TopK(2)),
             r"one map per sample.*2 scores per sample.*cams\[:, k\]"),
        Case("deletion of an explanation with 2 maps per sample",
             lambda k: metrics.deletion(k.model, k.inputs, explain(k, target=targets.TopK(2))),
             r"2 maps per sample.*cams\[:, k\]"),
        Case("deletion batch_size zero", _metric("deletion", batch_size=0), r"batch_size=0\b"),
        Case("deletion baseline unknown", _metric("deletion", baseline="mean"),
             r"baseline='mean'"),
        Case("deletion baseline wrong shape",
             _metric("deletion", baseline=np.zeros((3, 5, 5), np.float32)),
             r"baseline has shape \(3, 5, 5\)"),
        Case("deletion maps wrong shape", _metric("deletion", cams=np.zeros((2, 4, 4))),
             r"cams have shape \(2, 4, 4\)"),
        Case("deletion maps with NaN", _metric("deletion", cams=MAPS * np.nan),
             r"cams.*(NaN|finite)"),
        Case("deletion precision unknown", _metric("deletion", precision="fp8"),
             r"precision='fp8'"),
        Case("deletion score unknown", _metric("deletion", score="logit"), r"score='logit'"),
        Case("deletion target True", _metric("deletion", target=True), r"target=True"),
        Case("deletion works", _metric("deletion", steps=4), None,
             lambda result, k: result.scores.shape == (2, 5)),
        Case("insertion blur negative", _metric("insertion", blur_sigma=-1),
             r"blur_sigma=-1\b"),
        Case("road percentages out of range", _metric("road", percentages=(50, 100)),
             r"percentages=\(50, 100\).*between 0 and 100"),
        Case("road order unknown", _metric("road", order="most-first"), r"order='most-first'"),
        Case("road works", _metric("road", percentages=(25, 75), seed=0), None,
             lambda result, k: result.scores.shape == (2, 2)
             and bool(np.isfinite(result.scores).all())),
        Case("layer sweep metric unknown",
             lambda k: metrics.layer_sweep(k.model, k.inputs, [k.layer], metric="ssim"),
             r"metric='ssim'.*'deletion'"),
        Case("layer sweep option unknown",
             lambda k: metrics.layer_sweep(k.model, k.inputs, [k.layer], step=4),
             r"'step'.*neither.*'steps'"),
        Case("layer sweep works",
             lambda k: metrics.layer_sweep(k.model, k.inputs, [k.layer], steps=4), None,
             lambda result, k: result.layers == (k.layer,) and result.values.shape == (1, 2)),
        Case("confidence batch_size zero", _metric("confidence_change", batch_size=0),
             r"batch_size=0\b"),
        Case("pointing tolerance negative",
             _metric("pointing_game", regions=[(0, 0, 2, 2)] * 2, tolerance=-1),
             r"tolerance=-1\b"),
        Case("pointing box outside", _metric("pointing_game", regions=[(20, 20, 30, 30)] * 2),
             r"regions\[0\].*outside"),
        Case("pointing box reversed", _metric("pointing_game", regions=[(5, 0, 2, 2)] * 2),
             r"regions\[0\].*x0.*x1"),
        Case("pointing mask wrong size",
             _metric("pointing_game", regions=np.ones((2, 12, 12), bool)),
             r"regions\[0\] has shape \(12, 12\)"),
        Case("pointing wrong count", _metric("pointing_game", regions=[(0, 0, 2, 2)]),
             r"regions hold 1 items? for 2 maps"),
        Case("energy pointing box outside",
             _metric("energy_pointing_game", regions=[(-9, -9, -1, -1)] * 2),
             r"regions\[0\].*outside"),
        Case("pointing works", _metric("pointing_game", regions=[(6, 6, 8, 8)] * 2), None,
             lambda result, k: result.hits.tolist() == [True, True]),
        Case("quantus size zero", _metric("quantus_attributions", size=(0, 0)),
             r"size=\(0, 0\)"),
        # -- pictures -----------------------------------------------------------------------
        Case("overlay empty map", lambda k: camkit.overlay(PHOTO, np.zeros((0, 0))),
             r"cam has shape \(0, 0\)"),
        Case("overlay empty image", lambda k: camkit.overlay(np.zeros((0, 0, 3)), MAPS[0]),
             r"image has shape \(0, 0, 3\)"),
        Case("overlay alpha a string", lambda k: camkit.overlay(PHOTO, MAPS[0], alpha="0.5"),
             r"alpha='0\.5'"),
        Case("overlay alpha too large", lambda k: camkit.overlay(PHOTO, MAPS[0], alpha=2),
             r"alpha=2\b"),
        Case("overlay colormap unknown",
             lambda k: camkit.overlay(PHOTO, MAPS[0], colormap="rainbows"),
             r"colormap='rainbows'"),
        Case("overlay map with NaN", lambda k: camkit.overlay(PHOTO, MAPS[0] * np.nan),
             r"cam.*(NaN|finite)"),
        Case("overlay float image out of range", lambda k: camkit.overlay(PHOTO + 10.0, MAPS[0]),
             r"image is float64 with values"),
        Case("overlay works", lambda k: camkit.overlay(PHOTO, MAPS[0]), None,
             lambda result, k: result.shape == (SIZE, SIZE, 3)),
        Case("grid columns zero", lambda k: camkit.image_grid([PHOTO], columns=0),
             r"columns=0\b"),
        Case("grid columns a string", lambda k: camkit.image_grid([PHOTO], columns="2"),
             r"columns='2'"),
        Case("grid padding negative", lambda k: camkit.image_grid([PHOTO], padding=-1),
             r"padding=-1\b"),
        Case("grid no images", lambda k: camkit.image_grid([]), r"images is empty"),
        # -- the method object --------------------------------------------------------------
        Case("closed method", _closed_method, r"closed"),
        Case("method reused on another size", _reused_on_another_size, None,
             lambda result, k: result.cams.shape == (1, 6, 6),
             applies=lambda k: k.name not in FIXED_SIZE),
    ]
    # fmt: on
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases


def _closed_method(k: Kind) -> Any:
    method = camkit.GradCAM(k.model, k.layer)
    method.close()
    return method(k.inputs)


def _reused_on_another_size(k: Kind) -> Any:
    with camkit.GradCAM(k.model, k.layer) as method:
        method(k.inputs)
        smaller = k.inputs[:1, :, 1:7, 1:7] if not k.channels_last else k.inputs[:1, 1:7, 1:7]
        return method(smaller)


CASES = _cases()


@dataclass(frozen=True)
class Outcome:
    category: str  # clear, works, vague, raw, silent
    changed: bool  # the model was left changed
    detail: str


def run(case: Case, k: Kind) -> Outcome:
    """Run one case on one kind and classify what happened."""
    before = k.snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = case.run(k)
        except camkit.CamkitError as error:
            message = f"{type(error).__name__}: {error}"
            if case.match is None:
                category = "vague"  # a valid input refused
            elif re.search(case.match, str(error), re.DOTALL):
                category = "clear"
            else:
                category = "vague"
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            category = "raw"
        else:
            if case.match is not None:
                category, message = "silent", f"returned {type(result).__name__}"
            else:
                try:
                    good = bool(case.check(result, k)) if case.check else True
                except Exception as error:
                    good, message = False, f"check failed: {error!r}"
                else:
                    message = "" if good else f"wrong result: {result!r}"
                category = "works" if good else "silent"
    changed = not same_snapshot(before, k.snapshot())
    return Outcome(category, changed, message[:300])


CATEGORIES = ("clear", "works", "vague", "raw", "silent")


def table(kind_names: list[str]) -> str:
    """Counts per kind of every outcome, and the cases that were not clear or working."""
    lines = [f"{'kind':<18}" + "".join(f"{c:>8}" for c in CATEGORIES) + f"{'changed':>9}"]
    problems = []
    for name in kind_names:
        k = kind(name)
        counts: Counter[str] = Counter()
        changed = 0
        for case in CASES:
            if not case.applies(k):
                continue
            outcome = run(case, k)
            counts[outcome.category] += 1
            changed += outcome.changed
            if outcome.category not in ("clear", "works") or outcome.changed:
                flag = "CHANGED " if outcome.changed else ""
                problems.append(
                    f"{name:<18} {case.id:<36} {outcome.category:<7} {flag}{outcome.detail}"
                )
        columns = "".join(f"{counts[c]:>8}" for c in CATEGORIES)
        lines.append(f"{name:<18}{columns}{changed:>9}")
    return "\n".join([*lines, "", *problems])


if __name__ == "__main__":
    from model_kinds import KIND_NAMES

    print(f"{len(CASES)} cases")
    print(table(sys.argv[1:] or KIND_NAMES))
