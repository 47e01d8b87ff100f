"""camkit.metrics.layer_sweep: layers ranked by the faithfulness of their maps.

The torch model is built so that one layer is better by construction. Its images are 8x8,
one channel, and its class-0 score is ``S = (1/16) sum_R x`` over the top-left 4x4 region
``R`` (class 1 scores 0). Layer ``early`` outputs ``A1 = x``, layer ``late`` outputs
``A2 = x * 1_R``. Grad-CAM weights a layer's channel by its mean gradient ``alpha``:

- ``late``: ``S = (1/16) sum A2``, so ``dS/dA2 = 1/16`` everywhere, ``alpha = 1/16`` and the
  map ``relu(A2 / 16)`` is ``x`` on ``R`` and 0 elsewhere: exactly the pixels ``S`` rests on.
- ``early``: ``dS/dA1 = 1_R / 16``, ``alpha = 16 / 16 / 64 = 1/64`` and the map ``x / 64``
  follows the image's brightness. The images are brighter outside ``R`` (``a`` on ``R``,
  ``b > a`` outside), so it ranks the 48 pixels outside first, which ``S`` ignores.

With 4 deletion steps (16 pixels each, zero baseline) ``late`` removes ``R`` first: the
curve is ``a, 0, 0, 0, 0`` and its area ``(1/4) a / 2 = a / 8``; ``early`` removes the outside
first: ``a, a, a, a, 0`` and ``3 (1/4) a + (1/4) a / 2 = 7a / 8``. So ``late`` wins deletion
(lower is better) and, by the mirror argument, insertion (``7a / 8`` against ``a / 8``).
"""

from __future__ import annotations

import numpy as np
import pytest
from model_kinds import KIND_NAMES, kind

import camkit
from camkit import metrics
from camkit._layer_sweep import default_layers
from camkit._layout import LayerTable


def region_net():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class RegionNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.early = nn.Conv2d(1, 1, 1)
            self.late = nn.Conv2d(1, 1, 1)
            for conv in (self.early, self.late):
                nn.init.ones_(conv.weight)
                nn.init.zeros_(conv.bias)
            region = torch.zeros(1, 1, 8, 8)
            region[..., :4, :4] = 1
            self.register_buffer("region", region)

        def forward(self, x):
            score = self.late(self.early(x) * self.region).sum((1, 2, 3)) / 16
            return torch.stack([score, torch.zeros_like(score)], dim=1)

    images = np.empty((2, 1, 8, 8), np.float32)
    images[0], images[1] = 2.0, 4.0  # b outside R
    images[0, :, :4, :4], images[1, :, :4, :4] = 1.0, 3.0  # a on R
    return RegionNet().eval(), torch.from_numpy(images)


def test_the_layer_that_sees_the_region_wins_deletion_and_insertion():
    net, x = region_net()
    # a = 1 and 3: deletion areas a/8 (late) and 7a/8 (early)
    sweep = metrics.layer_sweep(net, x, ["early", "late"], target=0, steps=4, score="target")
    assert sweep.layers == ("late", "early") and sweep.best == "late"
    np.testing.assert_allclose(sweep.values, [[1 / 8, 3 / 8], [7 / 8, 21 / 8]], atol=1e-6)
    np.testing.assert_allclose(sweep.means, [0.25, 1.75], atol=1e-6)
    assert sweep.metric == "deletion" and not sweep.higher_is_better
    inserted = metrics.layer_sweep(net, x, ["early", "late"], metric="insertion", target=0,
                                   steps=4, score="target", baseline=0.0)  # fmt: skip
    assert inserted.layers == ("late", "early") and inserted.higher_is_better
    np.testing.assert_allclose(inserted.means, [1.75, 0.25], atol=1e-6)
    assert "late" in str(inserted) and "higher is better" in str(inserted)


def test_default_layers_are_the_deepest_of_each_map_size():
    table = LayerTable.of(
        [("stem", (1, 8, 16, 16), "channels_first"), ("block1", (1, 8, 16, 16), "channels_first"),
         ("block2", (1, 16, 8, 8), "channels_first"), ("act2", (1, 16, 8, 8), "channels_first"),
         ("pool", (1, 16), None), ("fc", (1, 3), None)],
        (16, 16),
    )  # fmt: skip
    assert default_layers(table) == ["act2", "block1"]
    net, x = region_net()
    sweep = metrics.layer_sweep(net, x, target=0, steps=4)  # both layers are 8x8
    assert sweep.layers == ("late",)
    with pytest.raises(camkit.LayerError, match="no layer with a spatial output"):
        default_layers(LayerTable.of([("fc", (1, 3), None)], (16, 16)))


def test_a_callable_metric_and_road():
    net, x = region_net()

    def peak_share(model, inputs, explanation, target):  # share of each map's mass in R
        return explanation.cams[:, :4, :4].sum(axis=(1, 2)) / explanation.cams.sum(axis=(1, 2))

    sweep = metrics.layer_sweep(net, x, ["early", "late"], metric=peak_share, target=0,
                                higher_is_better=True)  # fmt: skip
    assert sweep.layers == ("late", "early") and sweep.metric == "peak_share"
    np.testing.assert_allclose(sweep.means, [1.0, 0.0], atol=1e-6)
    for order, higher in (("most", False), ("least", True)):
        swept = metrics.layer_sweep(net, x, ["early", "late"], metric="road", target=0,
                                    order=order, percentages=(25, 75), seed=0)  # fmt: skip
        assert swept.higher_is_better is higher and swept.values.shape == (2, 2)
        ordered = swept.means if higher else -swept.means
        assert ordered[0] >= ordered[1]


def test_errors():
    net, x = region_net()
    with pytest.raises(camkit.InputError, match="'stepz' is an option of neither.*'steps'"):
        metrics.layer_sweep(net, x, ["late"], stepz=4)
    with pytest.raises(camkit.InputError, match="higher_is_better=True is for a callable"):
        metrics.layer_sweep(net, x, ["late"], higher_is_better=True)
    with pytest.raises(camkit.InputError, match="higher_is_better=None is not valid"):
        metrics.layer_sweep(net, x, ["late"], metric=lambda *args: np.zeros(2))
    with pytest.raises(camkit.InputError, match="metric='auc' is not a metric"):
        metrics.layer_sweep(net, x, ["late"], metric="auc")
    with pytest.raises(camkit.InputError, match="metric=3 is not valid"):
        metrics.layer_sweep(net, x, ["late"], metric=3)
    with pytest.raises(camkit.InputError, match="method='gradcan'.*'gradcam'"):
        metrics.layer_sweep(net, x, ["late"], method="gradcan")
    for bad in ([], "late"):
        with pytest.raises(camkit.InputError, match="layers="):
            metrics.layer_sweep(net, x, bad)
    with pytest.raises(camkit.LayerError, match="'lat'"):
        metrics.layer_sweep(net, x, ["lat"])
    with pytest.raises(camkit.InputError, match=r"returned .*shape \(2,\)"):
        metrics.layer_sweep(net, x, ["late"], metric=lambda *args: [1.0], higher_is_better=True)


@pytest.mark.parametrize("name", [n for n in ("keras-functional", "nnx") if n in KIND_NAMES])
def test_keras_and_jax_models(name):
    k = kind(name)
    sweep = metrics.layer_sweep(k.model, k.inputs, ["conv1", "conv2"], metric="insertion",
                                steps=4, method="gradcam++")  # fmt: skip
    assert sorted(sweep.layers) == ["conv1", "conv2"] and sweep.values.shape == (2, 2)
    assert sweep.means[0] >= sweep.means[1] and sweep.higher_is_better
    for layer, values in zip(sweep.layers, sweep.values, strict=True):
        maps = camkit.explain(k.model, k.inputs, "gradcam++", layer).cams
        expected = metrics.insertion(k.model, k.inputs, maps, steps=4).auc
        np.testing.assert_allclose(values, expected, atol=1e-6)
