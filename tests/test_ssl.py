"""drasclr_toolkit.ssl: intensity mapping, augmentation, queues, InfoNCE, momentum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drasclr_toolkit.ssl import (
    LocalInfoNCE,
    LocationQueues,
    NeighbourInfoNCE,
    PatchAugmenter,
    contrast_accuracy,
    hu_to_unit,
    make_key_encoder,
    neighbour_weight,
    update_momentum,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- intensity ---------------------------------------------------------------------------------
def test_hu_to_unit_clips_maps_and_cleans_nan_for_numpy_and_torch():
    hu = np.array([-3000, -1024, -392, 240, 3000, np.nan], dtype=np.float32)
    expected = [-1.0, -1.0, 0.0, 1.0, 1.0, -1.0]
    assert hu_to_unit(hu).tolist() == pytest.approx(expected)
    assert hu_to_unit(torch.from_numpy(hu)).tolist() == pytest.approx(expected)
    ints = torch.tensor([-1024, 240], dtype=torch.int16)
    assert hu_to_unit(ints).dtype == torch.float32


# -- augmentation ------------------------------------------------------------------------------
def _patches(b: int = 3, p: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 200, (b, p, p, p)).astype(np.int16)


def test_augmenter_is_reproducible_from_its_seed_and_views_differ():
    aug = PatchAugmenter(translate=4)
    anchor = _patches()
    neigh = np.stack([_patches(seed=1), _patches(seed=2)])
    a = aug(anchor, neigh, seed=11)
    b = aug(anchor, neigh, seed=11)
    c = aug(anchor, neigh, seed=12)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])              # two independent anchor views
    assert a[0].shape == (3, 1, 16, 16, 16) and a[2].shape == (2, 3, 1, 16, 16, 16)
    for view in a:
        assert view.dtype == torch.float32 and view.min() >= -1 and view.max() <= 1


def test_neighbour_view_is_shared_across_a_samples_neighbours():
    aug = PatchAugmenter(translate=4)
    same = _patches(b=2, seed=5)
    views = aug.shared_view(np.stack([same, same, same]), seed=3)
    # identical neighbour patches + one shared random draw → identical views
    assert torch.equal(views[0], views[1]) and torch.equal(views[1], views[2])
    # ... but samples of the batch get their own draws
    one = aug.shared_view(np.stack([same[[0, 0]]]), seed=3)
    assert not torch.equal(one[0, 0], one[0, 1])


def test_disabled_augmenter_is_the_intensity_mapping_and_nan_is_cleaned():
    patch = _patches(b=2).astype(np.float32)
    patch[0, 0, 0, 0] = np.nan
    aug = PatchAugmenter(enabled=False)
    v1, v2, _ = aug(patch, None, seed=0)
    assert torch.equal(v1, v2)
    assert torch.allclose(v1[:, 0], torch.as_tensor(hu_to_unit(patch)))
    noisy = PatchAugmenter()(patch, None, seed=0)[0]
    assert torch.isfinite(noisy).all()


# -- queues --------------------------------------------------------------------------------------
def test_queue_enqueue_pointer_wraparound_and_mask():
    q = LocationQueues(num_locations=3, size=5, dim=4, seed=0)
    initial = q.keys.clone()
    assert torch.allclose(initial.norm(dim=-1), torch.ones(3, 5))       # random unit vectors
    _, mask = q.negatives(1)
    assert not mask.any()                                                # nothing written yet
    first = torch.arange(12.0).view(3, 4)
    q.enqueue(1, first)
    keys, mask = q.negatives(1)
    assert mask.tolist() == [True, True, True, False, False]
    assert torch.equal(keys[:3], first) and int(q.ptr[1]) == 3
    assert torch.equal(q.keys[0], initial[0]) and torch.equal(q.keys[2], initial[2])  # others untouched
    second = -torch.arange(16.0).view(4, 4)
    q.enqueue(1, second)                                                  # wraps: slots 3, 4, 0, 1
    keys, mask = q.negatives(1)
    assert mask.all() and int(q.ptr[1]) == 2 and int(q.filled[1]) == 5
    assert torch.equal(keys[3:], second[:2]) and torch.equal(keys[:2], second[2:])
    assert torch.equal(keys[2], first[2])                                 # oldest survivor
    q.enqueue(0, torch.ones(7, 4))                                        # more than K: keep last K
    assert int(q.filled[0]) == 5 and int(q.ptr[0]) == 0
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        q.enqueue(0, torch.ones(2, 3))


def test_queue_leaves_out_the_querys_own_subject():
    q = LocationQueues(num_locations=1, size=4, dim=2)
    q.enqueue(0, torch.eye(2)[[0, 1, 0]], ids=torch.tensor([3, 5, 3]))
    _, mask = q.negatives(0, exclude_ids=torch.tensor([3, 5, 9]))
    assert mask.tolist() == [[False, True, False, False],
                             [True, False, True, False],
                             [True, True, True, False]]
    assert q.ids[0].tolist() == [3, 5, 3, -1]


def test_queue_memory_and_dtypes_and_state_round_trip():
    assert LocationQueues.estimate_nbytes(581, 4096, 128, "float32") == 581 * 4096 * 128 * 4
    q32 = LocationQueues(4, 8, 16, dtype="float32")
    q16 = LocationQueues(4, 8, 16, dtype="bfloat16")
    assert q32.nbytes == 4 * 8 * 16 * 4 and q16.nbytes == q32.nbytes // 2
    assert q16.keys.dtype == torch.bfloat16
    q16.enqueue(2, F.normalize(torch.randn(3, 16), dim=1))
    other = LocationQueues(4, 8, 16, dtype="bfloat16", seed=99)
    other.load_state_dict(q16.state_dict())
    assert torch.equal(other.keys, q16.keys) and torch.equal(other.filled, q16.filled)
    with pytest.raises(ValueError, match="float64"):
        LocationQueues(1, 1, 1, dtype="float64")


# -- losses --------------------------------------------------------------------------------------
def test_local_infonce_equals_hand_computed_cross_entropy():
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=1)
    k = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=1)
    negs = F.normalize(torch.tensor([[1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]), dim=1)
    t = 0.2
    # explicit logits, computed entry by entry
    rows = []
    for i in range(2):
        rows.append([float(q[i] @ k[i]) / t] + [float(q[i] @ n) / t for n in negs])
    logits = torch.tensor(rows)
    expected = F.cross_entropy(logits, torch.zeros(2, dtype=torch.long))
    # and the same number from the log-softmax definition
    by_hand = -np.mean([r[0] - math.log(sum(math.exp(v) for v in r)) for r in rows])
    loss, got_logits = LocalInfoNCE(temperature=t)(q, k, negs)
    assert torch.allclose(got_logits, logits, atol=1e-6)
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    assert float(loss) == pytest.approx(by_hand, abs=1e-5)


def test_masked_negatives_are_left_out_exactly():
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    negs = F.normalize(torch.randn(6, 8), dim=1)
    mask = torch.tensor([True, False, True, True, False, False])
    loss_fn = LocalInfoNCE(0.2)
    masked, _ = loss_fn(q, k, negs, mask)
    kept, _ = loss_fn(q, k, negs[mask])
    assert float(masked) == pytest.approx(float(kept), abs=1e-6)
    empty, logits = loss_fn(q, k, negs, torch.zeros(6, dtype=torch.bool))
    assert float(empty) == pytest.approx(0.0, abs=1e-6)   # only the positive is left


def test_neighbour_infonce_sums_neighbours_then_normalises():
    torch.manual_seed(1)
    neigh = F.normalize(torch.randn(2, 3, 8), dim=-1)        # k=2, B=3
    key = F.normalize(torch.randn(3, 8), dim=1)
    negs = F.normalize(torch.randn(5, 8), dim=1)
    loss, _ = NeighbourInfoNCE(0.2, "sum")(neigh, key, negs)
    combined = F.normalize(neigh[0] + neigh[1], dim=1)
    expected, _ = LocalInfoNCE(0.2)(combined, key, negs)
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    mean_fn = NeighbourInfoNCE(0.2, "mean", normalize=False)
    assert torch.allclose(mean_fn.combine(neigh), (neigh[0] + neigh[1]) / 2)
    with pytest.raises(ValueError, match="reduction"):
        NeighbourInfoNCE(reduction="max")


def test_contrast_accuracy_and_beta_warmup():
    logits = torch.tensor([[3.0, 1.0, 2.0], [1.0, 2.0, 0.0], [5.0, 4.9, -1.0], [0.0, 0.0, -1.0]])
    assert float(contrast_accuracy(logits)) == pytest.approx(0.5)   # ties do not count
    assert neighbour_weight(0, 2.0, 10) == 0.0
    assert neighbour_weight(5, 2.0, 10) == pytest.approx(1.0)
    assert neighbour_weight(50, 2.0, 10) == 2.0 and neighbour_weight(0, 2.0, 0) == 2.0


def test_momentum_update_formula_and_frozen_key_encoder():
    torch.manual_seed(0)
    query = nn.Linear(3, 2)
    key = make_key_encoder(query)
    assert all(not p.requires_grad for p in key.parameters())
    before = key.weight.clone()
    with torch.no_grad():
        query.weight.add_(1.0)
    update_momentum(query, key, m=0.999)
    assert torch.allclose(key.weight, 0.999 * before + 0.001 * query.weight, atol=1e-7)
    with pytest.raises(ValueError):
        update_momentum(query, key, m=1.5)
