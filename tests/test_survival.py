"""Survival evaluation against the libraries' own numbers on their bundled real data
(scikit-survival's veterans and WHAS500, lifelines' Rossi recidivism)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from drasclr_toolkit.evaluate import (evaluate_survival, risk_groups, survival_metrics,
                                      to_structured)
from drasclr_toolkit.evaluate.survival import LifelinesCoxPH, _survival_curves


@pytest.fixture(scope="module")
def veterans():
    from sksurv.datasets import load_veterans_lung_cancer
    from sksurv.preprocessing import OneHotEncoder

    X, y = load_veterans_lung_cancer()
    return OneHotEncoder().fit_transform(X).astype(float), y


@pytest.fixture(scope="module")
def whas500():
    from sksurv.datasets import load_whas500
    from sksurv.preprocessing import OneHotEncoder

    X, y = load_whas500()
    return OneHotEncoder().fit_transform(X).astype(float), y


@pytest.fixture(scope="module")
def rossi():
    from lifelines.datasets import load_rossi

    data = load_rossi()
    return data.drop(columns=["week", "arrest"]).astype(float), data["week"], data["arrest"]


def test_apparent_harrell_c_on_veterans_is_the_published_value(veterans):
    from lifelines import CoxPHFitter
    from sksurv.metrics import concordance_index_censored

    X, y = veterans
    yy = to_structured(y["Survival_in_days"], y["Status"])
    model = LifelinesCoxPH(penalizer=0.0).fit(X.to_numpy(), yy)
    c = survival_metrics(yy, yy, model.predict(X.to_numpy()))["harrell_c"]
    assert c == pytest.approx(0.736, abs=0.005)
    # the same number as the libraries give by themselves
    frame = X.assign(T=y["Survival_in_days"], E=y["Status"].astype(int))
    assert c == pytest.approx(CoxPHFitter().fit(frame, "T", "E").concordance_index_, abs=1e-6)
    assert c == pytest.approx(concordance_index_censored(
        y["Status"], y["Survival_in_days"], model.predict(X.to_numpy()))[0])


def test_metrics_equal_the_library_functions(whas500):
    from sksurv.metrics import (concordance_index_ipcw, cumulative_dynamic_auc,
                                integrated_brier_score)

    X, y = whas500
    yy = to_structured(y["lenfol"], y["fstat"])
    rng = np.random.default_rng(0)
    test = rng.random(len(yy)) < 0.3
    train = ~test
    # keep the test follow-up inside the training follow-up so no censoring is needed
    test &= yy["time"] < yy["time"][train].max()
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LifelinesCoxPH()).fit(X[train].to_numpy(),
                                                                 yy[train])
    risk = model.predict(X[test].to_numpy())
    times = np.percentile(yy["time"][test], [20, 40, 60])
    surv = _survival_curves(model, X[test].to_numpy(), times)
    ours = survival_metrics(yy[train], yy[test], risk, surv, times, horizons=list(times),
                            tau=1000.0)
    assert ours["uno_c"] == pytest.approx(
        concordance_index_ipcw(yy[train], yy[test], risk, tau=1000.0)[0])
    aucs, _ = cumulative_dynamic_auc(yy[train], yy[test], risk, times)
    assert [ours[f"auc_at_{t:g}"] for t in times] == pytest.approx(list(aucs))
    assert ours["ibs"] == pytest.approx(integrated_brier_score(yy[train], yy[test], surv, times))


def test_cross_validated_c_on_whas500_and_rossi_and_its_shuffled_null(whas500, rossi):
    X, y = whas500
    table = evaluate_survival(X, y["lenfol"], y["fstat"], models=("coxph",), n_repeats=1,
                              n_permutations=3)
    row = table.iloc[0]
    assert 0.55 < row["harrell_c"] < 0.80
    assert row["harrell_c_ci_low"] < row["harrell_c"] < row["harrell_c_ci_high"]
    assert abs(row["harrell_c_null_mean"] - 0.5) < 0.05
    assert 0.0 < row["ibs"] < 0.25 and row["ibs"] < row["ibs_null_mean"]
    for col in ("feature_set", "model", "n", "n_events", "uno_c", "td_auc_mean",
                "uno_c_null_p95", "ibs_null_p05", "harrell_c_p", "ci_method", "verdict"):
        assert col in table.columns, col

    Xr, week, arrest = rossi
    row = evaluate_survival(Xr, week, arrest, models=("coxph",), n_repeats=2,
                            n_permutations=3).iloc[0]
    assert 0.55 < row["harrell_c"] < 0.80
    assert abs(row["harrell_c_null_mean"] - 0.5) < 0.06


def test_coxnet_rsf_and_pca_run_and_horizons_outside_follow_up_are_nan(rossi):
    Xr, week, arrest = rossi
    table = evaluate_survival(Xr, week, arrest, models=("coxnet", "rsf"), pca=4, cv=3,
                              n_repeats=1, n_permutations=0, n_estimators=20,
                              horizons=[20.0, 500.0])
    assert table["model"].tolist() == ["coxnet", "rsf"]
    assert (table["harrell_c"] > 0.55).all()
    assert table["auc_at_20"].notna().all() and table["auc_at_500"].isna().all()
    assert table["ibs"].between(0, 0.25).all()
    assert table["verdict"].str.startswith("not tested").all()


def test_risk_groups_km_and_figure():
    rng = np.random.default_rng(1)
    ids = [f"s{i}" for i in range(200)]
    X = pd.DataFrame(rng.normal(size=(200, 3)), index=ids)
    time = pd.Series(rng.exponential(np.exp(-1.2 * X[0])) + 0.01, index=ids)
    event = pd.Series(rng.random(200) < 0.8, index=ids)
    groups = risk_groups(X, time, event, n_groups=3, n_permutations=19)
    # every permuted grouping separates less than the real one: the smallest p 19 allow
    assert groups.logrank["p_value"] == pytest.approx(1 / 20)
    assert groups.logrank["p_value_naive"] < 1e-4 and groups.logrank["degrees_of_freedom"] == 2
    assert set(groups.table["group"]) == {"low risk", "middle risk", "high risk"}
    median = groups.table.groupby("group")["time"].median()
    assert median["high risk"] < median["middle risk"] < median["low risk"]
    assert {"group", "time", "survival", "ci_low", "ci_high", "at_risk"} <= set(groups.curves)
    from drasclr_toolkit.viz.evaluation import km_figure

    fig = km_figure(groups)
    assert len(fig.data) == 9 and "log-rank" in fig.layout.title.text
    noise = risk_groups(X[[1, 2]], time, event)
    assert noise.logrank["p_value"] > 0.01
