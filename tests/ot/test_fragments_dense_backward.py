"""The dense backward of `fragment_ot_scores` (most pairs carry gradient, e.g. InfoNCE): the gradient written in place
over the cached similarities, the GEMMs over the used tokens only, and the cheap finiteness check of the inputs."""

import math

import pytest
import torch

import hf_mltm.ot.fragments as fragments_module
from hf_mltm.ot import contrastive_loss, fragment_ot_scores

from .test_fragments import fragments, masks, unrolled_scores


@pytest.mark.parametrize("mass", [1.0, 0.7])
def test_infonce_gradient_matches_unrolled_float64_autograd(mass):
    # Every pair carries gradient; 30 % of the token slots are padding, so the GEMMs run over the used tokens only.
    image = fragments(5, 6, seed=31).requires_grad_()
    text = fragments(5, 6, seed=32).requires_grad_()
    image_mask, text_mask = masks([6, 5, 6, 3, 6], 6), masks([6, 2, 4, 3, 6], 6)
    ours = fragment_ot_scores(image, text, image_mask, text_mask, 0.1, mass=mass, tol=1e-13, max_iter=20000)
    grads = torch.autograd.grad(contrastive_loss(ours.value, 0.05), (image, text))
    reference = unrolled_scores(image, text, image_mask, text_mask, 0.1, mass)
    expected = torch.autograd.grad(contrastive_loss(reference, 0.05), (image, text))
    for grad, want, mask in zip(grads, expected, (image_mask, text_mask), strict=True):
        assert want.abs().max() > 1e-2
        torch.testing.assert_close(grad, want, atol=1e-10, rtol=0)
        assert (grad[~mask] == 0).all()  # padding gets exactly zero gradient


def test_gemms_over_used_tokens_give_the_gradient_of_the_full_gemms(monkeypatch):
    image = fragments(6, 5, seed=33).requires_grad_()
    text = fragments(7, 8, seed=34).requires_grad_()
    text_mask = masks([8, 3, 5, 2, 8, 4, 6], 8)  # 36 of 56 token slots used
    weights = torch.randn(6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(35))
    grads = {}
    for name, threshold in (("used_tokens", 0.0), ("all_tokens", 2.0)):
        monkeypatch.setattr(fragments_module, "_PACK_MIN_PADDING", threshold)
        problem = fragments_module._Problem(image, text, None, text_mask, 0.05, 1.0, {}, 6)
        assert (problem.token_columns is None) == (name == "all_tokens")
        out = fragment_ot_scores(image, text, text_mask=text_mask, epsilon=0.05, tol=1e-12, max_iter=5000)
        grads[name] = torch.autograd.grad((out.value * weights).sum(), (image, text))
    for packed, full in zip(grads["used_tokens"], grads["all_tokens"], strict=True):
        assert full.abs().max() > 1e-2
        torch.testing.assert_close(packed, full, atol=1e-14, rtol=0)
    assert (grads["used_tokens"][1][~text_mask] == 0).all()


def test_used_token_columns_are_the_valid_tokens_of_some_pair():
    image, text = fragments(2, 3, seed=36), fragments(3, 4, seed=37)
    per_pair = torch.zeros(2, 3, 4, dtype=torch.bool)
    per_pair[0, 0, :2] = per_pair[1, 0, 1:3] = per_pair[0, 1, 0] = per_pair[1, 2, :] = True
    per_pair[0, 2, 0] = True  # every pair needs a valid token
    per_pair[1, 1, 3] = True
    problem = fragments_module._Problem(image, text, None, per_pair, 0.05, 1.0, {}, 2)
    # caption 0 uses tokens 0-2, caption 1 tokens 0 and 3, caption 2 all four: 9 of the 12 flat slots
    assert problem.token_columns.tolist() == [0, 1, 2, 4, 7, 8, 9, 10, 11]


def test_second_backward_recomputes_what_the_first_overwrote():
    image = fragments(4, 6, seed=38, dtype=torch.float32).requires_grad_()
    text = fragments(4, 5, seed=39, dtype=torch.float32).requires_grad_()
    text_mask = masks([5, 2, 4, 3], 5)
    out = fragment_ot_scores(image, text, text_mask=text_mask, epsilon=0.05, tol=1e-4, max_iter=5000)
    loss = contrastive_loss(out.value, 0.05)
    first = torch.autograd.grad(loss, (image, text), retain_graph=True)
    second = torch.autograd.grad(loss, (image, text))  # the cached similarities now hold the first gradient
    fresh = fragment_ot_scores(image, text, text_mask=text_mask, epsilon=0.05, tol=1e-4, max_iter=5000)
    expected = torch.autograd.grad(contrastive_loss(fresh.value, 0.05), (image, text))
    for a, b, want in zip(first, second, expected, strict=True):
        assert want.abs().max() > 1e-3
        torch.testing.assert_close(a, want, atol=0, rtol=0)
        torch.testing.assert_close(b, want, atol=0, rtol=0)


def test_images_without_upstream_gradient_get_exactly_zero_in_the_dense_backward():
    image = fragments(4, 5, seed=40).requires_grad_()
    text = fragments(3, 4, seed=41).requires_grad_()
    weights = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(42))
    weights[1] = weights[3] = 0  # half of the pairs: above the sparse threshold, so the dense path runs
    out = fragment_ot_scores(image, text, epsilon=0.05, tol=1e-12, max_iter=5000)
    (grad,) = torch.autograd.grad((out.value * weights).sum(), image)
    assert (grad[1] == 0).all() and (grad[3] == 0).all() and grad[0].abs().max() > 1e-3


def test_float32_infonce_gradient_is_within_float32_rounding_of_float64():
    # Benchmark-like numerics (eps 0.05, padded captions) at 16 x 16 pairs: float32 against the same solve in float64.
    generator = torch.Generator().manual_seed(43)
    shared = torch.nn.functional.normalize(torch.randn(64, generator=generator), dim=0)
    image = torch.nn.functional.normalize(0.6 * shared + torch.randn(16, 9, 64, generator=generator) / 8, dim=-1)
    text = torch.nn.functional.normalize(0.6 * shared + torch.randn(16, 7, 64, generator=generator) / 8, dim=-1)
    text_mask = torch.arange(7)[None] < torch.randint(2, 8, (16,), generator=generator)[:, None]
    grads = {}
    for dtype in (torch.float32, torch.float64):
        leaves = (image.to(dtype).requires_grad_(), text.to(dtype).requires_grad_())
        out = fragment_ot_scores(*leaves, text_mask=text_mask, epsilon=0.05, tol=1e-5, max_iter=5000)
        grads[dtype] = torch.autograd.grad(contrastive_loss(out.value, 0.05), leaves)
    for single, double in zip(grads[torch.float32], grads[torch.float64], strict=True):
        relative = ((single.double() - double).norm() / double.norm()).item()
        assert relative < 1e-4, relative


def test_inf_in_a_valid_fragment_is_located_and_a_huge_finite_row_is_not_called_non_finite():
    image, text = fragments(2, 5, seed=44), fragments(3, 4, seed=45)
    broken = image.clone()
    broken[1, 3, 2] = -math.inf
    with pytest.raises(ValueError, match="image_fragments has NaN or inf in 1 valid fragments, the first is fragment "
                                         "3 of image 1"):
        fragment_ot_scores(broken, text)
    huge = image.clone()
    huge[0, 0, :2] = 1e308  # finite entries whose row sum overflows
    with pytest.raises(ValueError) as error:
        fragment_ot_scores(huge, text)
    assert "NaN or inf" not in str(error.value)
