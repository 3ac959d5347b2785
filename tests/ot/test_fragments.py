import math

import numpy as np
import ot
import pytest
import torch
from torch.nn import functional as F

from hf_mltm.ot import fragment_ot_scores


def fragments(n, k, d=16, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, k, d, generator=generator, dtype=dtype), dim=-1)


def masks(lengths, size):
    return torch.arange(size)[None] < torch.tensor(lengths)[:, None]


def unrolled_scores(image, text, image_mask, text_mask, epsilon, mass=1.0, iterations=2000):
    """Independent float64 reference: log-domain Sinkhorn on the explicitly augmented problem (partial transport:
    one dummy point per side, mass 1 - mass, zero cost to real points, infinite cost dummy-dummy), differentiated by
    autograd through every iteration."""
    similarity = torch.einsum("brd,cld->bcrl", image, text)
    B, C, R, L = similarity.shape
    a = (image_mask.double() / image_mask.sum(-1, keepdim=True))[:, None].expand(B, C, R)
    b = (text_mask.double() / text_mask.sum(-1, keepdim=True))[None].expand(B, C, L)
    cost = 1 - similarity
    if mass < 1:
        augmented = torch.zeros(B, C, R + 1, L + 1, dtype=cost.dtype)
        augmented[..., :R, :L] = cost
        augmented[..., R, L] = math.inf
        cost = augmented
        slack = torch.full((B, C, 1), 1 - mass, dtype=cost.dtype)
        a, b = torch.cat([a, slack], -1), torch.cat([b, slack], -1)
    log_a, log_b = torch.log(a), torch.log(b)
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    for _ in range(iterations):
        f = epsilon * (log_a - torch.logsumexp((g[..., None, :] - cost) / epsilon, -1))
        f = torch.where(torch.isfinite(log_a), f, -math.inf)
        g = epsilon * (log_b - torch.logsumexp((f[..., :, None] - cost) / epsilon, -2))
        g = torch.where(torch.isfinite(log_b), g, -math.inf)
    plan = torch.exp((f[..., :, None] + g[..., None, :] - cost) / epsilon)
    return (plan[..., :R, :L] * similarity).sum((-2, -1)) / mass


@pytest.mark.parametrize("mass", [1.0, 0.6])
def test_scores_and_implicit_gradient_match_unrolled_float64_autograd(mass):
    image = fragments(3, 6, seed=1).requires_grad_()
    text = fragments(4, 5, seed=2).requires_grad_()
    image_mask, text_mask = masks([6, 4, 5], 6), masks([5, 3, 4, 2], 5)
    weights = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    weights[1] = 0  # pairs without upstream gradient take the sparse backward path
    weights[0, 2] = 0
    ours = fragment_ot_scores(image, text, image_mask, text_mask, 0.1, mass=mass, tol=1e-13, max_iter=20000)
    assert ours.marginal_error.shape == (3, 4) and ours.marginal_error.max() < 1e-13 and ours.converged
    grads = torch.autograd.grad((ours.value * weights).sum(), (image, text))
    reference = unrolled_scores(image, text, image_mask, text_mask, 0.1, mass)
    reference_grads = torch.autograd.grad((reference * weights).sum(), (image, text))
    torch.testing.assert_close(ours.value, reference, atol=1e-11, rtol=0)
    for grad, expected in zip(grads, reference_grads, strict=True):
        assert expected.abs().max() > 1e-2  # the gradient is not trivially small
        torch.testing.assert_close(grad, expected, atol=1e-10, rtol=0)


def test_batched_scores_equal_per_pair_solves_and_pot():
    image, text = fragments(4, 7, seed=4), fragments(3, 5, seed=5)
    image_mask, text_mask = masks([7, 3, 5, 6], 7), masks([5, 2, 4], 5)
    batched = fragment_ot_scores(image, text, image_mask, text_mask, 0.05, tol=1e-12, max_iter=5000,
                                 return_plans=True)
    for i in range(4):
        for j in range(3):
            rows, cols = int(image_mask[i].sum()), int(text_mask[j].sum())
            similarity = image[i, :rows] @ text[j, :cols].T
            single = fragment_ot_scores(image[i:i + 1, :rows], text[j:j + 1, :cols], epsilon=0.05, tol=1e-12,
                                        max_iter=5000)
            torch.testing.assert_close(batched.value[i, j], single.value[0, 0], atol=1e-12, rtol=0)
            # POT's log-domain solver on the same pair, uniform marginals over the valid fragments.
            plan = ot.sinkhorn(np.full(rows, 1 / rows), np.full(cols, 1 / cols), (1 - similarity).numpy(), 0.05,
                               method="sinkhorn_log", numItermax=20000, stopThr=1e-13)
            np.testing.assert_allclose(batched.plan[i, j, :rows, :cols].numpy(), plan, atol=1e-10)
            np.testing.assert_allclose(batched.value[i, j].item(), (plan * similarity.numpy()).sum(), atol=1e-10)


def test_plans_respect_masks_and_marginals_in_float32():
    image, text = fragments(5, 9, d=32, seed=6, dtype=torch.float32), fragments(6, 8, d=32, seed=7,
                                                                                  dtype=torch.float32)
    image_mask, text_mask = masks([9, 4, 7, 1, 8], 9), masks([8, 5, 2, 6, 7, 3], 8)
    out = fragment_ot_scores(image, text, image_mask, text_mask, 0.05, tol=1e-5, return_plans=True)
    assert out.marginal_error.max() < 1e-5 and out.converged and out.value.dtype == torch.float32
    plans = out.plan
    padded = ~(image_mask[:, None, :, None] & text_mask[None, :, None, :])
    assert (plans[padded.expand_as(plans)] == 0).all()  # exactly zero mass on padding
    expected_rows = image_mask.float() / image_mask.sum(-1, keepdim=True)
    expected_cols = text_mask.float() / text_mask.sum(-1, keepdim=True)
    torch.testing.assert_close(plans.sum(-1), expected_rows[:, None].expand(5, 6, 9), atol=1e-5, rtol=0)
    torch.testing.assert_close(plans.sum(-2), expected_cols[None].expand(5, 6, 8), atol=1e-5, rtol=0)


def test_chunked_scoring_equals_unchunked_in_forward_and_backward():
    image = fragments(5, 6, seed=8).requires_grad_()
    text = fragments(4, 5, seed=9).requires_grad_()
    image_mask, text_mask = masks([6, 2, 5, 3, 6], 6), masks([5, 4, 1, 3], 5)
    weights = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    results = []
    for chunk in (None, 8, 4):  # 8 pairs = 2 images per chunk with an uneven tail; 4 = one image per chunk
        out = fragment_ot_scores(image, text, image_mask, text_mask, 0.05, tol=1e-12, max_iter=5000,
                                 pair_chunk_size=chunk)
        results.append((out.value, *torch.autograd.grad((out.value * weights).sum(), (image, text))))
    for other in results[1:]:
        for value, expected in zip(other, results[0], strict=True):
            torch.testing.assert_close(value, expected, atol=1e-12, rtol=0)


def test_partial_transport_approaches_the_exact_partial_plan_at_small_epsilon():
    image, text = fragments(1, 6, seed=11), fragments(1, 4, seed=12)
    similarity = (image[0] @ text[0].T).numpy()
    out = fragment_ot_scores(image, text, epsilon=0.005, mass=0.5, tol=1e-11, max_iter=100000, return_plans=True)
    exact = ot.partial.partial_wasserstein(np.full(6, 1 / 6), np.full(4, 1 / 4), 1 - similarity, m=0.5)
    assert abs(out.plan.sum().item() - 0.5) < 1e-9
    np.testing.assert_allclose(out.plan[0, 0].numpy(), exact, atol=2e-2)
    np.testing.assert_allclose(out.value.item(), (exact * similarity).sum() / 0.5, atol=5e-3)


def test_small_epsilon_solves_in_float64_and_stays_finite():
    image, text = fragments(2, 5, seed=13, dtype=torch.float32), fragments(2, 4, seed=14, dtype=torch.float32)
    out = fragment_ot_scores(image, text, epsilon=0.01, tol=1e-6, max_iter=5000)
    assert torch.isfinite(out.value).all() and out.value.dtype == torch.float32
    reference = fragment_ot_scores(image.double(), text.double(), epsilon=0.01, tol=1e-10, max_iter=20000)
    torch.testing.assert_close(out.value.double(), reference.value, atol=1e-5, rtol=0)


def test_unconverged_solve_warns():
    image, text = fragments(2, 5, seed=15), fragments(2, 4, seed=16)
    with pytest.warns(UserWarning, match="did not converge in 1 iterations"):
        fragment_ot_scores(image, text, epsilon=0.05, max_iter=1, check_every=1, tol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_mask": torch.zeros(2, 5, dtype=torch.bool)}, "at least one valid fragment"),
        ({"text_mask": torch.ones(3, 4, dtype=torch.bool)}, r"text_mask must have shape \(2, 4\)"),
        ({"epsilon": 0.001}, "epsilon must be >= 0.003"),
        ({"mass": 1.5}, r"mass must be in \(0, 1\]"),
        ({"pair_chunk_size": 0}, "pair_chunk_size must be >= 1"),
    ],
)
def test_invalid_inputs_raise(kwargs, match):
    image, text = fragments(2, 5, seed=17), fragments(2, 4, seed=18)
    with pytest.raises(ValueError, match=match):
        fragment_ot_scores(image, text, **kwargs)


@pytest.mark.parametrize("chunk", [None, 10])
def test_sparse_backward_equals_the_dense_backward(monkeypatch, chunk):
    import hf_mltm.ot.fragments as fragments_module

    image = fragments(6, 7, seed=19).requires_grad_()
    text = fragments(5, 4, seed=20).requires_grad_()
    image_mask, text_mask = masks([7, 3, 5, 6, 2, 7], 7), masks([4, 2, 3, 4, 1], 4)
    weights = torch.zeros(6, 5, dtype=torch.float64)
    weights[0, 1], weights[2, 2], weights[3, 0], weights[5, 4], weights[5, 1] = 1.0, -0.5, 2.0, 0.3, -1.2  # 1/6
    grads = {}
    for name, threshold in (("sparse", 1.0), ("dense", -1.0)):
        monkeypatch.setattr(fragments_module, "_SPARSE_BACKWARD_DENSITY", threshold)
        out = fragment_ot_scores(image, text, image_mask, text_mask, 0.05, tol=1e-12, max_iter=5000,
                                 pair_chunk_size=chunk)
        grads[name] = torch.autograd.grad((out.value * weights).sum(), (image, text))
    for sparse, dense in zip(grads["sparse"], grads["dense"], strict=True):
        assert dense.abs().max() > 1e-3
        torch.testing.assert_close(sparse, dense, atol=1e-12, rtol=0)
    assert grads["sparse"][0][1].abs().max() == 0  # image 1 has no pair with upstream gradient


@pytest.mark.parametrize(("num_images", "num_captions"), [(0, 3), (2, 0)])
def test_empty_gallery_gives_an_empty_result(num_images, num_captions):
    # Regression: no images (or captions) raised "range() arg 3 must not be zero".
    image = fragments(num_images, 5, seed=21).requires_grad_()
    text = fragments(num_captions, 4, seed=22).requires_grad_()
    image_mask, text_mask = torch.ones(num_images, 5, dtype=torch.bool), torch.ones(num_captions, 4, dtype=torch.bool)
    out = fragment_ot_scores(image, text, image_mask, text_mask, 0.05, return_plans=True, pair_chunk_size=4)
    assert out.value.shape == out.marginal_error.shape == (num_images, num_captions)
    assert out.plan.shape == (num_images, num_captions, 5, 4) and out.value.dtype == torch.float64
    assert out.converged and out.n_iter == 0 and out.f is None and out.g is None and out.log_plan is None
    grads = torch.autograd.grad(out.value.sum(), (image, text))  # a loss over an empty gallery back-propagates
    assert all(grad.shape == tensor.shape and not grad.any() for grad, tensor in zip(grads, (image, text), strict=True))
    assert fragment_ot_scores(image.detach(), text.detach()).plan is None


def test_result_is_an_ot_result_with_per_pair_errors():
    from hf_mltm.ot import OTResult

    image, text = fragments(3, 5, seed=23), fragments(2, 4, seed=24)
    out = fragment_ot_scores(image, text, epsilon=0.05, tol=1e-9, max_iter=5000)
    assert isinstance(out, OTResult) and out.plan is None and out.h is None and out.cost_scale == 1.0
    assert out.value.shape == out.marginal_error.shape == (3, 2) and (out.marginal_error < 1e-9).all()
    for i in range(3):
        for j in range(2):
            single = fragment_ot_scores(image[i:i + 1], text[j:j + 1], epsilon=0.05, tol=1e-9, max_iter=5000)
            torch.testing.assert_close(out.value[i, j], single.value[0, 0], atol=1e-9, rtol=0)


def test_fragment_ot_scores_type_was_replaced_by_ot_result():
    import hf_mltm.ot
    import hf_mltm.ot.fragments

    assert "FragmentOTScores" not in hf_mltm.ot.__all__
    for module in (hf_mltm.ot, hf_mltm.ot.fragments):
        with pytest.raises(AttributeError, match=r"FragmentOTScores was replaced by OTResult.*\.value \(scores\) and "
                                                 r"\.plan \(plans\)"):
            module.FragmentOTScores  # noqa: B018


def test_per_pair_mask_for_other_batch_sizes_raises_value_error_naming_both_shapes():
    image, text = fragments(2, 5, seed=25), fragments(3, 4, seed=26)
    with pytest.raises(ValueError, match=r"image_mask must have shape \(2, 5\) or \(2, 3, 5\).*got \(4, 3, 5\)"):
        fragment_ot_scores(image, text, image_mask=torch.ones(4, 3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"text_mask must have shape \(3, 4\) or \(2, 3, 4\).*got \(2, 2, 4\)"):
        fragment_ot_scores(image, text, text_mask=torch.ones(2, 2, 4, dtype=torch.bool))


@pytest.mark.parametrize("per_pair", [False, True])
def test_nan_in_masked_padding_is_ignored_and_nan_in_valid_fragments_is_located(per_pair):
    # Regression: NaN in padded fragments made the solve "diverge" and the error blamed the L2 normalisation.
    image = fragments(2, 5, seed=27).requires_grad_()
    text = fragments(3, 4, seed=28)
    image_mask = masks([3, 5], 5)
    if per_pair:
        image_mask = image_mask[:, None].expand(2, 3, 5).clone()
    clean = fragment_ot_scores(image, text, image_mask, epsilon=0.05, tol=1e-10, max_iter=5000)
    (clean_grad,) = torch.autograd.grad(clean.value.sum(), image)
    padded = image.detach().clone()
    padded[0, 3:] = float("nan")
    padded.requires_grad_()
    out = fragment_ot_scores(padded, text, image_mask, epsilon=0.05, tol=1e-10, max_iter=5000)
    (grad,) = torch.autograd.grad(out.value.sum(), padded)
    torch.testing.assert_close(out.value, clean.value, atol=0, rtol=0)
    torch.testing.assert_close(grad, clean_grad, atol=0, rtol=0)
    broken = padded.detach().clone()
    broken[1, 2, 0] = float("nan")  # a valid fragment
    with pytest.raises(ValueError, match=r"image_fragments has NaN or inf in 1 valid fragments, the first is fragment "
                                         r"2 of image 1") as error:
        fragment_ot_scores(broken, text, image_mask, epsilon=0.05)
    assert "normalis" not in str(error.value)
