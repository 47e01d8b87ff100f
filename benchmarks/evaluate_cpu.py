"""Dataset evaluation throughput on CPU: Grad-CAM + deletion + insertion on the pretrained
EfficientNet-Lite0, three ways side by side in one run.

1. a plain loop, batch by batch: ``camkit.explain`` then ``camkit.metrics.deletion`` and
   ``insertion`` (results kept in memory, nothing written);
2. ``camkit.evaluate`` over the same batches (maps as float16 and the Parquet table written to
   a temporary folder);
3. Ray Data, ``map_batches(camkit.RayEvaluator, ...)`` with ``--workers`` actors of one torch
   thread each, from a ``ray.data`` dataset of the same images; the time includes starting the
   actors, loading the model and its first call in each (``ray.init`` is timed apart). The
   in-process ways run after one untimed warm-up batch.

The images are scikit-image's eight RGB photos and their mirror images, repeated to
``--images``, 224 px. Each image costs one Grad-CAM pass and ``2 (steps + 1)`` scoring passes.
The three run interleaved, ``--rounds`` times (``_timing.side_by_side``), each run of
``evaluate`` and Ray into a new folder; the medians are reported, and the AUCs of the three
ways compared. Run: ``python benchmarks/evaluate_cpu.py [--images 32] [--steps 20]
[--batch-size 8] [--workers 2] [--rounds 1] [--threads N]``.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _timing import side_by_side

import camkit
from camkit import metrics
from camkit._demo import load_model, load_photos, to_model_inputs

PHOTOS = (
    "coffee", "astronaut", "chelsea", "rocket", "retina", "hubble_deep_field",
    "immunohistochemistry", "stereo_motorcycle",
)  # fmt: skip


def one_thread_model() -> torch.nn.Module:
    """The model factory of the Ray actors: one torch thread per actor."""
    torch.set_num_threads(1)
    return load_model()


def images(count: int) -> np.ndarray:
    """``count`` preprocessed images, float32 ``(count, 3, 224, 224)``."""
    photos = load_photos(PHOTOS)
    both = np.concatenate([photos, photos[:, :, ::-1]])
    return to_model_inputs(both[np.arange(count) % len(both)]).numpy()


def plain_loop(model: torch.nn.Module, batches: list[np.ndarray], steps: int) -> np.ndarray:
    aucs = []
    for x in batches:
        inputs = torch.from_numpy(x)
        explanation = camkit.explain(model, inputs, "gradcam")
        deletion = metrics.deletion(model, inputs, explanation, steps=steps, progress=False)
        insertion = metrics.insertion(model, inputs, explanation, steps=steps, progress=False)
        aucs.append(np.stack([deletion.auc, insertion.auc], axis=1))
    return np.concatenate(aucs)


def aucs(evaluation: camkit.Evaluation) -> np.ndarray:
    table = evaluation.table()
    return np.stack([table["deletion_auc"], table["insertion_auc"]], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (one thread each)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, help="torch threads of the loop and evaluate (default: torch's)"
    )
    args = parser.parse_args()
    import ray
    import ray.data

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model()
    data = images(args.images)
    batches = [data[i : i + args.batch_size] for i in range(0, len(data), args.batch_size)]
    options = {"deletion": {"steps": args.steps}, "insertion": {"steps": args.steps}}
    plain_loop(model, batches[:1], args.steps)  # warm-up: first-call costs are not counted
    start = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter() - start
    # one block per batch: a block goes to one actor, so one block would keep the other idle
    dataset = ray.data.from_items(
        [{"id": i, "image": image} for i, image in enumerate(data)],
        override_num_blocks=len(batches),
    )
    results: dict[str, np.ndarray] = {}
    folders = itertools.count()  # each run writes a new folder: none resumes another

    with tempfile.TemporaryDirectory() as root:

        def loop() -> None:
            results["plain loop"] = plain_loop(model, batches, args.steps)

        def evaluate() -> None:
            out = Path(root) / str(next(folders))
            camkit.evaluate(model, batches, out=out, metric_options=options, progress=False)
            results["camkit.evaluate"] = aucs(camkit.read_evaluation(out))

        def on_ray() -> None:
            out = Path(root) / str(next(folders))
            dataset.map_batches(
                camkit.RayEvaluator,
                fn_constructor_kwargs={
                    "model": one_thread_model, "out": str(out), "metric_options": options,
                },
                batch_size=args.batch_size,
                # one batch at a time per actor: batches queued on the first actor up would
                # leave the others idle
                compute=ray.data.ActorPoolStrategy(
                    size=args.workers, max_tasks_in_flight_per_actor=1
                ),
            ).materialize()  # fmt: skip
            results[ray_name] = aucs(camkit.read_evaluation(out))

        ray_name = f"Ray Data, {args.workers} actors x 1 thread"
        runs = {"plain loop": loop, "camkit.evaluate": evaluate, ray_name: on_ray}
        seconds = side_by_side(runs, args.rounds, warmup=0)
    ray.shutdown()

    print(
        f"Grad-CAM + deletion + insertion ({args.steps} steps), EfficientNet-Lite0, "
        f"{args.images} images of 224 px, batches of {args.batch_size}, CPU, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads in this process), "
        f"ray {ray.__version__} (ray.init {started:.1f} s, not counted), median of "
        f"{args.rounds} interleaved rounds"
    )
    base = seconds["plain loop"]
    for way, elapsed in seconds.items():
        print(
            f"{way:<36} {elapsed:7.1f} s  {args.images / elapsed:6.2f} images/s  "
            f"{base / elapsed:5.2f}x the plain loop"
        )
    reference = results["plain loop"]
    for way, found in results.items():
        if way != "plain loop":
            print(f"largest |AUC difference| to the plain loop, {way}: "
                  f"{np.abs(found - reference).max():.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
