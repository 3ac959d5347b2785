"""IndexSpace: L2 / inner product in index space equals the model's ground cost for every metric of the family."""

import numpy as np
import pytest
import torch

from hf_mltm.index import IndexSpace
from hf_mltm.models.omit import OMITImageTextConfig

from .conftest import tiny_model


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        ({"metric_type": "full", "metric_init": "paper"}, "mahalanobis"),
        ({"metric_type": "diagonal", "metric_init": "paper"}, "mahalanobis"),
        ({"metric_type": "lowrank", "metric_rank": 5}, "mahalanobis"),
        ({"metric_type": "projected", "metric_init": "paper"}, "mahalanobis"),
        ({"metric_type": "euclidean"}, "euclidean"),
        ({"loss_type": "infonce"}, "cosine"),
        ({"loss_type": "triplet", "metric_type": "diagonal"}, "cosine"),
    ],
)
def test_index_space_cost_equals_the_models_pairwise_cost(tokenizer, config, kind):
    model = tiny_model(tokenizer, **config)
    space = IndexSpace.from_model(model)
    assert space.kind == kind
    generator = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(7, 16, generator=generator), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(9, 16, generator=generator), dim=-1)
    with torch.no_grad():
        expected = model.pairwise_cost(x, y)
    torch.testing.assert_close(space.cost(x, y), expected, atol=2e-6, rtol=1e-5)
    # faiss scores of the index vectors convert back to the same cost
    a, b = space.to_index(x).numpy(), space.to_index(y).numpy()
    scores = a @ b.T if space.metric == "ip" else ((a[:, None] - b[None]) ** 2).sum(-1)
    np.testing.assert_allclose(space.cost_from_scores(scores), expected.numpy(), atol=2e-6, rtol=1e-5)
    if config.get("metric_type") == "lowrank":
        assert space.index_dim == 5  # the index stores x L^T, shape (n, rank)


def test_projected_metric_that_is_not_psd_is_refused(tokenizer):
    model = tiny_model(tokenizer, metric_type="projected")
    with torch.no_grad():
        model.metric.weight.copy_(torch.diag(torch.linspace(-1.0, 1.0, 16)))
    with pytest.raises(ValueError, match=r"not positive semi-definite.*project_\(\)"):
        IndexSpace.from_model(model)
    model.metric.project_()
    assert IndexSpace.from_model(model).kind == "mahalanobis"


def test_image_text_model_is_refused_with_the_reason():
    class FakeOMIT(torch.nn.Module):
        config = OMITImageTextConfig(image_fragment_dim=8)

    with pytest.raises(ValueError, match="fragment OT"):
        IndexSpace.from_model(FakeOMIT())


def test_bad_embeddings_name_the_argument():
    space = IndexSpace("euclidean", 4)
    with pytest.raises(ValueError, match=r"embeds must be a \(n, d=4\)"):
        space.to_index(torch.zeros(3, 5))
    bad = torch.zeros(3, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf in rows \[1\]"):
        space.to_index(bad)
    with pytest.raises(ValueError, match="kind='mahalanobis' needs transform"):
        IndexSpace("mahalanobis", 4)
    with pytest.raises(ValueError, match=r"transform must be a \(r, d=4\)"):
        IndexSpace("mahalanobis", 4, torch.eye(3))
