"""``camkit.evaluate``: the same numbers as a plain loop of explain + metrics, whatever the batches
come from, written incrementally, resumed without recomputing, in bounded memory."""

from __future__ import annotations

import sys
import tracemalloc

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_torch import SmallCNN  # noqa: E402

import camkit  # noqa: E402
from camkit import metrics  # noqa: E402
from camkit._batch_evaluation import BatchEvaluator  # noqa: E402

STEPS = 6  # deletion and insertion steps: enough for curves, cheap on a 12x12 image
METRIC_OPTIONS = {"deletion": {"steps": STEPS}, "insertion": {"steps": STEPS}}
METHODS = ("gradcam", "gradcam++")
METRICS = ("deletion", "insertion", "confidence")
#: float16 keeps 11 significant bits: a map in [0, 1] is stored within half a step, 2**-12
HALF = 2.0**-12


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SmallCNN().eval()


def dataset(batches=4, size=4, side=12, seed=0):
    """``batches`` pairs of float32 images (size, 3, side, side) and int64 labels (size,)."""
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(size=(size, 3, side, side)).astype(np.float32), rng.integers(0, 5, size))
        for _ in range(batches)
    ]


@pytest.fixture(scope="module")
def batches():
    return dataset()


@pytest.fixture(scope="module")
def whole(model, batches, tmp_path_factory):
    """An uninterrupted run over ``batches`` (Parquet, float16 maps)."""
    return run(model, batches, tmp_path_factory.mktemp("whole") / "out")


def run(model, batches, out, **overrides):
    arguments = {
        "methods": METHODS, "metrics": METRICS, "target": "label",
        "metric_options": METRIC_OPTIONS, "progress": False, **overrides,
    }  # fmt: skip
    return camkit.evaluate(model, batches, out=out, **arguments)


def plain_loop(model, batches, methods=METHODS, target="label", measured=METRICS):
    """The table's columns and the float32 maps by explain + the metrics, batch by batch."""
    columns = {m: {} for m in methods}
    maps = {m: [] for m in methods}
    first = 0
    for x, y in batches:
        chosen = y.tolist() if target == "label" else target
        for method in methods:
            explanation = camkit.explain(model, x, method=method, target=chosen)
            values = {
                "sample": np.arange(first, first + len(y)),
                "target": explanation.targets,
                "score": explanation.scores,
                "label": np.asarray(y),
            }
            if "deletion" in measured:
                curves = metrics.deletion(model, x, explanation, chosen, steps=STEPS)
                values["deletion_auc"] = curves.auc
            if "insertion" in measured:
                curves = metrics.insertion(model, x, explanation, chosen, steps=STEPS)
                values["insertion_auc"] = curves.auc
            if "confidence" in measured:
                change = metrics.confidence_change(model, x, explanation, chosen)
                values["average_drop"] = 100 * change.drop
                values["increase_in_confidence"] = 100.0 * change.increased
            for name, value in values.items():
                columns[method].setdefault(name, []).append(np.asarray(value))
            maps[method].append(explanation.cams)
        first += len(y)
    merged = {
        name: np.concatenate([np.concatenate(columns[m][name]) for m in methods])
        for name in columns[methods[0]]
    }
    return merged, {m: np.concatenate(maps[m]) for m in methods}


def assert_same_results(a, b, skip=()):
    table_a, table_b = a.table(), b.table()
    assert table_a.keys() == table_b.keys()
    for name in table_a:
        if name not in skip:
            np.testing.assert_array_equal(table_a[name], table_b[name], err_msg=name)
    for method in a.methods:
        np.testing.assert_array_equal(a.maps(method), b.maps(method), err_msg=method)


def test_the_table_and_maps_are_those_of_a_plain_loop(model, batches, whole):
    expected, expected_maps = plain_loop(model, batches)
    table = whole.table()
    assert whole.samples == 16 and whole.batches_computed == 4
    assert table["method"].tolist() == ["gradcam"] * 16 + ["gradcam++"] * 16
    assert table["batch"].tolist() == 2 * [0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12]
    for name, values in expected.items():
        np.testing.assert_allclose(table[name], values, rtol=1e-6, atol=1e-7, err_msg=name)
    for method in METHODS:
        stored = whole.maps(method)
        assert stored.dtype == np.float16 and stored.shape == (16, 12, 12)
        np.testing.assert_allclose(stored, expected_maps[method], rtol=0, atol=HALF)
    summary = whole.summary()
    assert summary["gradcam"]["deletion_auc"] == pytest.approx(
        np.mean(expected["deletion_auc"][:16])
    )
    # the mean of the per-sample columns is the paper's percentage
    assert summary["gradcam++"]["average_drop"] == pytest.approx(
        np.mean(table["average_drop"][16:])
    )


def test_a_dataloader_and_dicts_give_what_numpy_pairs_give(model, batches, whole, tmp_path):
    images = torch.from_numpy(np.concatenate([x for x, _ in batches]))
    labels = torch.from_numpy(np.concatenate([y for _, y in batches]))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=4, shuffle=False
    )
    assert_same_results(run(model, loader, tmp_path / "loader"), whole)
    dicts = [{"image": x, "label": y} for x, y in batches]
    assert_same_results(run(model, dicts, tmp_path / "dicts"), whole)


def test_csv_holds_the_table_that_parquet_holds(model, batches, whole, tmp_path):
    written = run(model, batches, tmp_path / "csv", table="csv")
    assert sorted(p.name for p in (tmp_path / "csv" / "table").iterdir()) == [
        "part-000000000000.csv", "part-000000000004.csv", "part-000000000008.csv",
        "part-000000000012.csv",
    ]  # fmt: skip
    assert_same_results(written, whole)
    frame = camkit.read_evaluation(tmp_path / "csv").table(as_pandas=True)
    assert list(frame.columns)[:6] == ["sample", "batch", "method", "target", "score", "label"]
    assert frame.groupby("method")["deletion_auc"].mean()["gradcam"] == pytest.approx(
        written.summary()["gradcam"]["deletion_auc"]
    )


class Counter:
    """Counts the batches BatchEvaluator computes (patched onto the class)."""

    def __init__(self, monkeypatch):
        self.samples = []
        original = BatchEvaluator.__call__

        def counted(evaluator, inputs, labels, samples):
            self.samples.append(samples.tolist())
            return original(evaluator, inputs, labels, samples)

        monkeypatch.setattr(BatchEvaluator, "__call__", counted)


def interrupted(batches, after):
    """The batches, stopped by a KeyboardInterrupt once ``after`` of them were taken."""
    for i, batch in enumerate(batches):
        if i == after:
            raise KeyboardInterrupt
        yield batch


def test_a_rerun_computes_only_the_batches_missing(model, batches, whole, tmp_path, monkeypatch):
    with pytest.raises(KeyboardInterrupt):
        run(model, interrupted(batches, after=2), tmp_path / "out")
    partial = camkit.read_evaluation(tmp_path / "out")
    assert partial.samples == 8 and partial.maps("gradcam").shape == (8, 12, 12)
    counter = Counter(monkeypatch)
    resumed = run(model, batches, tmp_path / "out")
    assert counter.samples == [[8, 9, 10, 11], [12, 13, 14, 15]]
    assert (resumed.batches_computed, resumed.batches_skipped) == (2, 2)
    assert_same_results(resumed, whole)


def test_a_batch_stopped_while_written_is_computed_again(
    model, batches, whole, tmp_path, monkeypatch
):
    from camkit import _evaluation_store

    written = []
    original = _evaluation_store._write_csv

    def stopping(path, columns):  # the second batch's maps are written, its part is not
        if written:
            raise KeyboardInterrupt
        written.append(path)
        original(path, columns)

    monkeypatch.setattr(_evaluation_store, "_write_csv", stopping)
    with pytest.raises(KeyboardInterrupt):
        run(model, batches, tmp_path / "out", table="csv")
    monkeypatch.setattr(_evaluation_store, "_write_csv", original)
    # no temporary file is left behind; the second batch's maps are, and are overwritten
    assert [p.name for p in (tmp_path / "out" / "table").iterdir()] == ["part-000000000000.csv"]
    assert (tmp_path / "out" / "maps" / "gradcam" / "000000000004.npy").exists()
    counter = Counter(monkeypatch)
    resumed = run(model, batches, tmp_path / "out", table="csv")
    assert counter.samples == [[4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert_same_results(resumed, whole)


def test_a_rerun_with_another_batch_size_computes_only_the_samples_missing(
    model, batches, whole, tmp_path, monkeypatch
):
    run(model, batches[:1], tmp_path / "out")  # samples 0-3 done
    images, labels = (np.concatenate(column) for column in zip(*batches, strict=True))
    threes = [(images[i : i + 3], labels[i : i + 3]) for i in range(0, 15, 3)] + [
        (images[15:], labels[15:])
    ]
    counter = Counter(monkeypatch)
    resumed = run(model, threes, tmp_path / "out")
    # samples 0-2 are done; of 3-5 only 4 and 5 are left
    assert counter.samples == [[4, 5], [6, 7, 8], [9, 10, 11], [12, 13, 14], [15]]
    table = resumed.table()
    assert table["batch"].tolist()[:16] == [0, 0, 0, 0, 4, 4, 6, 6, 6, 9, 9, 9, 12, 12, 12, 15]
    expected = whole.table()
    assert table["method"].tolist() == expected["method"].tolist()
    for name in set(table) - {"batch", "method"}:
        np.testing.assert_allclose(table[name], expected[name], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(resumed.maps("gradcam"), whole.maps("gradcam"), atol=HALF)


def test_a_changed_configuration_is_refused(model, tmp_path):
    batches = dataset(batches=1)
    run(model, batches, tmp_path / "out")
    with pytest.raises(camkit.InputError, match=r"metrics=\['deletion'.*another out="):
        run(model, batches, tmp_path / "out", metrics=("deletion",), metric_options=None)
    with pytest.raises(camkit.InputError, match=r"metric_options=.*'steps': 6"):
        run(model, batches, tmp_path / "out", metric_options={"deletion": {"steps": 7}})
    with pytest.raises(camkit.InputError, match=r"maps='float16', not 'uint8'"):
        run(model, batches, tmp_path / "out", maps="uint8")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"methods": ("gradcamm",)}, r"methods has 'gradcamm'.*'gradcam'"),
        ({"metrics": ("auc",)}, r"metrics has 'auc'.*valid names"),
        ({"methods": 3}, r"methods=3 is not valid; pass a name or a tuple of names"),
        ({"metric_options": [("deletion", {})]}, r"metric_options=\[.*dict of options per"),
        ({"maps": "float64"}, r"maps='float64' is not valid; use one of 'float16'"),
        ({"table": "xlsx"}, r"table='xlsx' is not valid; use one of 'parquet', 'csv'"),
        ({"options": {"relu": False}}, r"options has 'relu'.*under its name.*'gradcam'"),
        ({"options": {"gradcam": {"steps": 3}}}, r"options\['gradcam'\] has 'steps'"),
        ({"metric_options": {"deletion": {"baselin": 0}}}, r"'baselin'.*'baseline'"),
        ({"target": "labels"}, r"target='labels' is not valid; pass 'label'"),
        ({"target": [0, 1, 2, 3]}, r"one class per sample of one batch"),
        ({"progress": "yes"}, r"progress='yes' is not valid"),
    ],
)
def test_bad_arguments_name_the_argument_and_the_fix(model, tmp_path, overrides, message):
    with pytest.raises(camkit.InputError, match=message):
        run(model, dataset(batches=1), tmp_path / "out", **overrides)
    assert not (tmp_path / "out" / "table").exists()


def test_bad_folders_and_batches_are_named(model, tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(camkit.InputError, match=r"out='.*file.txt' is a file; pass a folder"):
        run(model, dataset(batches=1), file)
    with pytest.raises(camkit.InputError, match=r"folder of other files.*new or empty folder"):
        run(model, dataset(batches=1), tmp_path)
    with pytest.raises(camkit.InputError, match=r"target='label' needs labels"):
        run(model, [x for x, _ in dataset(batches=1)], tmp_path / "a")
    with pytest.raises(camkit.InputError, match=r"each item of batches must be the inputs"):
        run(model, ["not a batch"], tmp_path / "b")
    x, y = dataset(batches=1)[0]
    with pytest.raises(camkit.InputError, match=r"labels of shape \(4, 1\).*one class index"):
        run(model, [(x, y[:, None])], tmp_path / "c")
    with pytest.raises(camkit.InputError, match=r"holds no camkit evaluation"):
        camkit.read_evaluation(tmp_path / "a" / "missing")


def test_parquet_without_pyarrow_names_the_extra(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(camkit.CamkitError, match=r"camkit\[parquet\]'?, or pass table='csv'"):
        run(model, dataset(batches=1), tmp_path / "out")


def test_uint8_maps_and_no_maps(model, tmp_path):
    batches = dataset(batches=2)
    as_bytes = run(
        model, batches, tmp_path / "uint8", maps="uint8", metrics=(), metric_options=None
    )
    _, expected = plain_loop(model, batches)
    stored = as_bytes.maps("gradcam")
    assert stored.dtype == np.uint8
    # round(255 m): within half a level of 255 m (float32 rounding aside)
    assert np.abs(stored - expected["gradcam"] * 255).max() <= 0.5 + 1e-4
    assert list(as_bytes.table())[6:] == []  # no metric columns
    none = run(model, batches, tmp_path / "none", maps=None)
    assert not (tmp_path / "none" / "maps").exists()
    with pytest.raises(camkit.InputError, match=r"stores no maps \(it ran with maps=None\)"):
        none.maps("gradcam")
    unnormalized = {"gradcam": {"normalize": "none", "relu": False}}
    with pytest.raises(camkit.InputError, match=r"maps='uint8' stores maps in \[0, 1\]"):
        run(
            model,
            batches,
            tmp_path / "raw",
            maps="uint8",
            metrics=(),
            metric_options=None,
            options=unnormalized,
        )


def test_the_progress_line_counts_samples_and_batches(model, tmp_path, capsys):
    run(model, dataset(batches=2), tmp_path / "out", progress=True, metrics=(), metric_options=None)
    line = capsys.readouterr().err
    assert "camkit.evaluate: 8 samples, batch 2/2 (0 done before)" in line and "ETA 0 s" in line


def test_memory_is_bounded_by_the_batch(model, tmp_path):
    options = {
        "methods": ("gradcam",), "metrics": ("deletion",), "maps": "float32",
        "metric_options": {"deletion": {"steps": STEPS}},
    }  # fmt: skip
    run(model, dataset(batches=2, size=8, side=32), tmp_path / "warm", **options)

    def peak(batches, out):
        batches = iter(dataset(batches=batches, size=8, side=32, seed=batches))
        tracemalloc.start()
        try:
            run(model, batches, out, **options)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    few, many = peak(3, tmp_path / "few"), peak(12, tmp_path / "many")
    # one batch of 8 images 3x32x32 float32 is 96 KiB; 9 more batches retained would be 0.9 MiB
    assert many < 1.2 * few + 64 * 1024, (few, many)


def test_a_keras_model_over_a_tf_data_dataset(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from model_kinds import KIND_NAMES, kind

    if "keras-functional" not in KIND_NAMES:
        pytest.skip("Keras 3 on TensorFlow is not available")
    keras_model = kind("keras-functional").model
    rng = np.random.default_rng(3)
    images = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 6)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)
    evaluation = run(keras_model, data, tmp_path / "out", methods=("gradcam",))
    expected, maps = plain_loop(
        keras_model, [(images[:3], labels[:3]), (images[3:], labels[3:])], methods=("gradcam",)
    )
    table = evaluation.table()
    for name, values in expected.items():
        np.testing.assert_allclose(table[name], values, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(evaluation.maps("gradcam"), maps["gradcam"], atol=HALF)


def test_a_flax_nnx_model_over_a_list_of_jax_arrays(tmp_path):
    pytest.importorskip("flax")
    import jax.numpy as jnp
    from model_kinds import kind

    nnx_model = kind("nnx").model
    rng = np.random.default_rng(4)
    batches = [(jnp.asarray(rng.normal(size=(3, 8, 8, 3)), jnp.float32), rng.integers(0, 3, 3))
               for _ in range(2)]  # fmt: skip
    evaluation = run(
        nnx_model,
        batches,
        tmp_path / "out",
        methods=("gradcam",),
        target=None,
        metrics=("deletion",),
        metric_options={"deletion": {"steps": STEPS}},
    )
    expected, maps = plain_loop(
        nnx_model, batches, methods=("gradcam",), target=None, measured=("deletion",)
    )
    table = evaluation.table()
    for name, values in expected.items():
        np.testing.assert_allclose(table[name], values, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(evaluation.maps("gradcam"), maps["gradcam"], atol=HALF)


def test_maps_kept_on_the_device_give_the_same_results(model, batches, whole, tmp_path):
    """``on_device=True`` explanations are fetched for storing and scoring: same results."""
    on_device = {name: {"on_device": True} for name in METHODS}
    assert_same_results(run(model, batches, tmp_path / "out", options=on_device), whole)
