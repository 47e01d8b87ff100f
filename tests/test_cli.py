"""``camkit explain`` end to end (a torch factory, a saved Keras file, a torch.export file, a
Flax factory with its own preprocessing), ``camkit.save`` and ``camkit.report``, and the
report opened in headless Chromium."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import camkit
from camkit._cli import main

TESTS = Path(__file__).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def photos(tmp_path):
    """A folder of three small photos, one in a subfolder, and a file that is no image."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    for i, shape in enumerate([(40, 48, 3), (36, 36, 3), (50, 30, 3)]):
        path = folder / ("nested/deep.jpg" if i == 2 else f"photo{i}.png")
        camkit.save_image(path, rng.integers(0, 256, shape, dtype=np.uint8))
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _rows(out):
    with (out / "results.csv").open() as file:
        return list(csv.DictReader(file))


def test_save_writes_the_colours_shown_and_the_maps(tmp_path):
    """A red image under an all-zero map: the PNG holds red, not the blue that writing RGB
    with ``cv2.imwrite`` gives."""
    import cv2

    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    explanation = camkit.Explanation(
        cams=np.zeros((1, 4, 4), np.float32), targets=np.array([3]), scores=np.array([0.5]),
        layers=("conv",), method="gradcam", backend="torch",
    )  # fmt: skip
    (row,) = camkit.save(explanation, [red], tmp_path, names=["red"], labels=["a", "b", "c", "d"])
    # alpha 0.5 over jet(0) = dark blue (0, 0, 128): red becomes (128, 0, 64)
    picture = camkit.read_image(tmp_path / row.overlay)
    np.testing.assert_allclose(picture[0, 0], [128, 0, 64], atol=1)
    assert cv2.imread(str(tmp_path / row.overlay))[0, 0, 2] >= 127  # OpenCV's BGR: red last
    np.testing.assert_array_equal(np.load(tmp_path / row.map), explanation.cams[0])
    assert (row.image, row.method, row.target, row.label, row.score) == ("red", "gradcam", 3,
                                                                          "d", 0.5)  # fmt: skip
    assert _rows(tmp_path)[0]["overlay"] == "red/gradcam.png"


def test_save_refuses_images_that_do_not_match(tmp_path):
    explanation = camkit.Explanation(
        cams=np.zeros((2, 4, 4), np.float32), targets=np.array([0, 1]),
        scores=np.array([0.5, 0.5]), layers=("l",), method="gradcam", backend="torch",
    )  # fmt: skip
    with pytest.raises(camkit.InputError, match="images has 1 images for an explanation of 2"):
        camkit.save(explanation, [np.zeros((4, 4, 3))], tmp_path)


def test_explain_a_folder_with_a_torch_factory_and_resume(photos, tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(TESTS))
    out = tmp_path / "out"
    arguments = ["explain", str(photos), "--model", "cli_models:torch_cnn", "--resize", "32",
                 "32", "--batch-size", "2", "--out", str(out), "--method", "gradcam"]  # fmt: skip
    assert main([*arguments, "--method", "layercam"]) == 0
    printed = capsys.readouterr()
    assert "skipped" in printed.err and "broken.png" in printed.err  # reported, and went on
    assert "camkit: 4/4 images" in printed.err  # plain progress lines off a terminal
    rows = _rows(out)
    assert {(r["image"], r["method"]) for r in rows} == {
        (name, method) for name in ("photo0", "photo1", "nested/deep")
        for method in ("gradcam", "layercam")
    }  # fmt: skip
    for row in rows:
        assert np.load(out / row["map"]).shape == (32, 32)  # float32 maps at the input size
        assert camkit.read_image(out / row["overlay"]).shape[2] == 3
    assert (out / "report.html").exists()
    # again, with a third method: only that one runs; the others are not explained again
    assert main([*arguments, "--method", "scorecam"]) == 0
    rows = _rows(out)
    assert len(rows) == 9 and sum(r["method"] == "scorecam" for r in rows) == 3
    assert main(arguments) == 0
    assert len(_rows(out)) == 9
    assert "3 images already done" in capsys.readouterr().err


def test_explain_a_saved_keras_model_with_a_class_name_and_top_k(photos, tmp_path):
    from model_kinds import keras_on_tensorflow

    keras = keras_on_tensorflow()
    model = keras.Sequential([
        keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="fc"),
    ])  # fmt: skip
    model.save(tmp_path / "model.keras")
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nfox\n")
    out = tmp_path / "out"
    common = ["--model", str(tmp_path / "model.keras"), "--resize", "16", "16", "--labels",
              str(labels), "--layer", "conv"]  # fmt: skip
    assert main(["explain", str(photos / "photo0.png"), *common, "--target", "dog",
                 "--out", str(out)]) == 0  # fmt: skip
    (row,) = _rows(out)
    assert (row["target"], row["label"], row["layers"]) == ("1", "dog", "conv")
    top = tmp_path / "top"
    assert main(["explain", str(photos / "photo0.png"), *common, "--target", "topk:2",
                 "--out", str(top)]) == 0  # fmt: skip
    assert [r["overlay"] for r in _rows(top)] == ["photo0/gradcam-0.png", "photo0/gradcam-1.png"]


def test_explain_a_torch_export_file(photos, tmp_path):
    torch = pytest.importorskip("torch")
    from test_torch import SmallCNN

    example = (torch.zeros(2, 3, 32, 32),)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(SmallCNN().eval(), example, dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "model.pt2")
    out = tmp_path / "out"
    assert main(["explain", str(photos), "--model", str(tmp_path / "model.pt2"), "--resize",
                 "32", "32", "--layer", "conv2", "--out", str(out)]) == 0  # fmt: skip
    assert {r["layers"] for r in _rows(out)} == {"conv2"} and len(_rows(out)) == 3


def test_explain_with_a_flax_factory_and_its_own_preprocessing(photos, tmp_path, monkeypatch):
    pytest.importorskip("flax")
    monkeypatch.syspath_prepend(str(TESTS))
    out = tmp_path / "out"
    assert main(["explain", str(photos), "--model", "cli_models:nnx_cnn_with_preprocessing",
                 "--layer", "conv2", "--out", str(out)]) == 0  # fmt: skip
    assert all(np.load(out / r["map"]).shape == (12, 12) for r in _rows(out))


def test_bad_command_lines_name_the_fix(photos, tmp_path, capsys):
    assert main(["explain", str(tmp_path / "nowhere"), "--model", "x:y"]) == 2
    assert "neither an image file nor a folder" in capsys.readouterr().err
    assert main(["explain", str(photos), "--model", "no_such_module:f"]) == 2
    assert "could not be imported" in capsys.readouterr().err
    assert main(["explain", str(photos), "--model", "model.onnx"]) == 2
    assert "package.module:factory" in capsys.readouterr().err


def test_python_m_camkit_version_and_methods():
    run = [sys.executable, "-m", "camkit"]
    version = subprocess.run([*run, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"camkit {camkit.__version__}"
    listing = subprocess.run([*run, "methods"], capture_output=True, text=True, check=True)
    assert "Selvaraju et al., ICCV 2017" in listing.stdout
    assert len(listing.stdout.splitlines()) == len(camkit.methods())


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian's chromium package)")
def test_the_report_opens_offline_in_chromium_sorts_and_filters(tmp_path):
    """The report in headless Chromium: no console errors, every image x method shown, rows
    sorted by a method's score on a click, filtered by typing; a screenshot is kept."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    scores = {"b": 0.9, "a": 0.1, "c": 0.5}
    for method, flip in (("gradcam", 1), ("layercam", -1)):
        explanation = camkit.Explanation(
            cams=np.random.default_rng(1).random((3, 8, 8), np.float32),
            targets=np.array([0, 1, 2]), scores=np.array([flip * s for s in scores.values()]),
            layers=("conv",), method=method, backend="torch",
        )  # fmt: skip
        pictures = np.zeros((3, 8, 8, 3), np.uint8)
        camkit.save(explanation, pictures, tmp_path, names=list(scores),
                    labels=["cat", "dog", "fox"])  # fmt: skip
    page_path = camkit.report(tmp_path, title="a test report")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:"))
                else problems.append(f"fetched {r.url}"))  # fmt: skip
        page.goto(page_path.resolve().as_uri())
        assert page.title() == "a test report"
        assert page.locator("#grid tbody tr").count() == 3
        assert page.locator("#grid img").count() == 3 * 2
        assert all(page.locator("#grid img").evaluate_all("imgs => imgs.map(i => i.complete "
                                                          "&& i.naturalWidth > 0)"))  # fmt: skip

        def order():
            return page.locator("#grid tbody tr:not([hidden])").evaluate_all(
                "rows => rows.map(r => r.dataset.image)"
            )

        assert order() == ["a", "b", "c"]  # by image name, first
        page.click("th[data-key=gradcam]")
        assert order() == ["b", "c", "a"]  # gradcam's scores, highest first
        page.click("th[data-key=gradcam]")
        assert order() == ["a", "c", "b"]
        page.click("th[data-key=layercam]")  # layercam's scores are the negatives
        assert order() == ["a", "c", "b"]
        page.fill("#filter", "dog")
        assert order() == ["a"] and page.inner_text("#shown") == "1 of 3 images"  # a: dog
        assert "filter=dog" in page.url  # a link keeps the state
        page.fill("#filter", "")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert problems == []
    if os.environ.get("CAMKIT_KEEP_SCREENSHOT"):
        shutil.copy(tmp_path / "report.png", os.environ["CAMKIT_KEEP_SCREENSHOT"])
