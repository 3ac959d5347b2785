import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hf_mltm.ot import all_gather_with_grad, gather_tensor_dict, mltm_loss, sq_euclidean_cost, world_info


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _full_problem():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    return x, y


def _global_loss(x, y):
    return mltm_loss(sq_euclidean_cost(x, y), 0.5, normalization="none")


def _worker(rank: int, world_size: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        # Ragged second dim: rank r holds r + 2 columns; rank 0 has 2 rows, rank 1 has 3.
        local = torch.full((2 + rank, 2 + rank), float(rank + 1), requires_grad=True)
        gathered = all_gather_with_grad(local)
        mask = gather_tensor_dict({"mask": torch.ones(2 + rank, 2 + rank, dtype=torch.bool)})["mask"]
        (gathered * torch.arange(1.0, 4.0)).sum().backward()
        # Global-batch loss: rank r owns rows [3r, 3r + 3) of x and y; the gradient of x_r after the gather's
        # backward is world_size * dL/dx_r (every rank holds the same loss).
        x, y = _full_problem()
        x_local = x[3 * rank: 3 * rank + 3].clone().requires_grad_(True)
        y_local = y[3 * rank: 3 * rank + 3].clone().requires_grad_(True)
        loss = _global_loss(all_gather_with_grad(x_local), all_gather_with_grad(y_local))
        loss.backward()
        results[rank] = {
            "world": world_info(),
            "gathered": gathered.detach(),
            "mask": mask,
            "grad": local.grad,
            "loss": loss.detach(),
            "x_grad": x_local.grad,
            "y_grad": y_local.grad,
        }
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results():
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), results), nprocs=2, join=True)
    return dict(results)


def test_gather_pads_ragged_dims_and_keeps_rank_order(two_rank_results):
    expected = torch.zeros(5, 3)
    expected[:2, :2] = 1.0
    expected[2:, :3] = 2.0
    for rank in (0, 1):
        assert two_rank_results[rank]["world"] == (rank, 2)
        torch.testing.assert_close(two_rank_results[rank]["gathered"], expected)
        mask = two_rank_results[rank]["mask"]
        assert mask.dtype == torch.bool and mask.shape == (5, 3)
        assert mask.sum().item() == 2 * 2 + 3 * 3 and not mask[:2, 2].any()


def test_gather_backward_sums_the_gradients_of_all_ranks(two_rank_results):
    # Each rank's loss is sum(gathered * [1, 2, 3]); rank 0's entries sit in columns 0-1, rank 1's in 0-2. The
    # backward sums both ranks' (identical) gradients: 2 * column weight.
    torch.testing.assert_close(two_rank_results[0]["grad"], torch.tensor([[2.0, 4.0], [2.0, 4.0]]))
    torch.testing.assert_close(two_rank_results[1]["grad"], torch.tensor([[2.0, 4.0, 6.0]] * 3))


def test_two_rank_global_loss_and_gradients_equal_one_process(two_rank_results):
    x, y = _full_problem()
    x.requires_grad_(True)
    y.requires_grad_(True)
    loss = _global_loss(x, y)
    loss.backward()
    for rank in (0, 1):
        torch.testing.assert_close(two_rank_results[rank]["loss"], loss.detach())
        # DDP averages over the 2 ranks what the gather summed: world_size * (local slice of the full gradient).
        torch.testing.assert_close(two_rank_results[rank]["x_grad"] / 2, x.grad[3 * rank: 3 * rank + 3])
        torch.testing.assert_close(two_rank_results[rank]["y_grad"] / 2, y.grad[3 * rank: 3 * rank + 3])


def test_single_process_is_the_identity():
    tensor = torch.randn(3, 2, requires_grad=True)
    assert world_info() == (0, 1)
    assert all_gather_with_grad(tensor) is tensor
    assert gather_tensor_dict({"a": tensor})["a"] is tensor


def test_scalar_is_rejected():
    with pytest.raises(ValueError, match="per-sample"):
        all_gather_with_grad(torch.tensor(1.0))
