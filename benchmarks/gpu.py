"""camkit on one GPU, next to torchcam, pytorch-grad-cam and plain forward passes.

Five tables, each timed side by side (``_timing.side_by_side``: medians, contenders interleaved;
the device is drained before and after every timed call, ``torch.cuda.synchronize`` and JAX's
``block_until_ready``), then the targets of the issue, met or not:

1. Grad-CAM on ResNet-50 (``layer4``), 224 px, batches 32 and 128: forward passes, camkit with
   maps on the device, as numpy float32 and as numpy uint8, torchcam, pytorch-grad-cam; each
   as a ratio to the faster plain forward at its batch.
2. Score-CAM on one image (``layer4``'s 2048 channels, masked images in batches of 256, torchcam's
   channel-softmax weighting, maps at the layer's size as torchcam's), float32 and bfloat16,
   next to torchcam and to the forward passes of the masked images alone.
3. Grad-CAM on a ViT-B/16-style transformer (the last block's ``norm1``), batch 32.
4. Deletion and insertion (50 steps, 128 images a pass) of 32 ResNet-50 maps: images per second.
5. Grad-CAM on the ResNet-18-style Flax NNX model of ``gradcam_flax_cpu.py``, jitted, batch 32.

The PyTorch models are ``_gpu_models``' (torchvision's ResNet-50 architecture, no torchvision
needed), randomly initialized with a fixed seed: weights do not change the cost. A peer or
framework that is absent gives a "not installed" row; a camkit without the ``on_device`` and
``dtype`` options gives "needs ... (not in this camkit)" rows. ``--small`` shrinks every model,
image and batch for a smoke test (``--cpu --small`` runs in a minute or two on two cores).
Run: ``python benchmarks/gpu.py [--channels-last]`` (under 5 minutes on an H100), or
``python benchmarks/gpu.py --cpu --small``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from _gpu_models import ResNet, resnet50, vision_transformer
from _timing import side_by_side

import camkit
from camkit import metrics

Run = Callable[[], object]
#: A table's rows: a contender to time, or why it is not run.
Rows = dict[str, Run | str]
#: Measured rows: median seconds, or why there is none.
Medians = dict[str, float | str]

FORWARDS = ("forward (inference_mode)", "forward (no_grad)")
ON_DEVICE = "camkit Grad-CAM, maps on device"
TORCHCAM_GRADCAM = "torchcam GradCAM"
PYTORCH_GRAD_CAM = "pytorch-grad-cam GradCAM (numpy maps)"
SCORECAM = {"float32": "camkit Score-CAM float32", "bfloat16": "camkit Score-CAM bfloat16"}
TORCHCAM_SCORECAM = "torchcam ScoreCAM float32"
NOT_INSTALLED = "not installed"


@dataclass(frozen=True)
class Sizes:
    """Every size the run depends on; ``FULL`` is the issue's setting."""

    image: int
    batches: tuple[int, int]
    resnet_blocks: tuple[int, int, int, int]
    resnet_width: int
    vit_batch: int
    flax_batch: int
    scorecam_batch: int
    metric_images: int
    metric_steps: int
    metric_batch: int
    rounds: int
    few_rounds: int  # for the long calls: Score-CAM, the metrics

    @property
    def small(self) -> bool:
        return self != FULL


FULL = Sizes(224, (32, 128), (3, 4, 6, 3), 64, 32, 32, 256, 32, 50, 128, 15, 5)
SMALL = Sizes(64, (4, 8), (1, 1, 1, 1), 8, 4, 4, 64, 4, 10, 16, 3, 2)


def drained(run: Run, device: torch.device) -> Run:
    """``run``, with the GPU's queue emptied before and after, so its time is its own work."""
    if device.type != "cuda":
        return run

    def call() -> object:
        torch.cuda.synchronize(device)
        result = run()
        torch.cuda.synchronize(device)
        return result

    return call


def measure(
    rows: Rows, rounds: int, device: torch.device | None = None, warmup: int = 2
) -> Medians:
    """The median seconds of each runnable row, side by side (each ``drained`` on a torch
    ``device``); the other rows keep their reason."""
    runs = {
        name: row if device is None else drained(row, device)
        for name, row in rows.items()
        if not isinstance(row, str)
    }
    medians = side_by_side(runs, rounds, warmup) if runs else {}
    return {name: medians[name] if name in medians else str(row) for name, row in rows.items()}


def fastest(medians: Medians, names: tuple[str, ...]) -> float:
    """The smallest median among ``names`` (the baseline: the stricter bound)."""
    return min(value for name in names if isinstance(value := medians[name], float))


def print_table(title: str, columns: Mapping[str, Medians], baseline: tuple[str, ...]) -> None:
    """One line per row: per column the median and the ratio to the fastest ``baseline`` row."""
    print(f"\n{title}")
    print(f"{'':<46}" + "".join(f"{label:>23}" for label in columns))
    for name in next(iter(columns.values())):
        cells = [column[name] for column in columns.values()]
        if all(isinstance(cell, str) for cell in cells):
            print(f"{name:<46} {cells[0]}")
            continue
        line = f"{name:<46}"
        for column, cell in zip(columns.values(), cells, strict=True):
            if isinstance(cell, str):
                line += f"{cell:>23}"
            else:
                line += f"{cell * 1e3:12.1f} ms {cell / fastest(column, baseline):6.2f}x"
        print(line)


def camkit_method(
    stack: contextlib.ExitStack, cls: type[camkit.CamMethod], *args: Any, **options: Any
) -> camkit.CamMethod:
    """``cls(*args, **options)``, closed with ``stack``."""
    return stack.enter_context(cls(*args, **options))


def explaining(method: camkit.CamMethod, x: object) -> Run:
    return lambda: method(x)


def forward(model: torch.nn.Module, x: torch.Tensor, mode: Callable[[], Any]) -> Run:
    def run() -> object:
        with mode():
            return model(x)

    return run


def forward_images(
    model: torch.nn.Module, batch: torch.Tensor, count: int, precision: str = "float32"
) -> Run:
    """Forward passes of ``count`` images in batches the size of ``batch`` (the last one
    partial), without autograd, in ``precision`` (autocast for bfloat16): the model's share of
    a method that scores ``count`` perturbed images."""
    sizes = [len(batch)] * (count // len(batch)) + [count % len(batch)] * bool(count % len(batch))

    def run() -> object:
        autocast = (
            torch.autocast(batch.device.type, dtype=torch.bfloat16)
            if precision == "bfloat16"
            else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast:
            return [model(batch[:size]) for size in sizes]

    return run


def torchcam_methods() -> ModuleType | None:
    try:
        import torchcam.methods
    except ImportError:
        return None
    return torchcam.methods


def torchcam_call(extractor: Any, model: torch.nn.Module, x: torch.Tensor) -> object:
    """torchcam's maps of each sample's top class; the extractor's hooks removed after."""
    try:
        scores = model(x)
        return extractor(class_idx=scores.argmax(1).tolist(), scores=scores)
    finally:
        extractor.remove_hooks()


def pytorch_grad_cam() -> ModuleType | None:
    """The package, imported as the tests import it (with placeholders for a torchvision that
    does not load beside this torch), or ``None`` where it is absent."""
    sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        import pytest
        from pytorch_grad_cam_peer import load
    except ImportError:  # no pytest: a plain import, which needs a working torchvision
        try:
            import pytorch_grad_cam
        except Exception:  # absent, or torchvision fails to load
            return None
        return pytorch_grad_cam
    try:
        return load()
    except pytest.skip.Exception:
        return None


def gradcam_rows(
    stack: contextlib.ExitStack, model: ResNet, x: torch.Tensor, peers: dict[str, Any]
) -> Rows:
    """Table 1 at one batch. The peers' hooks are set and removed within each call: left on,
    pytorch-grad-cam's would copy ``layer4`` to the host on every other contender's forward."""
    torchcam, grad_cam = peers["torchcam"], peers["pytorch-grad-cam"]

    def torchcam_gradcam() -> object:
        return torchcam_call(torchcam.GradCAM(model, target_layer="layer4"), model, x)

    def pytorch_grad_cam_gradcam() -> object:
        with grad_cam.GradCAM(model, target_layers=[model.layer4]) as method:
            return method(input_tensor=x, targets=None)  # None: each sample's top class

    return {
        FORWARDS[0]: forward(model, x, torch.inference_mode),
        FORWARDS[1]: forward(model, x, torch.no_grad),
        ON_DEVICE: explaining(
            camkit_method(stack, camkit.GradCAM, model, "layer4", on_device=True), x
        ),
        "camkit Grad-CAM, numpy float32 maps": explaining(
            camkit_method(stack, camkit.GradCAM, model, "layer4"), x
        ),
        "camkit Grad-CAM, numpy uint8 maps": explaining(
            camkit_method(stack, camkit.GradCAM, model, "layer4", dtype="uint8"), x
        ),
        TORCHCAM_GRADCAM: NOT_INSTALLED if torchcam is None else torchcam_gradcam,
        PYTORCH_GRAD_CAM: NOT_INSTALLED if grad_cam is None else pytorch_grad_cam_gradcam,
    }


def scorecam_rows(
    stack: contextlib.ExitStack,
    model: ResNet,
    image: torch.Tensor,
    masked: torch.Tensor,
    peers: dict[str, Any],
) -> Rows:
    """Table 2: every Score-CAM here computes the same maps (torchcam's weighting and size);
    ``masked`` is a batch the size of the masked batches, for the forward passes alone."""
    channels, batch_size = model.fc.in_features, len(masked)
    options = {"batch_size": batch_size, "weighting": "channel-softmax", "size": "layer"}
    torchcam = peers["torchcam"]

    def torchcam_scorecam() -> object:
        extractor = torchcam.ScoreCAM(model, target_layer="layer4", batch_size=batch_size)
        return torchcam_call(extractor, model, image)

    rows: Rows = {}
    for precision, name in SCORECAM.items():
        rows[f"forward of {channels} masked images, {precision}"] = forward_images(
            model, masked, channels, precision
        )
        method = camkit_method(stack, camkit.ScoreCAM, model, "layer4", precision=precision,
                               **options)  # fmt: skip
        rows[name] = explaining(method, image)
    rows[TORCHCAM_SCORECAM] = NOT_INSTALLED if torchcam is None else torchcam_scorecam
    return rows


def vit_rows(
    stack: contextlib.ExitStack, model: torch.nn.Module, layer: str, x: torch.Tensor
) -> Rows:
    return {
        FORWARDS[0]: forward(model, x, torch.inference_mode),
        FORWARDS[1]: forward(model, x, torch.no_grad),
        ON_DEVICE: explaining(
            camkit_method(stack, camkit.GradCAM, model, layer, on_device=True), x
        ),
        "camkit Grad-CAM, numpy float32 maps": explaining(
            camkit_method(stack, camkit.GradCAM, model, layer), x
        ),
    }


def metric_rows(model: ResNet, x: torch.Tensor, batch: torch.Tensor, steps: int) -> Rows:
    """Table 4: each curve scores ``N * (steps + 1)`` perturbed images, ``len(batch)`` a
    pass."""
    with camkit.GradCAM(model, "layer4") as method:
        explanation = method(x)
    count = len(x) * (steps + 1)
    options = {"steps": steps, "batch_size": len(batch)}
    return {
        f"forward of {count} images (no_grad)": forward_images(model, batch, count),
        "camkit deletion": lambda: metrics.deletion(model, x, explanation, **options),
        "camkit insertion (blurred baseline)": lambda: metrics.insertion(
            model, x, explanation, **options
        ),
    }


def flax_rows(stack: contextlib.ExitStack, sizes: Sizes, cpu: bool) -> Rows:
    """Table 5: the jitted forward pass against camkit's compiled Grad-CAM."""
    names = ("forward (jax.jit)", ON_DEVICE, "camkit Grad-CAM, numpy float32 maps")
    try:
        import jax
        import jax.numpy as jnp
        from flax import nnx
        from gradcam_flax_cpu import ResNet18
    except ImportError as error:
        return dict.fromkeys(names, f"{NOT_INSTALLED} ({error.name})")
    if not cpu and jax.default_backend() == "cpu":
        return dict.fromkeys(names, "JAX sees no GPU here (jax.default_backend() is 'cpu')")
    model = ResNet18(1000, nnx.Rngs(0))
    model.eval()
    shape = (sizes.flax_batch, sizes.image, sizes.image, 3)
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda state, images: nnx.merge(graphdef, state)(images))

    def settled(method: camkit.CamMethod) -> Run:
        return lambda: jax.block_until_ready(method(x).cams)

    return {
        names[0]: lambda: jitted(state, x).block_until_ready(),
        names[1]: settled(camkit_method(stack, camkit.GradCAM, model, on_device=True)),
        names[2]: settled(camkit_method(stack, camkit.GradCAM, model)),
    }


def as_ratio(medians: Medians, name: str) -> float | str:
    """The row's median over the faster plain forward's, or why it has none."""
    value = medians[name]
    return value if isinstance(value, str) else value / fastest(medians, FORWARDS)


def shown(value: float | str, unit: str) -> str:
    return value if isinstance(value, str) else f"{value:.3g}{unit}"


def target_line(label: str, measured: float | str, target: float, unit: str) -> str:
    """``label``, the measured value, the target and whether it is met."""
    if isinstance(measured, str):
        value, verdict = "-", f"not measured ({measured})"
    else:
        value, verdict = shown(measured, unit), "met" if measured <= target else "NOT met"
    return f"  {label:<46} {value:>10}   target <= {target}{unit}   {verdict}"


def print_targets(gradcam: Medians, scorecam: Medians, sizes: Sizes, device: str) -> None:
    """The issue's targets (an H100, before camkit existed) against this run's numbers."""
    setting = "" if not sizes.small and device.startswith("cuda") else (
        "; this run is not their setting (an H100, full size): informative only"
    )  # fmt: skip
    print(f"\ntargets (measured on an H100 before camkit existed){setting}")
    label = f"Grad-CAM, maps on device, batch {sizes.batches[1]} / forward"
    print(target_line(label, as_ratio(gradcam, ON_DEVICE), 1.03, "x"))
    print(
        "    then: torchcam 1.14x, pytorch-grad-cam 13x; now: torchcam "
        f"{shown(as_ratio(gradcam, TORCHCAM_GRADCAM), 'x')}, pytorch-grad-cam "
        f"{shown(as_ratio(gradcam, PYTORCH_GRAD_CAM), 'x')}"
    )
    for precision, target in (("float32", 0.30), ("bfloat16", 0.18)):
        label = f"Score-CAM one image, {precision}"
        print(target_line(label, scorecam[SCORECAM[precision]], target, " s"))
    print(f"    then: torchcam 0.415 s; now: torchcam {shown(scorecam[TORCHCAM_SCORECAM], ' s')}")


def versions() -> str:
    """The installed versions of camkit, the frameworks and the peers (without importing them)."""
    found = []
    for distribution in ("camkit", "torch", "jax", "jaxlib", "flax", "torchcam", "grad-cam"):
        try:
            found.append(f"{distribution} {importlib.metadata.version(distribution)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{distribution} {NOT_INSTALLED}")
    return ", ".join(found)


def print_throughput(medians: Medians, images: int) -> None:
    """Deletion and insertion together in images per second, beside the rate that their
    forward passes alone would allow (one curve's passes: the metrics table's first row)."""
    forwards, deletion, insertion = (float(value) for value in medians.values())
    print(
        f"deletion + insertion: {images / (deletion + insertion):.1f} images/s (the forward "
        f"passes alone would allow {images / (2 * forwards):.1f} images/s)"
    )


@contextlib.contextmanager
def section(name: str) -> Iterator[contextlib.ExitStack]:
    """Methods opened in a table are closed after it; the allocator's cache is freed for the
    next one (and for JAX, which shares the GPU)."""
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        yield stack
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"({name}: {time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (JAX too)")
    parser.add_argument("--small", action="store_true", help="small models and batches")
    parser.add_argument("--channels-last", action="store_true", help="NHWC ResNet and images")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.cpu:
        os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the GPU is torch's too
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: pass --cpu (with --small for a quick run)")
    sizes = SMALL if args.small else FULL
    device = torch.device("cpu" if args.cpu else "cuda")
    torch.backends.cudnn.benchmark = True
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )  # fmt: skip
    print(f"device: {name}; {versions()}")
    print(
        f"cudnn.benchmark on, channels_last {'on' if args.channels_last else 'off'}, TF32 "
        f"convolutions {torch.backends.cudnn.allow_tf32}, TF32 matmuls "
        f"{torch.backends.cuda.matmul.allow_tf32}; {'small' if sizes.small else 'full'} sizes"
    )
    peers = {"torchcam": torchcam_methods(), "pytorch-grad-cam": pytorch_grad_cam()}
    generator = torch.Generator().manual_seed(0)

    def images(count: int) -> torch.Tensor:
        x = torch.randn(count, 3, sizes.image, sizes.image, generator=generator)
        return x.to(device, memory_format=memory)

    torch.manual_seed(0)
    resnet = ResNet(sizes.resnet_blocks, sizes.resnet_width) if sizes.small else resnet50()
    resnet = resnet.eval().to(device, memory_format=memory)
    kind = f"ResNet (1-1-1-1 blocks, width {sizes.resnet_width})" if sizes.small else "ResNet-50"
    px = f"{sizes.image} px"

    with section("Grad-CAM") as stack:
        gradcam = {
            f"batch {batch}": measure(
                gradcam_rows(stack, resnet, images(batch), peers), sizes.rounds, device
            )
            for batch in sizes.batches
        }
        print_table(
            f"{kind} Grad-CAM (layer4), {px}; camkit's maps at {px} (size='input'), torchcam's "
            "at the layer's size\nratio to the faster plain forward at the same batch",
            gradcam,
            FORWARDS,
        )

    with section("Score-CAM") as stack:
        rows = scorecam_rows(stack, resnet, images(1), images(sizes.scorecam_batch), peers)
        scorecam = measure(rows, sizes.few_rounds, device, warmup=1)
        reference = (next(iter(rows)),)
        print_table(
            f"{kind} Score-CAM (layer4, {resnet.fc.in_features} channels), one {px} image\n"
            f"masked images in batches of {sizes.scorecam_batch}; ratio to their float32 forwards",
            {"one image": scorecam},
            reference,
        )

    with section("ViT") as stack:
        torch.manual_seed(0)
        vit = vision_transformer(sizes.image, sizes.small).eval().to(device)
        layer = f"blocks.{len(vit.blocks) - 1}.norm1"
        vit_kind = "ViT-B/16" if not sizes.small else (
            f"ViT ({len(vit.blocks)} blocks, dim {vit.head.in_features})"
        )  # fmt: skip
        rows = vit_rows(stack, vit, layer, images(sizes.vit_batch).contiguous())
        medians = measure(rows, sizes.rounds, device)
        print_table(
            f"{vit_kind} Grad-CAM ({layer}, tokens), {px}; ratio to the faster plain forward",
            {f"batch {sizes.vit_batch}": medians},
            FORWARDS,
        )
        del vit

    with section("metrics"):
        x = images(sizes.metric_images)
        rows = metric_rows(resnet, x, images(sizes.metric_batch), sizes.metric_steps)
        medians = measure(rows, sizes.few_rounds, device, warmup=1)
        reference = (next(iter(rows)),)
        print_table(
            f"{kind} deletion and insertion of {len(x)} Grad-CAM maps, {px}\n"
            f"{sizes.metric_steps} steps, {sizes.metric_batch} images a pass; ratio to the "
            "forward passes of the perturbed images alone",
            {f"{len(x)} images": medians},
            reference,
        )
        print_throughput(medians, len(x))

    with section("Flax NNX") as stack:
        medians = measure(flax_rows(stack, sizes, args.cpu), sizes.rounds)
        print_table(
            f"ResNet-18-style Flax NNX Grad-CAM (layer=None: the last block), {px}; ratio to "
            "the jitted forward",
            {f"batch {sizes.flax_batch}": medians},
            ("forward (jax.jit)",),
        )

    print_targets(gradcam[f"batch {sizes.batches[1]}"], scorecam, sizes, str(device))
    print(f"\ntotal wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
