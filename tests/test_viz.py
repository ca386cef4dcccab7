"""Views build figures with the expected traces and data (figure objects, not pixels)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from drasclr_toolkit.embed import Embeddings
from drasclr_toolkit.patch_source import ArrayPatchSource
from drasclr_toolkit.evaluate import patch_kmeans, patch_pca, pool_embeddings
from drasclr_toolkit.viz import (
    embedding_scatter,
    image_affine,
    landmark_centres,
    landmark_cloud,
    patch_explorer,
    retrieval_gallery,
)

P = 32


def make_embeddings(n=5, n_loc=6, d=4, seed=0) -> Embeddings:
    rng = np.random.default_rng(seed)
    return Embeddings(rng.normal(size=(n, n_loc, d)), [f"s{i:03d}" for i in range(n)],
                      landmarks=np.array([[26 * i, 26 * (i % 3), 26 * (i % 2)] for i in range(n_loc)]),
                      landmark_coords=rng.uniform(-1, 1, (n_loc, 3)),
                      lung_fraction=rng.uniform(0, 1, (n, n_loc)))


def make_source(n=5, n_loc=6, seed=0) -> ArrayPatchSource:
    rng = np.random.default_rng(seed)
    emb = make_embeddings(n, n_loc)
    return ArrayPatchSource(rng.integers(-1024, 240, (n, n_loc, P, P, P)), emb.landmarks,
                            subject_ids=emb.subject_ids, lung_fraction=emb.lung_fraction)


def test_landmark_cloud_one_subject_colours_and_hover():
    emb = make_embeddings()
    pcs = patch_pca(emb, 2, subject="s001")
    fig = landmark_cloud(emb.landmarks, pcs[:, 0], lung_fraction=emb.lung_fraction[1],
                         value_name="PC1", spacing=(2, 2, 2))
    (trace,) = fig.data
    assert trace.type == "scatter3d" and len(trace.x) == 6
    np.testing.assert_allclose(trace.marker.color, pcs[:, 0], rtol=1e-6)
    np.testing.assert_allclose(np.c_[trace.x, trace.y, trace.z], (emb.landmarks + 15.5) * 2)
    # hover in the axes' unit: the centre (78 + 15.5) · 2 mm, not the voxel corner
    assert trace.text[3].startswith("landmark 3<br>centre (x, y, z) = (187, 31, 83) mm")
    assert f"lung fraction {emb.lung_fraction[1, 3]:.2f}" in trace.text[3]
    assert f"PC1 = {pcs[3, 0]:.4g}" in trace.text[3]
    assert fig.layout.scene.aspectmode == "data"


def test_patch_pca_matches_sklearn_on_all_patches():
    from sklearn.decomposition import PCA

    emb = make_embeddings()
    scores = patch_pca(emb, 3)
    ref = PCA(3).fit_transform(emb.patch.reshape(-1, 4)).reshape(5, 6, 3)
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-5)


def test_cohort_cloud_of_kmeans_clusters_has_a_dropdown_and_category_colours():
    emb = make_embeddings()
    clusters = patch_kmeans(emb, k=3, seed=0)
    assert clusters.shape == (5, 6) and set(np.unique(clusters)) <= {0, 1, 2}
    np.testing.assert_array_equal(clusters, patch_kmeans(emb, k=3, seed=0))
    fig = landmark_cloud(emb.landmarks, clusters, lung_fraction=emb.lung_fraction,
                         subject_ids=emb.subject_ids, value_name="cluster")
    # one trace per (subject, cluster): the legend names every colour
    visible = [t for t in fig.data if t.visible]
    assert sorted(t.name for t in visible) == [f"cluster {c}" for c in np.unique(clusters[0])]
    assert all(t.showlegend for t in fig.data)
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == emb.subject_ids
    shown = [t for t, v in zip(fig.data, buttons[2].args[0]["visible"]) if v]
    assert sum(len(t.x) for t in shown) == 6  # every landmark of subject 2, once
    colour_of = {}
    for trace in fig.data:  # same cluster ⇔ same colour, for every subject
        colour_of.setdefault(trace.name, set()).add(trace.marker.color)
    assert all(len(c) == 1 for c in colour_of.values())
    assert len({next(iter(c)) for c in colour_of.values()}) == len(colour_of)
    for trace in shown:
        for landmark, text in zip(trace.customdata, trace.text):
            assert text.endswith(f"cluster = {clusters[2, landmark]}")
            assert trace.name == f"cluster {clusters[2, landmark]}"


def test_landmark_cloud_on_the_lung_surface():
    mask = np.zeros((30, 40, 50), np.uint8)
    mask[5:25, 10:30, 10:40] = 2
    corners = np.array([[10, 10, 5], [20, 12, 6]])
    fig = landmark_cloud(corners, np.array([0.2, 0.7]), mask=mask, spacing=(1.0, 1.5, 2.0),
                         downsample=2)
    mesh, points = fig.data
    assert mesh.type == "mesh3d" and points.type == "scatter3d"
    x, y, z = (np.asarray(v) for v in (mesh.x, mesh.y, mesh.z))
    assert len(mesh.i) == len(mesh.j) == len(mesh.k) > 0
    # The surface wraps the box: x 10..40 voxels × 1 mm, y 10..30 × 1.5, z 5..25 × 2 (±1 block).
    assert abs(x.min() - 10) <= 2 and abs(x.max() - 39) <= 2
    assert abs(y.min() - 15) <= 3 and abs(y.max() - 43.5) <= 3
    assert abs(z.min() - 10) <= 4 and abs(z.max() - 48) <= 4
    np.testing.assert_allclose(np.c_[points.x, points.y, points.z],
                               landmark_centres(corners, 32, (1.0, 1.5, 2.0)))
    np.testing.assert_allclose(points.marker.color, [0.2, 0.7])
    coarse = landmark_cloud(corners, mask=mask, spacing=(1.0, 1.5, 2.0), downsample=4).data[0]
    assert len(coarse.i) < len(mesh.i)
    # An index→world affine moves surface and landmarks alike (here: spacing plus an origin).
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    affine[:3, 3] = (-100, 20, 300)
    world_mesh, world_points = landmark_cloud(corners, mask=mask, spacing=(1.0, 1.5, 2.0),
                                              affine=affine, downsample=2).data
    np.testing.assert_allclose(np.asarray(world_mesh.x), x - 100, atol=1e-6)
    np.testing.assert_allclose(np.asarray(world_mesh.z), z + 300, atol=1e-6)
    np.testing.assert_allclose(np.asarray(world_points.y), np.asarray(points.y) + 20)
    # A SimpleITK mask brings its geometry: scene in LPS mm, a flipped y axis included.
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask)
    image.SetSpacing((1.0, 1.5, 2.0))
    image.SetOrigin((-100.0, 20.0, 300.0))
    image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    lps_mesh, lps_points = landmark_cloud(corners, mask=image, downsample=2).data
    expected = (corners + 15.5) * (1.0, -1.5, 2.0) + (-100, 20, 300)
    np.testing.assert_allclose(np.c_[lps_points.x, lps_points.y, lps_points.z], expected)
    np.testing.assert_allclose(np.asarray(lps_mesh.y), 20 - y, atol=1e-6)
    np.testing.assert_allclose(image_affine(image)[:3, 3], (-100, 20, 300))
    # given positions (exact mapped centres) are drawn as they are
    shown = landmark_cloud(corners, positions=expected + 0.25, mask=image).data[1]
    np.testing.assert_allclose(shown.x, expected[:, 0] + 0.25)
    # a cohort dropdown keeps the surface visible for every subject
    cohort = landmark_cloud(corners, np.array([[0.1, 0.2], [0.3, 0.4]]), mask=mask,
                            subject_ids=["a", "b"])
    assert cohort.data[0].type == "mesh3d"
    assert all(b.args[0]["visible"][0] for b in cohort.layout.updatemenus[0].buttons)


def test_landmark_cloud_on_the_official_atlas_surface(shared_reference):
    import SimpleITK as sitk

    mask = sitk.ReadImage(str(shared_reference / "atlas_lung_mask.nii.gz"))
    corners = np.load(shared_reference / "atlas_patch_loc.npy")
    fig = landmark_cloud(corners, mask=mask, spacing=mask.GetSpacing(), downsample=6)
    mesh, points = fig.data
    assert len(points.x) == 581
    # The 575 patches with > 10 % lung in this mask (reference/README.md) overlap the
    # surface's bounding box; a wrong axis order would put many outside.
    overlaps = np.ones(581, bool)
    for axis, coord in zip("xyz", (points.x, points.y, points.z)):
        lo, hi = np.min(getattr(mesh, axis)), np.max(getattr(mesh, axis))
        corner = np.asarray(coord) - 15.5
        overlaps &= (corner <= hi) & (corner + 31 >= lo)
    assert overlaps.sum() >= 575


def test_embedding_scatter_continuous_and_categorical_labels():
    emb = make_embeddings(n=8)
    pooled = pool_embeddings(emb, "mean")
    labels = pd.Series(np.linspace(0, 1, 8), index=emb.subject_ids[::-1], name="severity")
    fig = embedding_scatter(pooled, labels, method="pca")
    (trace,) = fig.data
    assert trace.type == "scatter" and len(trace.x) == 8
    # aligned by subject id, not by position
    np.testing.assert_allclose(trace.marker.color, labels.loc[emb.subject_ids].to_numpy())
    assert trace.text[0] == f"s000<br>severity = {labels['s000']:.4g}"
    assert "PCA" in fig.layout.title.text

    groups = np.array(["a", "b"] * 4)
    fig = embedding_scatter(pooled, groups, label_name="pattern")
    assert [t.name for t in fig.data] == ["pattern = a", "pattern = b"]
    assert sorted(sum((list(t.text) for t in fig.data), [])) == sorted(
        f"{s}<br>pattern = {g}" for s, g in zip(emb.subject_ids, groups))

    fig = embedding_scatter(np.c_[np.arange(8.0), np.ones(8)])  # already 2D: drawn as is
    np.testing.assert_array_equal(fig.data[0].x, np.arange(8.0))


def test_embedding_scatter_umap_is_seeded_and_falls_back(monkeypatch):
    import types

    calls = []

    class FakeUMAP:  # the real one JIT-compiles for a minute; its wiring is what we test
        def __init__(self, **kwargs):
            calls.append(kwargs)

        def fit_transform(self, X):
            return X[:, :2] * 10

    emb = make_embeddings(n=12, d=6)
    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    fig = embedding_scatter(emb, method="umap", seed=7, n_neighbors=30)
    assert calls[0]["random_state"] == 7 and calls[0]["n_neighbors"] == 11  # N - 1
    assert "UMAP" in fig.layout.title.text and fig.layout.xaxis.title.text == "UMAP 1"
    np.testing.assert_allclose(fig.data[0].x, pool_embeddings(emb, "mean").to_numpy()[:, 0] * 10, rtol=1e-6)

    monkeypatch.setitem(sys.modules, "umap", None)  # import umap now raises ImportError
    with pytest.warns(UserWarning, match="umap-learn is not installed"):
        fig = embedding_scatter(emb, method="umap")
    assert "PCA (UMAP unavailable" in fig.layout.title.text


def test_retrieval_gallery_shows_query_and_hits_with_similarities():
    emb, src = make_embeddings(), make_source()
    fig = retrieval_gallery(emb, src, "s002", landmark=4, k=3)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 4
    hits = fig.layout.meta["hits"]
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0] == "query s002"
    for sid, sim, title in zip(hits["subject_id"], hits["similarity"], titles[1:]):
        assert title == f"{sid} · cos {sim:.3f}"
    order = ["s002"] + hits["subject_id"]
    for heatmap, sid in zip(heatmaps, order):
        patch = src.read_subject(sid)[4]
        np.testing.assert_array_equal(np.asarray(heatmap.z), patch[P // 2])


def test_patch_explorer_links_landmark_choice_to_patch_and_ct_box():
    src = make_source()
    ct = np.random.default_rng(3).integers(-1000, 100, (90, 100, 110)).astype(np.int16)
    corners = np.array([[5 + 10 * i, 6 + 5 * i, 7 + 8 * i] for i in range(6)])
    ex = patch_explorer(src, "s001", ct=ct, subject_corners=corners)
    assert ex.cloud.data[0].type == "scatter3d" and len(ex.cloud.data[0].x) == 6
    ex.select(3)
    patch = src.read_subject(1)[3]
    for trace, image in zip(ex.patch_figure.data, (patch[16], patch[:, 16], patch[:, :, 16])):
        np.testing.assert_array_equal(np.asarray(trace.z), image)
    box = ex.ct_figure.layout.shapes[0]
    assert (box.x0, box.x1, box.y0, box.y1) == (34.5, 66.5, 20.5, 52.5)
    np.testing.assert_array_equal(np.asarray(ex.ct_figure.data[0].z), ct[31 + 16])
    selected = ex.cloud.data[-1]
    np.testing.assert_allclose([selected.x[0], selected.y[0], selected.z[0]],
                               src.landmarks[3] + 15.5)

    ex.dropdown.value = 5  # choosing from the list updates the views too
    np.testing.assert_array_equal(np.asarray(ex.patch_figure.data[0].z), src.read_subject(1)[5][16])

    class _Points:
        point_inds = [2]
    ex._on_click(ex.cloud.data[0], _Points(), None)  # what a click on point 2 calls
    assert ex.landmark == 2 and ex.dropdown.value == 2

    class _Near:
        point_inds = [4]
    ex._on_hover(ex.cloud.data[0], _Near(), None)  # hovering near a point selects it
    assert ex.landmark == 4
    ex.follow_hover.value = False  # pinned: hovering elsewhere keeps the selection
    ex._on_hover(ex.cloud.data[0], _Points(), None)
    assert ex.landmark == 4

    # the list names each landmark by zone and index; a click on the pick halo around a
    # marker (a few pixels off its centre) selects that landmark
    labels = [label for label, _ in ex.dropdown.options]
    assert all(" · " in label for label in labels) and labels[3].endswith(" · 3")
    assert labels[0].split(" · ")[0] in {"right upper", "right middle", "right lower",
                                         "left upper", "left middle", "left lower"}
    halo = next(t for t in ex.cloud.data if t.name == "pick halo")
    assert halo.marker.size >= 3 * ex.cloud.data[0].marker.size
    ex.follow_hover.value = True

    class _Halo:
        point_inds = [1]
    ex._on_click(halo, _Halo(), None)
    assert ex.landmark == int(halo.customdata[1]) == 1

    # side by side the panels fit a 1,500 px output area, and a 900 px tall window
    assert ex.cloud.layout.width + ex.patch_figure.layout.width <= 1400
    assert max(ex.cloud.layout.height,
               ex.patch_figure.layout.height + ex.ct_figure.layout.height) + 60 <= 900
    # every axis says what it shows; the colour bar says HU
    for axis in (ex.patch_figure.layout.xaxis, ex.patch_figure.layout.yaxis3,
                 ex.ct_figure.layout.xaxis):
        assert "mm" in axis.title.text
    assert ex.patch_figure.data[2].colorbar.title.text == "HU"
    bundle = ex._repr_mimebundle_()
    assert bundle["text/html"].count('class="drasclr-plot"') == 3  # cloud, patch, CT

    alone = patch_explorer(src, 0)  # no CT: the patch alone
    assert alone.ct_figure is None and len(alone.patch_figure.data) == 3


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_3d_figure_exports_to_html_and_draws_webgl(tmp_path):
    emb = make_embeddings()
    mask = np.zeros((40, 40, 40), np.uint8)
    mask[8:32, 8:32, 8:32] = 1
    fig = landmark_cloud(emb.landmarks, patch_pca(emb, 1, subject=0)[:, 0], mask=mask)
    page = tmp_path / "surface.html"
    fig.write_html(page, include_plotlyjs=True, full_html=True)  # standalone: works offline
    html = page.read_text()
    assert '"type":"mesh3d"' in html and '"type":"scatter3d"' in html

    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed; the HTML export was checked, not its rendering")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--use-gl=swiftshader",
           "--enable-unsafe-swiftshader", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
           "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert 'class="gl-container"' in dom, "plotly did not create its WebGL container"
    container = dom[dom.index('class="gl-container"'):]
    canvas = re.search(r'<canvas width="(\d+)" height="(\d+)"', container[:2000])
    assert canvas, "no WebGL canvas was drawn in the plot div"
    assert int(canvas.group(1)) > 100 and int(canvas.group(2)) > 100


def test_3d_axes_say_mm_only_when_the_spacing_is_known():
    corners = np.array([[0, 0, 0], [16, 0, 0]])
    in_voxels = landmark_cloud(corners, values=np.array([0.1, 0.9]))
    assert "voxel" in in_voxels.layout.scene.xaxis.title.text
    in_mm = landmark_cloud(corners, values=np.array([0.1, 0.9]), spacing=(2.0, 2.0, 2.0))
    assert "mm" in in_mm.layout.scene.xaxis.title.text
    # patch centres: (corner + 15.5) · 2 mm
    np.testing.assert_allclose(in_mm.data[0].x, [31.0, 63.0])


def test_mask_outlines_are_red_as_the_notebooks_say():
    from drasclr_toolkit.viz.qc import plot_overlay

    vol = np.full((20, 30, 40), -900, np.int16)
    mask = np.zeros(vol.shape, np.uint8)
    mask[5:15, 5:25, 25:35] = 1
    fig = plot_overlay(vol, mask)
    contours = [t for t in fig.data if t.type == "contour"]
    assert contours and all({c for _, c in t.colorscale} == {"red"} for t in contours)
    # the sagittal plane goes through the lung, not through the middle of the volume
    sagittal = np.asarray(contours[-1].z)
    assert sagittal.any()


def test_live_curves_keep_a_static_copy_of_the_finished_run():
    from drasclr_toolkit.viz.training import LiveTrainingCurves

    live = LiveTrainingCurves(static_every=2)
    for step in range(1, 6):
        live({"step": step, "loss_local": 3.0 - 0.1 * step, "acc_local": 0.1 * step, "lr": 0.01})
    bundle = live.widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/html"].count('class="drasclr-plot"') == 1
    assert list(live.widget.data[0].x) == [1, 2, 3, 4, 5]


def test_live_curves_of_a_reused_run_are_drawn_from_its_log():
    from drasclr_toolkit.viz.training import LiveTrainingCurves

    log = pd.DataFrame({"step": [1, 2, 3], "loss_local": [2.6, 2.4, 2.1],
                        "loss_neighbour": [2.7, 2.6, 2.5], "acc_local": [0.1, 0.2, 0.3],
                        "acc_neighbour": [0.1, 0.1, 0.2], "lr": [0.01, 0.008, 0.005],
                        "n_negatives": [11, 11, 11]})
    live = LiveTrainingCurves()
    live.finish(log)                       # nothing was recorded live: the run was reused
    drawn = {t.name: list(t.y) for t in live.widget.data}
    assert drawn["loss_local"] == [2.6, 2.4, 2.1]
    assert np.allclose(drawn["chance (log(1 + negatives))"], np.log(12))
    assert "reused run" in live.widget.layout.title.text
    trained = LiveTrainingCurves()
    trained({"step": 1, "loss_local": 3.0})
    trained.finish(log)                    # steps recorded live win over the log
    assert [t.y for t in trained.widget.data if t.name == "loss_local"][0] == (3.0,)
