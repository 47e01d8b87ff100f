"""No method waits on the device before its final maps.

On a GPU, every read of a device value on the host (``.item()``, ``.cpu()``, ``.numpy()``, a
tensor's truth value, an op whose output shape depends on values) stalls the host until the
device has caught up, so the next batch cannot be queued behind the current one. camkit reads
the device once, in its final step (:class:`camkit._output.Output`), and nowhere before. These
tests prove it without a GPU: on PyTorch a dispatch mode and a function mode record every such
read during ``explain``, for every method; on JAX, ``jax.transfer_guard`` forbids transfers
around the pipeline, and several host devices (a subprocess with
``--xla_force_host_platform_device_count``) show that arrays stay on the model's device. Keras
on PyTorch and JAX is checked by tests/keras_kind_maps.py, in the process per backend that
tests/test_keras_backends.py runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import camkit
from camkit import _output

METHODS = sorted(camkit.methods())
#: Methods that take no layer.
NO_LAYER = {"guided-backprop"}
#: The methods whose whole pipeline is one compiled function on JAX (jax.transfer_guard
#: "disallow" holds for them both ways); the rest run eagerly, where JAX moves Python scalars
#: (slice bounds, constants) to the device implicitly: host-to-device, never a read back.
COMPILED_ON_JAX = {
    "gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise", "layercam",
    "eigencam", "eigengradcam",
}  # fmt: skip


@contextmanager
def final_step_marked() -> Iterator[list[bool]]:
    """``[True]`` while camkit's final step (the one allowed to read the device) runs."""
    inside = [False]
    finish = _output.Output.finish

    def marked(self: _output.Output, *args: Any, **kwargs: Any) -> Any:
        inside[0] = True
        try:
            return finish(self, *args, **kwargs)
        finally:
            inside[0] = False

    _output.Output.finish = marked  # type: ignore[method-assign]
    try:
        yield inside
    finally:
        _output.Output.finish = finish  # type: ignore[method-assign]


# -- PyTorch ------------------------------------------------------------------------------------

#: aten operators that read a value on the host, or whose output's shape depends on values
#: (the host must wait for them to size the result).
HOST_READS = {
    "_local_scalar_dense", "item", "is_nonzero", "equal", "allclose", "nonzero", "masked_select",
    "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim",
}  # fmt: skip
#: Tensor methods that copy to the host or read a value there.
HOST_METHODS = {
    "item", "cpu", "numpy", "tolist", "__bool__", "__float__", "__int__", "__index__",
    "__array__",
}  # fmt: skip


def torch_recorder(log: list[str], inside: list[bool]) -> Any:
    """A dispatch mode and a function mode, entered together, that append to ``log`` every
    host read made outside the final step, with the stack that made it."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    def record(what: str) -> None:
        if not inside[0]:
            log.append(what + "\n" + "".join(traceback.format_stack(limit=12)[:-2]))

    class Reads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func.overloadpacket.__name__ in HOST_READS:
                record(f"aten.{func.overloadpacket.__name__}")
            elif func.overloadpacket.__name__ == "index" and any(
                getattr(i, "dtype", None) == torch.bool for i in args[1]
            ):
                record("aten.index with a boolean mask")
            elif func.overloadpacket.__name__ == "_to_copy" and str(
                (kwargs or {}).get("device", "")
            ).startswith("cpu"):
                record("aten._to_copy(device=cpu)")
            return func(*args, **(kwargs or {}))

    class Copies(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            name = getattr(func, "__name__", "")
            if name in HOST_METHODS:
                record(f"Tensor.{name}")
            elif name == "to" and "cpu" in (*args[1:], *(kwargs or {}).values()):
                # only a literal "cpu": on this CPU-only machine a move to another tensor's
                # device (``.to(grad.device)``) cannot be told from a move to the host
                record("Tensor.to('cpu')")
            return func(*args, **(kwargs or {}))

    @contextmanager
    def both() -> Iterator[None]:
        with Copies(), Reads():
            yield

    return both()


@pytest.fixture(scope="module")
def torch_model() -> tuple[Any, Any]:
    torch = pytest.importorskip("torch")
    from test_torch import SmallCNN

    torch.manual_seed(0)
    return SmallCNN().eval(), torch.randn(2, 3, 16, 16)


def _torch_options(method: str) -> dict[str, Any]:
    options: dict[str, Any] = {} if method in NO_LAYER else {"layer": "relu2"}
    if method in ("fullgrad",):
        options = {}
    if method in ("smoothgradcam++", "sscam", "iscam"):
        options["samples"] = 2
    return options


@pytest.mark.parametrize("method", METHODS)
def test_no_torch_method_reads_the_device_before_its_final_maps(
    torch_model: tuple[Any, Any], method: str
) -> None:
    model, x = torch_model
    log: list[str] = []
    with final_step_marked() as inside, torch_recorder(log, inside):
        explanation = camkit.explain(model, x, method=method, **_torch_options(method))
    assert explanation.cams.shape == (2, 16, 16)
    assert not log, f"{method} read the device before its final maps:\n" + "\n".join(log[:3])


def test_the_recorder_sees_each_kind_of_host_read(torch_model: tuple[Any, Any]) -> None:
    """The recorder catches what it must (else the test above proves nothing)."""
    import torch

    _, x = torch_model
    reads = [
        lambda: x.sum().item(), lambda: x.cpu(), lambda: x.numpy(), lambda: x[0, 0, 0].tolist(),
        lambda: bool(x.sum() > 0), lambda: float(x.sum()), lambda: torch.nonzero(x > 0),
        lambda: x[x > 0], lambda: x.to("cpu"), lambda: np.asarray(x),
    ]  # fmt: skip
    for read in reads:
        log: list[str] = []
        with torch_recorder(log, [False]):
            read()
        assert log, "a host read went unrecorded"


def test_on_device_with_nan_reads_nothing_at_all(torch_model: tuple[Any, Any]) -> None:
    """``on_device=True, nonfinite="nan"``: not even the final step reads the device."""
    model, x = torch_model
    log: list[str] = []
    for method in ("gradcam", "scorecam", "guided-gradcam"):
        with torch_recorder(log, [False]):
            explanation = camkit.explain(
                model, x, method=method, layer="relu2", on_device=True, nonfinite="nan",
                dtype="float16",
            )  # fmt: skip
        assert not log, f"{method}:\n" + "\n".join(log[:3])
        assert explanation.cams.dtype == explanation.cams.new_zeros(()).half().dtype


def test_an_automatic_layer_is_chosen_once_then_never_read_again(
    torch_model: tuple[Any, Any],
) -> None:
    """``layer=None`` measures each candidate's reach on the first call (a few scalars, once
    per method object); later calls read nothing before the final maps."""
    model, x = torch_model
    with camkit.CAM(model) as cam:
        cam(x)
        log: list[str] = []
        with final_step_marked() as inside, torch_recorder(log, inside):
            cam(x)
    assert not log, "\n".join(log[:3])


# -- JAX ----------------------------------------------------------------------------------------


def _jax_options(method: str, layer: str) -> dict[str, Any]:
    options: dict[str, Any] = {} if method in NO_LAYER | {"fullgrad"} else {"layer": layer}
    if method in ("smoothgradcam++", "sscam", "iscam"):
        options["samples"] = 2
    return options


@contextmanager
def final_step_allowed(jax: Any) -> Iterator[None]:
    """Let camkit's final step copy to the host (the one place it may)."""
    finish = _output.Output.finish

    def allowed(self: _output.Output, *args: Any, **kwargs: Any) -> Any:
        with jax.transfer_guard("allow"):
            return finish(self, *args, **kwargs)

    _output.Output.finish = allowed  # type: ignore[method-assign]
    try:
        yield
    finally:
        _output.Output.finish = finish  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def nnx_model() -> Any:
    pytest.importorskip("flax")
    import model_kinds

    return model_kinds.kind("nnx")


@pytest.mark.parametrize("method", METHODS)
def test_no_jax_method_transfers_to_the_host_before_its_final_maps(
    nnx_model: Any, method: str
) -> None:
    import jax

    x = jax.device_put(nnx_model.inputs)
    options = _jax_options(method, nnx_model.layer)
    camkit.explain(nnx_model.model, x, method=method, **options)  # compiled outside the guard
    guard = jax.transfer_guard if method in COMPILED_ON_JAX else jax.transfer_guard_device_to_host
    with final_step_allowed(jax), guard("disallow"):
        explanation = camkit.explain(nnx_model.model, x, method=method, **options)
    assert np.isfinite(explanation.cams).all()


@pytest.mark.parametrize("kind", ["linen", "equinox", "functions"])
def test_every_jax_model_kind_runs_grad_cam_without_a_transfer(kind: str) -> None:
    pytest.importorskip("flax")
    pytest.importorskip("equinox")
    import jax
    import model_kinds

    k = model_kinds.kind(kind)
    x = jax.device_put(k.inputs)
    camkit.explain(k.model, x, layer=k.layer)
    with final_step_allowed(jax), jax.transfer_guard("disallow"):
        camkit.explain(k.model, x, layer=k.layer)


SEVERAL_DEVICES = textwrap.dedent(
    """
    import dataclasses
    import jax, numpy as np
    import camkit, model_kinds

    devices = jax.devices()
    assert len(devices) == 2, devices
    k = model_kinds.kind("nnx")
    from flax import nnx
    nnx.update(k.model, jax.device_put(nnx.state(k.model), devices[1]))
    for method in ("gradcam", "scorecam", "guided-backprop", "fullgrad", "cam"):
        layer = None if method in ("guided-backprop", "fullgrad") else k.layer
        for x in (k.inputs, jax.device_put(k.inputs, devices[0])):
            e = camkit.explain(k.model, x, method=method, layer=layer, on_device=True)
            for name in ("cams", "scores", "targets"):
                where = getattr(e, name).devices()
                assert where == {devices[1]}, (method, name, where)
            reference = camkit.explain(k.model, k.inputs, method=method, layer=layer)
            np.testing.assert_allclose(np.asarray(e.cams), reference.cams, atol=1e-6)
    f = model_kinds.kind("functions")
    moved = dataclasses.replace(f.model, params=jax.device_put(f.model.params, devices[1]))
    e = camkit.explain(moved, f.inputs, layer=f.layer, on_device=True)
    assert e.cams.devices() == {devices[1]}
    print("ok")
    """
)


def test_jax_arrays_stay_on_the_models_device_among_several() -> None:
    pytest.importorskip("flax")
    pytest.importorskip("equinox")
    environment = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    done = subprocess.run(
        [sys.executable, "-c", SEVERAL_DEVICES], env=environment, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
