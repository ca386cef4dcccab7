"""Phenotype probes, densitometry and feature sets (drasclr_toolkit.evaluate).

Kept fast: small permutation and bootstrap counts; one categorical fit costs ~0.1 s.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin

from drasclr_toolkit.embed import Embeddings
from drasclr_toolkit.evaluate import (ZONES, cohort_densitometry, densitometry,
                                      evaluate_phenotypes, feature_sets, infer_target_kind,
                                      landmark_zones, lung_zones, pool_embeddings)

QUICK = dict(n_repeats=1, n_permutations=19)


def _ids(n: int) -> list[str]:
    return [f"s{i:03d}" for i in range(n)]


def _planted(n: int = 300, d: int = 10, r2: float = 0.6, seed: int = 0):
    """y = X w + noise with population R² = ``r2``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    signal = X @ w
    noise_sd = np.sqrt(signal.var() * (1 - r2) / r2)
    y = signal + rng.normal(scale=noise_sd, size=n)
    ids = _ids(n)
    return (pd.DataFrame(X, index=ids),
            pd.DataFrame({"planted": y, "noise": rng.normal(size=n)}, index=ids))


# --------------------------------------------------------------------------- probes
def test_probe_recovers_planted_r2_and_not_noise():
    X, labels = _planted()
    table = evaluate_phenotypes(X, labels, n_repeats=2, n_permutations=39)
    planted = table.set_index("target").loc["planted"]
    noise = table.set_index("target").loc["noise"]
    assert abs(planted["r2"] - 0.6) < 0.1
    assert planted["r2_ci_low"] < planted["r2"] < planted["r2_ci_high"]
    assert planted["r2"] > planted["r2_null_p95"]
    assert planted["verdict"].startswith("evidence")
    assert noise["r2"] < 0.05
    assert noise["r2_p"] > 0.05 and noise["verdict"].startswith("no evidence")
    assert planted["mae"] < planted["mae_chance"]
    for col in ("feature_set", "target", "kind", "n", "n_dropped", "n_features", "cv",
                "n_repeats", "primary_metric", "r2", "r2_ci_low", "r2_ci_high", "r2_chance",
                "r2_null_mean", "r2_null_p95", "r2_p", "mae", "mae_null_p05", "ci_method",
                "verdict"):
        assert col in table.columns, col
    assert (table["n"] == 300).all() and (table["kind"] == "continuous").all()


def test_classification_on_noise_is_at_chance_with_a_large_p_value():
    rng = np.random.default_rng(3)
    ids = _ids(120)
    X = pd.DataFrame(rng.normal(size=(120, 8)), index=ids)
    labels = pd.DataFrame({"gold": rng.integers(0, 3, 120)}, index=ids)
    row = evaluate_phenotypes(X, labels, cv=3, n_repeats=1, n_permutations=9).iloc[0]
    assert row["kind"] == "categorical" and row["primary_metric"] == "auc"
    assert abs(row["accuracy"] - row["accuracy_chance"]) < 0.12
    assert row["accuracy_p"] > 0.1 and row["auc_p"] > 0.1
    assert row["verdict"].startswith("no evidence")
    assert row["auc_chance"] == 0.5 and row["macro_f1_chance"] == pytest.approx(1 / 3)
    assert {"accuracy_ci_low", "macro_f1", "auc", "auc_null_p95"} <= set(row.index)


def test_the_logistic_probes_fast_log_loss_chooses_what_sklearns_scorer_chooses():
    from sklearn.linear_model import LogisticRegressionCV

    from drasclr_toolkit.evaluate.probes import DEFAULT_CS, make_probe, neg_log_loss

    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 8))
    for k, y in enumerate([rng.integers(0, 3, 30), (X[:, 0] + rng.normal(size=30) > 0).astype(int)]):
        ours = make_probe("categorical").fit(X, y)[-1]
        assert ours.scoring is neg_log_loss
        theirs = LogisticRegressionCV(Cs=np.asarray(DEFAULT_CS), l1_ratios=(0.0,), cv=3,
                                      scoring="neg_log_loss", max_iter=2000,
                                      use_legacy_attributes=False)
        theirs.fit(make_probe("categorical")[:-1].fit_transform(X), y)
        assert ours.C_ == pytest.approx(theirs.C_), k
        np.testing.assert_allclose(ours.scores_, theirs.scores_, rtol=1e-12, atol=1e-12)


def test_classification_finds_a_planted_class_signal():
    rng = np.random.default_rng(4)
    ids = _ids(90)
    y = rng.integers(0, 2, 90)
    X = pd.DataFrame(rng.normal(size=(90, 4)) + 1.5 * y[:, None] * [1, 0, 0, 0], index=ids)
    row = evaluate_phenotypes(X, pd.DataFrame({"cle": y}, index=ids), cv=3, n_repeats=1,
                              n_permutations=9).iloc[0]
    assert row["auc"] > 0.8 and row["accuracy"] > row["accuracy_chance"] + 0.1
    assert row["auc_p"] == pytest.approx(0.1)  # the smallest p that 9 permutations allow


class MemorisingStep(BaseEstimator, TransformerMixin):
    """A planted leak: remembers the label of every row it was fitted on and gives it back
    for those rows; any other row gets noise. Harmless when fitted on training rows only;
    a perfect predictor when it has seen the test rows."""

    def fit(self, X, y=None):
        self.memory_ = {np.asarray(row).tobytes(): value for row, value in zip(X, y)}
        return self

    def transform(self, X):
        rng = np.random.default_rng(0)
        return np.array([[self.memory_.get(np.asarray(row).tobytes(), rng.normal())]
                         for row in X])


def test_planted_leak_scores_only_when_fitted_on_all_data():
    rng = np.random.default_rng(5)
    ids = _ids(100)
    X = pd.DataFrame(rng.normal(size=(100, 5)), index=ids)  # pure noise
    labels = pd.DataFrame({"fev1_pp": rng.normal(80, 15, 100)}, index=ids)
    # Leaky: the step is fitted on all subjects before cross-validation.
    leaked = MemorisingStep().fit(X.to_numpy(), labels["fev1_pp"].to_numpy())
    X_leaky = pd.DataFrame(leaked.transform(X.to_numpy()), index=ids)
    leaky = evaluate_phenotypes(X_leaky, labels, n_repeats=1, n_permutations=0).iloc[0]
    # Ours: the same step inside the pipeline, fitted in each training fold only.
    ours = evaluate_phenotypes(X, labels, preprocessing=[("memo", MemorisingStep())],
                               n_repeats=1, n_permutations=0).iloc[0]
    assert leaky["r2"] > 0.95
    assert ours["r2"] < 0.05
    assert ours["verdict"] .startswith("not tested (no permutation null run")


def test_dict_of_feature_sets_aligns_by_id_and_drops_missing_targets():
    X, labels = _planted(n=80, d=4)
    labels.loc[labels.index[:5], "planted"] = np.nan
    shuffled = X.sample(frac=1.0, random_state=0)  # another row order: matched by id
    with pytest.warns(UserWarning, match="5 subjects have no value"):
        table = evaluate_phenotypes({"a": X, "b": shuffled.iloc[:, :2]}, labels, ["planted"],
                                    n_repeats=1, n_permutations=0)
    assert table["feature_set"].tolist() == ["a", "b"]
    assert table["n"].tolist() == [75, 75] and table["n_dropped"].tolist() == [5, 5]
    assert table["n_features"].tolist() == [4, 2]
    # a plain array is taken in the labels' order
    arr = evaluate_phenotypes(X.to_numpy(), labels, ["noise"], n_repeats=1,
                              n_permutations=0)
    assert arr.loc[0, "n"] == 80


def test_missing_target_names_the_available_columns():
    X, labels = _planted(n=20, d=2)
    with pytest.raises(KeyError, match="'gold'.*available columns.*planted"):
        evaluate_phenotypes(X, labels, ["gold"])


def test_rare_classes_are_dropped_and_folds_reduced_with_warnings():
    rng = np.random.default_rng(6)
    ids = _ids(40)
    y = np.r_[np.zeros(20), np.ones(17), np.full(3, 2), ].astype(int)
    y[-1] = 3  # class 3: one subject; class 2: two subjects
    X = pd.DataFrame(rng.normal(size=(40, 3)), index=ids)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = evaluate_phenotypes(X, pd.DataFrame({"mmrc": y}, index=ids), cv=5,
                                  n_repeats=1, n_permutations=0).iloc[0]
    text = " ".join(str(w.message) for w in caught)
    assert "classes [2, 3]" in text
    assert row["n"] == 37 and row["n_dropped"] == 3 and row["cv"] == 5
    y2 = np.r_[np.zeros(30), np.ones(4)].astype(int)
    with pytest.warns(UserWarning, match="4-fold instead of 5-fold"):
        row = evaluate_phenotypes(X.iloc[:34], pd.DataFrame({"pse": y2}, index=ids[:34]),
                                  n_repeats=1, n_permutations=0).iloc[0]
    assert row["cv"] == 4


def test_target_kind_inference_and_override():
    assert infer_target_kind(pd.Series([0, 1, 2, 3, 4, 1])) == "categorical"
    assert infer_target_kind(pd.Series([0.55, 0.71, 0.64])) == "continuous"
    assert infer_target_kind(pd.Series(np.arange(50))) == "continuous"
    X, labels = _planted(n=60, d=3)
    labels["grade"] = np.arange(60) % 3
    row = evaluate_phenotypes(X, labels, ["grade"], kinds={"grade": "continuous"},
                              n_repeats=1, n_permutations=0).iloc[0]
    assert row["kind"] == "continuous" and "r2" in row


# --------------------------------------------------------------------------- densitometry
def _two_lung_phantom():
    ct = np.full((30, 10, 40), -860, np.int16)
    ct[:10] = -700  # dense lower third (low z = inferior with the identity direction)
    ct[20:, :, :20] = -990  # emphysema in the right upper zone (low x = right in LPS)
    mask = np.zeros(ct.shape, np.uint8)
    mask[:, :, 2:18] = 1
    mask[:, :, 22:38] = 2
    return ct, mask


def test_densitometry_values_and_zones():
    ct, mask = _two_lung_phantom()
    d = densitometry(ct, mask, spacing=(2.0, 2.0, 2.0))
    lung = ct[mask > 0].astype(float)
    assert d["laa950_pct"] == pytest.approx(100 * (lung < -950).mean())
    assert d["perc15_hu"] == pytest.approx(np.percentile(lung, 15))
    assert d["mld_hu"] == pytest.approx(lung.mean())
    assert d["volume_ml"] == pytest.approx((mask > 0).sum() * 8 / 1000)
    hist = d[[k for k in d.index if k.startswith("hist_")]]
    assert hist.sum() == pytest.approx(1.0) and hist["hist_lt-1000"] == 0
    assert d["right_upper_laa950_pct"] == 100.0 and d["left_upper_laa950_pct"] == 0.0
    assert d["right_lower_mld_hu"] == -700 and d["left_middle_mld_hu"] == -860
    assert sum(d[f"{z}_volume_ml"] for z in ZONES) == pytest.approx(d["volume_ml"])
    # a binary mask is split at the midline gap: same zones
    binary = densitometry(ct, mask > 0, spacing=(2.0, 2.0, 2.0))
    pd.testing.assert_series_equal(binary, d)


def test_densitometry_follows_the_direction_matrix():
    import SimpleITK as sitk

    ct, mask = _two_lung_phantom()
    # the same anatomy stored with z running inferior-ward: the array is flipped in z
    image = sitk.GetImageFromArray(ct[::-1].copy())
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    d = densitometry(image, mask[::-1].copy())
    assert d["right_upper_laa950_pct"] == 100.0 and d["right_lower_mld_hu"] == -700
    with pytest.raises(ValueError, match="axis-aligned"):
        c = np.cos(0.3)
        s = np.sin(0.3)
        lung_zones(mask, (1, 1, 1), direction=[c, -s, 0, s, c, 0, 0, 0, 1])


def test_cohort_densitometry_matches_the_generator_on_true_masks(tiny_cohort, tmp_path):
    from drasclr_toolkit.data import Manifest

    table = tiny_cohort.table.copy().iloc[:2]
    cohort_dir = tiny_cohort.image_path(table["subject_id"].iloc[0]).parent.parent
    table["lung_mask"] = [str(cohort_dir / "ground_truth" / f"{sid}_lungs.nii.gz")
                          for sid in table["subject_id"]]
    manifest = Manifest.from_dataframe(table, base_dir=cohort_dir)
    cache = tmp_path / "dens.csv"
    dens = cohort_densitometry(manifest, cache=cache, mask_source="manifest")
    truth = pd.read_csv(cohort_dir / "ground_truth.csv", dtype={"subject_id": str}
                        ).set_index("subject_id").loc[dens.index]
    # the generator measured LAA-950 and the lung volume on the same image and mask
    np.testing.assert_allclose(dens["laa950_pct"], truth["laa950"], atol=1e-3)
    np.testing.assert_allclose(dens["volume_ml"], truth["lung_volume_ml"], atol=0.1)
    np.testing.assert_allclose(dens[[f"right_{z}_volume_ml" for z in
                                     ("upper", "middle", "lower")]].sum(axis=1),
                               truth["right_lung_ml"], atol=0.1)
    # resumed from the cache: nothing measured again, same numbers
    again = cohort_densitometry(manifest, cache=cache, mask_source="manifest")
    pd.testing.assert_frame_equal(again, dens, check_dtype=False)


# --------------------------------------------------------------------------- features
def _embeddings():
    lm = np.array([[x, 0, z] for x in (0, 64) for z in (0, 32, 64)])
    patch = np.arange(2 * 6 * 3, dtype=np.float32).reshape(2, 6, 3)
    lung = np.array([[1, 1, 1, 0, 0, 1], [1, 0.5, 1, 1, 1, 1]], np.float32)
    return Embeddings(patch, ["a", "b"], lm, np.zeros((6, 3)), lung)


def test_pooling_methods_and_missing_landmarks():
    emb = _embeddings()
    weighted = pool_embeddings(emb, "lung_weighted")
    w = emb.lung_fraction[0]
    np.testing.assert_allclose(weighted.loc["a"], (w[:, None] * emb.patch[0]).sum(0) / w.sum())
    zones = list(landmark_zones(emb.landmarks))
    assert zones == ["right_lower", "right_middle", "right_upper", "left_lower",
                     "left_middle", "left_upper"]
    pooled = pool_embeddings(emb, "zones")
    assert pooled.shape == (2, 18)
    assert pooled.loc["a", "left_upper_h0"] == emb.patch[0, 5, 0]
    emb.patch[0, 0] = np.nan  # a missing landmark is left out, not propagated
    mean = pool_embeddings(emb, "mean")
    assert mean.loc["a", "h0"] == pytest.approx(np.mean(emb.patch[0, 1:, 0]))
    with pytest.warns(UserWarning, match="right_lower"):
        pooled = pool_embeddings(emb, "zones")
    assert np.isnan(pooled.loc["a", "right_lower_h0"])
    assert not np.isnan(pooled.loc["b", "right_lower_h0"])
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_embeddings(emb, "median")


def test_zone_pooling_weighted_by_lung_fraction():
    # two landmarks in the right upper zone: one all lung, one all chest wall
    lm = np.array([[x, 0, z] for x in (0, 64) for z in (0, 32, 64)] + [[0, 0, 64]])
    patch = np.zeros((2, 7, 2), np.float32)
    patch[:, 2] = [1.0, 1.0]     # the lung patch of the zone
    patch[:, 6] = [-3.0, 5.0]    # the chest-wall patch of the same zone
    lung = np.ones((2, 7), np.float32)
    lung[:, 6] = 0.0
    lung[1, 2] = 0.0             # subject b: no lung in the zone at all → plain mean
    emb = Embeddings(patch, ["a", "b"], lm, np.zeros((7, 3)), lung)
    assert landmark_zones(lm)[[2, 6]].tolist() == ["right_upper", "right_upper"]
    plain = pool_embeddings(emb, "zones")
    weighted = pool_embeddings(emb, "zones_lung_weighted")
    assert weighted.attrs["pooling"] == "zones_lung_weighted"
    assert list(weighted.columns) == list(plain.columns)
    assert plain.loc["a", ["right_upper_h0", "right_upper_h1"]].tolist() == [-1.0, 3.0]
    assert weighted.loc["a", ["right_upper_h0", "right_upper_h1"]].tolist() == [1.0, 1.0]
    assert weighted.loc["b", ["right_upper_h0", "right_upper_h1"]].tolist() == [-1.0, 3.0]
    emb.patch[0, 2] = np.nan     # the lung patch missing: the chest-wall one is all that is left
    assert pool_embeddings(emb, "zones_lung_weighted").loc["a", "right_upper_h0"] == -3.0


def test_feature_sets_combine_embeddings_with_densitometry():
    emb = _embeddings()
    dens = pd.DataFrame({"laa950_pct": [1.0, 2.0, 3.0]}, index=["b", "a", "c"])
    with pytest.warns(UserWarning, match="1 subjects are missing"):
        sets = feature_sets({"drasclr": emb, "densitometry": dens}, "drasclr+densitometry")
    both = sets["drasclr+densitometry"]
    assert both.index.tolist() == ["a", "b"]
    assert both.loc["a", "densitometry:laa950_pct"] == 2.0
    assert both.shape[1] == 4
    with pytest.raises(KeyError, match="'dens'"):
        feature_sets({"drasclr": emb}, ["drasclr+dens"])


def test_landmark_zones_from_an_atlas_use_its_geometry_and_lung_labels():
    import SimpleITK as sitk

    from drasclr_toolkit.preprocess.atlas import Atlas

    mask = np.zeros((48, 16, 48), np.uint8)  # (z, y, x)
    mask[:, :, 2:22] = 1  # right lung: low x (LPS +x is the patient's left)
    mask[:, :, 26:46] = 2
    image = sitk.GetImageFromArray(mask[::-1].copy())  # stored with z running downwards
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    atlas = Atlas.from_mask(image, patch_size=8, step=8, min_lung_fraction=0.5)
    zones = landmark_zones(atlas.landmarks, atlas=atlas)
    for (x, _, z), zone in zip(atlas.landmarks, zones):
        side = "right" if x + 4 < 24 else "left"
        level = "lower" if z + 4 > 32 else ("upper" if z + 4 < 16 else "middle")
        assert zone == f"{side}_{level}", ((x, z), zone)


def test_a_target_too_thin_to_cross_validate_gets_a_row_that_says_why():
    X, labels = _planted(n=12, d=2)
    labels["gold"] = [0] * 10 + [1, 2]
    with pytest.warns(UserWarning, match="not evaluated"):
        table = evaluate_phenotypes(X, labels, ["planted", "gold"], n_repeats=1,
                                    n_permutations=0)
    assert table.loc[0, "verdict"] .startswith("not tested")
    assert table.loc[1, "verdict"].startswith("not evaluated: target 'gold'")
