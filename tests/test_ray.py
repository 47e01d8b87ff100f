"""``camkit.RayEvaluator``: ``Dataset.map_batches`` on a local Ray instance writes the folder that
``camkit.evaluate`` writes, with the same numbers, and a rerun computes only what is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from test_torch import SmallCNN  # noqa: E402

import camkit  # noqa: E402

# Ray Data's own DataContext warns about its deprecated settings as it starts
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")

STEPS = 5
ARGUMENTS = {
    "methods": ("gradcam", "xgradcam"), "metrics": ("deletion", "insertion"), "target": "label",
    "metric_options": {"deletion": {"steps": STEPS}, "insertion": {"steps": STEPS}},
}  # fmt: skip
#: float16 keeps 11 significant bits; a map computed in another batch may differ by a float32
#: rounding, which can flip one float16 rounding: one step, 2**-11, in [0, 1]
HALF_STEP = 2.0**-11


def small_cnn():
    """The model factory each actor calls (imported there as ``test_ray:small_cnn``)."""
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def local_ray():
    here = Path(__file__).parent
    path = os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
    )  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(5)
    images = rng.normal(size=(12, 3, 12, 12)).astype(np.float32)
    return images, rng.integers(0, 5, 12)


def rows(images, labels, ids):
    return [{"id": int(i), "image": images[i], "label": int(labels[i])} for i in ids]


def evaluate_on_ray(samples, out, ids, model="test_ray:small_cnn"):
    images, labels = samples
    dataset = ray.data.from_items(rows(images, labels, ids))
    returned = dataset.map_batches(
        camkit.RayEvaluator,
        fn_constructor_kwargs={"model": model, "out": str(out), **ARGUMENTS},
        batch_size=4, compute=ray.data.ActorPoolStrategy(size=2),
    ).take_all()  # fmt: skip
    return returned


def test_ray_writes_what_evaluate_writes_and_resumes(local_ray, samples, tmp_path):
    images, labels = samples
    # a first run stops after 8 samples; the rerun over all 12 computes only the last 4
    first = evaluate_on_ray(samples, tmp_path / "ray", range(8))
    assert sorted({r["sample"] for r in first}) == list(range(8))
    second = evaluate_on_ray(samples, tmp_path / "ray", range(12), model=small_cnn)
    assert sorted({r["sample"] for r in second}) == [8, 9, 10, 11]
    pairs = [(images[i : i + 4], labels[i : i + 4]) for i in range(0, 12, 4)]
    local = camkit.evaluate(small_cnn(), pairs, out=tmp_path / "local", **ARGUMENTS)
    on_ray = camkit.read_evaluation(tmp_path / "ray")
    assert on_ray.samples == 12
    expected, table = local.table(), on_ray.table()
    assert table["sample"].tolist() == expected["sample"].tolist() == 2 * list(range(12))
    assert table["method"].tolist() == expected["method"].tolist()
    for name in ("target", "label"):
        np.testing.assert_array_equal(table[name], expected[name])
    for name in ("score", "deletion_auc", "insertion_auc"):
        np.testing.assert_allclose(table[name], expected[name], rtol=1e-5, atol=1e-6)
    for method in ARGUMENTS["methods"]:
        np.testing.assert_allclose(on_ray.maps(method), local.maps(method), atol=HALF_STEP)
    # what map_batches returns are the table's rows
    returned = sorted(first + second, key=lambda row: (row["method"] != "gradcam", row["sample"]))
    assert [r["sample"] for r in returned] == table["sample"].tolist()
    np.testing.assert_allclose([r["deletion_auc"] for r in returned], table["deletion_auc"])


def test_a_batch_without_the_id_column_is_refused(samples, tmp_path):
    evaluator = camkit.RayEvaluator(small_cnn, out=tmp_path / "out", **ARGUMENTS)
    images, labels = samples
    with pytest.raises(camkit.InputError, match=r"no column 'id'.*id_column="):
        evaluator({"image": images[:2], "label": labels[:2]})
    with pytest.raises(camkit.InputError, match=r"column 'id' has shape \(2,\) and dtype float"):
        evaluator({"image": images[:2], "label": labels[:2], "id": np.zeros(2)})
    with pytest.raises(camkit.InputError, match=r"model=3 is not valid"):
        camkit.RayEvaluator(3, out=tmp_path / "other")


def test_importing_camkit_imports_neither_ray_nor_pyarrow():
    code = (
        "import json, sys, camkit\n"
        "print(json.dumps([m for m in ('ray', 'pyarrow', 'pandas') if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []
