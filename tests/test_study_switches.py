"""Each variant of the recipe study (issue 18) is one config switch that really changes the
run: intensity augmentation on/off, the network's HU window (carried from pretraining to
embedding, BatchNorm recalibration and fine-tuning), conditioning and the neighbour loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drasclr_toolkit.config import ConfigError
from drasclr_toolkit.embed import extract_embeddings
from drasclr_toolkit.models import DrasCLREncoder
from drasclr_toolkit.patch_source import ArrayPatchSource
from drasclr_toolkit.ssl import PatchAugmenter, hu_to_unit
from drasclr_toolkit.ssl.device_augment import DeviceAugmenter
from drasclr_toolkit.train import PretrainConfig, pretrain, read_metrics
from drasclr_toolkit.train.loop import PretrainRun

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(width=0.125, rep_dim=8, proj_dim=8, num_experts=2, queue_size=0,
            batch_negatives=True, batch_size=4, progress=False, device="cpu", cpu_threads=1)
LUNG = [-1024.0, -500.0]


@pytest.fixture(scope="module")
def source() -> ArrayPatchSource:
    return ArrayPatchSource.synthetic(n_subjects=4, n_locations=4, patch_size=20, seed=0)


def test_intensity_augmentation_switch_turns_noise_and_contrast_off(source, tmp_path):
    on = PretrainRun(source, dict(TINY, augment_noise_p=0.5, augment_contrast_p=0.7), tmp_path / "on")
    off = PretrainRun(source, dict(TINY, augment_noise_p=0.5, augment_contrast_p=0.7,
                                   augment_intensity=False), tmp_path / "off")
    assert (on.dataset.augmenter.params["p_noise"], on.dataset.augmenter.params["p_contrast"]) == (0.5, 0.7)
    assert (off.dataset.augmenter.params["p_noise"], off.dataset.augmenter.params["p_contrast"]) == (0, 0)
    on.close(), off.close()
    # Geometry off too: with intensity augmentation off a view is the patch itself; on (p=1)
    # it is not. Both the host (MONAI) and the batched torch path.
    patch = np.asarray(source.read_location(0, [0, 1, 2]))
    still = dict(translate=0, rotate_deg=0, scale=0)
    for make in (PatchAugmenter, lambda **kw: DeviceAugmenter(**kw)):
        quiet = make(**still, p_noise=0, p_contrast=0)
        loud = make(**still, p_noise=1, p_contrast=1)
        views = [aug(torch.as_tensor(patch) if isinstance(aug, DeviceAugmenter) else patch,
                     None, seed=3)[0][:, 0] for aug in (quiet, loud)]
        np.testing.assert_allclose(views[0].numpy(), hu_to_unit(patch), atol=1e-4)
        assert float((views[1] - views[0]).abs().mean()) > 0.01


def test_hu_window_maps_its_ends_to_minus_one_and_one_in_every_path():
    hu = np.array([[-1100, -1024, -762, -500, 0]], np.float32)
    np.testing.assert_allclose(hu_to_unit(hu, LUNG), [[-1, -1, 0, 1, 1]], atol=1e-6)
    patch = np.full((2, 8, 8, 8), -762, np.int16)
    for aug in (PatchAugmenter(enabled=False, window=LUNG),
                PatchAugmenter(translate=0, rotate_deg=0, scale=0, p_noise=0, p_contrast=0,
                               window=LUNG)):
        v1, _, _ = aug(patch, None, seed=0)
        np.testing.assert_allclose(v1.numpy(), 0.0, atol=1e-5)
    dev = DeviceAugmenter(translate=0, rotate_deg=0, scale=0, p_noise=0, p_contrast=0, window=LUNG)
    np.testing.assert_allclose(dev(torch.as_tensor(patch), None, seed=0)[0].numpy(), 0.0, atol=1e-5)
    with pytest.raises(ConfigError, match="hu_window"):
        PretrainConfig.from_dict({"hu_window": [240, -1024]})


def test_the_trained_window_travels_to_embeddings_and_fine_tuning(source, tmp_path):
    final = pretrain(source, dict(TINY, max_steps=2, hu_window=LUNG), tmp_path / "lung")
    state = torch.load(final, weights_only=True)
    assert list(state["config"]["hu_window"]) == LUNG
    emb = extract_embeddings(source, checkpoint=final, progress=False)
    assert emb.provenance["hu_window"] == LUNG
    enc = DrasCLREncoder(**state["encoder_config"]).eval()
    enc.load_state_dict(state["encoder"])
    patches = np.asarray(source.read_location(1, range(4)))
    with torch.no_grad():
        want = enc.encode(hu_to_unit(torch.as_tensor(patches), LUNG)[:, None],
                          torch.as_tensor(source.landmark_coords[1])).numpy()
        wrong = enc.encode(hu_to_unit(torch.as_tensor(patches))[:, None],
                           torch.as_tensor(source.landmark_coords[1])).numpy()
    np.testing.assert_allclose(emb.patch[:, 1], want, rtol=1e-4, atol=1e-5)
    # (a 2-step encoder barely tells the windows apart; what matters is which one was used)
    assert np.abs(wrong - want).max() > 20 * np.abs(emb.patch[:, 1] - want).max()
    # the random-init baseline takes the window from the embed config
    rand = extract_embeddings(source, config={"hu_window": LUNG},
                              encoder_kwargs=dict(rep_dim=8, proj_dim=8, num_experts=2,
                                                  width=0.125), progress=False)
    assert rand.provenance["hu_window"] == LUNG
    from drasclr_toolkit.evaluate.finetune import _encoders

    *_, window = _encoders(final, None, 0, 4, np.asarray(source.landmark_coords))
    assert list(window) == LUNG


def test_a_run_from_before_the_new_options_resumes(source, tmp_path):
    """Checkpoints written before hu_window, augment_intensity, cpu_amp ... existed lack
    them: resuming reads them as their defaults instead of refusing the run."""
    cfg = dict(TINY, max_steps=4, checkpoint_every=2)
    pretrain(source, cfg, tmp_path / "run", stop_after_steps=2)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    for key in ("hu_window", "augment_intensity", "augment_contrast_p", "cpu_amp", "patch_cache_mb"):
        del state["config"][key]
    torch.save(state, path)
    pretrain(source, cfg, tmp_path / "run")
    assert len(read_metrics(tmp_path / "run")) == 4
    with pytest.raises(ConfigError, match="hu_window"):   # a real change is still refused
        pretrain(source, dict(cfg, max_steps=6, hu_window=LUNG), tmp_path / "run")


@pytest.mark.parametrize("switch, check", [
    ({"conditioning": "none"}, lambda run: run.trainer.encoder.conditioning == "none"),
    ({"conditioning": "concat"}, lambda run: run.trainer.encoder.head[0].in_features == 8 + 3),
    ({"neighbours": 0}, lambda run: run.dataset.k == 0),
])
def test_method_switches_change_the_model_or_the_loss(source, tmp_path, switch, check):
    run = PretrainRun(source, dict(TINY, max_steps=2, **switch), tmp_path)
    assert check(run)
    run.run()
    run.close()
    metrics = read_metrics(tmp_path)
    assert np.isfinite(metrics.loss).all()
    if switch.get("neighbours") == 0:   # no neighbour loss at all
        assert (metrics.loss_neighbour == 0).all() and np.allclose(metrics.loss, metrics.loss_local)


def test_every_study_variant_is_a_valid_config_that_differs_from_the_baseline():
    """benchmarks/bench_recipe.py's variants are config overrides only: each one validates
    in its stage's schema and changes what it names."""
    import importlib.util
    from pathlib import Path

    from drasclr_toolkit.config import load_config
    from drasclr_toolkit.embed import EmbedConfig

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_recipe.py"
    spec = importlib.util.spec_from_file_location("bench_recipe", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    base = load_config("small")
    for name, overrides in recipe.VARIANTS.items():
        config = recipe.apply_overrides(base, overrides)
        PretrainConfig.from_dict(config["pretrain"])
        EmbedConfig.from_dict(config["embed"])
        assert (config != base) == bool(overrides), name
        data_changed = any(k.split(".")[0] in ("synthetic", "preprocess") for k in overrides)
        assert (recipe.data_key(config) != recipe.data_key(base)) == data_changed, name
