"""The slice figure and viewer draw the right planes, windows and overlays."""

from __future__ import annotations

import numpy as np
import pytest

from drasclr_toolkit.viz.slices import WINDOW_PRESETS, slice_figure, slice_viewer


@pytest.fixture()
def volume():
    rng = np.random.default_rng(0)
    vol = rng.integers(-1000, 100, size=(30, 40, 50)).astype(np.int16)
    labels = np.zeros(vol.shape, dtype=np.uint8)
    labels[5:10, 10:20, 30:40] = 1
    labels[20:25, 25:30, 5:10] = 3
    return vol, labels


def test_slice_figure_cuts_planes_in_millimetres(volume):
    vol, _ = volume
    fig = slice_figure(vol, spacing=(0.5, 0.5, 2.0), indices={"axial": 3, "coronal": 7, "sagittal": 11})
    axial, coronal, sagittal = fig.data
    np.testing.assert_array_equal(np.asarray(axial.z), vol[3])
    np.testing.assert_array_equal(np.asarray(coronal.z), vol[:, 7, :])
    np.testing.assert_array_equal(np.asarray(sagittal.z), vol[:, :, 11])
    assert (axial.dx, axial.dy) == (0.5, 0.5)
    assert (coronal.dx, coronal.dy) == (0.5, 2.0)
    level, width = WINDOW_PRESETS["lung"]
    assert axial.zmin == level - width / 2 and axial.zmax == level + width / 2


def test_overlay_is_transparent_outside_labels(volume):
    vol, labels = volume
    fig = slice_figure(vol, overlay=labels, indices={"axial": 7})
    trace = fig.data[1]
    overlay = np.asarray(trace.z)
    assert trace.name == "axial overlay"
    np.testing.assert_array_equal(overlay, labels[7])
    # label 0 falls in the first colour band, which is fully transparent
    span = trace.zmax - trace.zmin
    band = [c for pos, c in trace.colorscale if pos <= (0 - trace.zmin) / span]
    assert band and all(c == "rgba(0,0,0,0)" for c in band)


def test_large_slices_are_subsampled(volume):
    vol, _ = volume
    fig = slice_figure(vol, max_pixels=20)
    assert max(np.asarray(fig.data[0].z).shape) <= 20
    assert fig.data[0].dx == 3.0  # 50 columns / 20 pixels -> every 3rd voxel


def test_bad_inputs_are_named(volume):
    vol, labels = volume
    with pytest.raises(ValueError, match="overlay shape"):
        slice_figure(vol, overlay=labels[:-1])
    with pytest.raises(ValueError, match="window preset"):
        slice_figure(vol, window="liver-ish")
    with pytest.raises(ValueError, match="3-D"):
        slice_figure(vol[0])


def test_viewer_controls_redraw_the_figure(volume):
    vol, labels = volume
    viewer = slice_viewer(vol, overlay=labels)
    viewer.sliders["axial"].value = 21
    np.testing.assert_array_equal(np.asarray(viewer.figure.data[0].z), vol[21])
    viewer.window.value = "mediastinum"
    assert viewer.figure.data[0].zmin == WINDOW_PRESETS["mediastinum"][0] - WINDOW_PRESETS["mediastinum"][1] / 2
    viewer.show_overlay.value = False
    assert viewer.figure.data[1].visible is False


def test_default_slices_show_the_most_overlay(volume):
    vol, labels = volume
    from drasclr_toolkit.viz.slices import default_indices

    picked = default_indices(vol, labels)
    # the first block (5x10x10 voxels) is larger than the second (5x5x5)
    assert 5 <= picked["axial"] < 10 and 10 <= picked["coronal"] < 20 and 30 <= picked["sagittal"] < 40
    assert default_indices(vol) == {"axial": 15, "coronal": 20, "sagittal": 25}


def _screen_position(fig, trace_index: int, row: int, col: int) -> tuple[float, float]:
    """Where a pixel lands on screen, as fractions: (0, 0) top left, (1, 1) bottom right."""
    trace = fig.data[trace_index]
    n_rows, n_cols = np.asarray(trace.z).shape
    suffix = "" if trace_index == 0 else str(trace_index + 1)
    yaxis = fig.layout["yaxis" + suffix]
    xaxis = fig.layout["xaxis" + suffix]
    down = row / (n_rows - 1)
    across = col / (n_cols - 1)
    if yaxis.autorange != "reversed":  # plotly's y grows upwards unless reversed
        down = 1.0 - down
    if xaxis.autorange == "reversed":
        across = 1.0 - across
    return across, down


def test_slices_are_shown_as_radiologists_read_them():
    """An LPS phantom (numpy z, y, x; z grows to the head, x to the patient's left, y to
    the back) with a bright block high, left and at the front: superior must be up,
    anterior up on the axial view, the patient's left on the viewer's right."""
    vol = np.full((20, 30, 40), -1000, dtype=np.int16)
    vol[15:20, 0:6, 30:40] = 500  # superior (high z), anterior (low y), left (high x)
    fig = slice_figure(vol, indices={"axial": 17, "coronal": 3, "sagittal": 35}, max_pixels=512)
    for index, name in enumerate(("axial", "coronal", "sagittal")):
        image = np.asarray(fig.data[index].z)
        rows, cols = np.nonzero(image > 0)
        across, down = _screen_position(fig, index, rows.mean(), cols.mean())
        if name == "axial":
            assert down < 0.5, "anterior must be at the top of the axial view"
            assert across > 0.5, "the patient's left must be on the viewer's right"
        elif name == "coronal":
            assert down < 0.5, "superior must be at the top of the coronal view"
            assert across > 0.5, "the patient's left must be on the viewer's right"
        else:
            assert down < 0.5, "superior must be at the top of the sagittal view"
            assert across < 0.5, "anterior must be on the left of the sagittal view"


def test_viewer_carries_a_static_copy_for_exported_pages(volume):
    vol, labels = volume
    viewer = slice_viewer(vol, overlay=labels)
    bundle = viewer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/html"].count('class="drasclr-plot"') == 1
