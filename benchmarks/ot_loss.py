"""Speed and memory of the m-LTM loss (forward + backward) against reference-style implementations.

Every method runs side by side in this process on the same embeddings (d = 1024, batch b) and computes the loss and
its gradient with respect to both embedding batches and the metric parameters. All loss methods use the same
mathematical cost, a diagonal Mahalanobis metric (what the reference code's einsum effectively computes), so only the
implementation differs:

- ``ours``: cost by matrix products, batch-max normalisation, log-domain Sinkhorn under ``no_grad`` (tol 1e-6) and the
  closed-form gradient (:func:`hf_mltm.ot.mltm_loss`). ``ours_full_metric`` is the same with a full ``M = L^T L``
  (d x d factor), for reference.
- ``reference``: the public m-LTM code's style: a ``(b, b, d)`` difference tensor and an einsum over it, then POT
  ``ot.sinkhorn`` with default settings (kernel domain, up to 1000 iterations, stopThr 1e-9) and autograd through
  every iteration.
- ``pot_log``: our cost, POT ``ot.bregman.sinkhorn_log`` (defaults) with autograd through its iterations.
- ``ours_partial`` vs ``pot_partial``: the partial-OT loss (mass 0.9): ours (:func:`hf_mltm.ot.mltm_partial_loss`)
  against POT ``ot.partial.entropic_partial_wasserstein`` (defaults) with autograd, on our cost.

Peers (``run_peers``): GeomLoss (``SamplesLoss``, tensorized backend) and OTT-JAX (CPU jax) against ours on the same
entropic problem (normalised cost, epsilon 0.05, uniform marginals, marginal error about 1e-6), the solve alone and the
loss + gradient, at b = 256 (``--quick``), 256, 1024 and 4096 (full run) or the sizes of ``--peer_sizes``, timed
round-robin; the parameter mapping is in the docstrings of :class:`GeomLossPeer` and :class:`OTTPeer` and in
docs/benchmarks.md. Every GeomLoss call is capped at ``--peer_time_cap`` seconds (default 120): a call that has not
finished by then is stopped between two of its iterations and the row records "did not finish in N s" with the
iterations it had done (see :class:`GeomLossTimeout`). Needs ``geomloss==0.3.1``, ``ott-jax==0.6.0`` and ``jax``.

Also times the AudioCaps-size test ranking (957 clips x 4785 captions, d = 1024) from embeddings in both ranking modes.
Peak memory (MB above the resident size before the call) comes from a fresh child process per configuration (see
``_measure.py``).

Usage: ``python benchmarks/ot_loss.py [--quick] [--peer_sizes B [B ...]] [--peers_only] [--peer_time_cap S]
[--threads N] [--only KEY [KEY ...]]``; writes ``benchmarks/results/ot_loss.json`` (``ot_loss_quick.json`` with
``--quick``, ``ot_peers.json`` with ``--peers_only``, ``ot_loss_only.json`` with ``--only``), prints a markdown table and, last, one line
``speedup_ref_b256=<x> speedup_potlog_b256=<y> speedup_partial_b256=<z> speedup_geomloss_b256=<g> speedup_ott_b256=<o>``
(the last two: loss + gradient, peer time over ours; ``-`` where a row is missing, e.g. GeomLoss past its time cap or
the loss rows with ``--peers_only``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import ot
import torch

from hf_mltm.evaluation import retrieval_ranks
from hf_mltm.ot import (
    MahalanobisMetric,
    duplicate_aware_target,
    kl_to_plan,
    mltm_loss,
    mltm_partial_loss,
    sinkhorn,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure, measure_interleaved, memory_child, peak_memory  # noqa: E402

EPSILON, MASS, DIM = 0.05, 0.9, 1024
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def make_inputs(batch: int, parametrization: str = "diagonal", seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    audio = torch.nn.functional.normalize(torch.randn(batch, DIM, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(audio + 0.7 * torch.randn(batch, DIM, generator=generator) / DIM**0.5, dim=-1)
    torch.manual_seed(seed)
    metric = MahalanobisMetric(DIM, parametrization, init="paper")
    return audio.requires_grad_(), text.requires_grad_(), metric


def normalised(cost: torch.Tensor) -> torch.Tensor:
    return cost / cost.max()


def backward(loss: torch.Tensor, audio, text, metric) -> float:
    for tensor in (audio, text, metric.weight):
        tensor.grad = None
    loss.backward()
    return loss.item()


def run_ours(audio, text, metric):
    return backward(mltm_loss(metric(audio, text), EPSILON, normalization="batch_max"), audio, text, metric)


def run_ours_partial(audio, text, metric):
    return backward(mltm_partial_loss(metric(audio, text), EPSILON, MASS, normalization="batch_max"), audio, text,
                    metric)


def reference_cost(audio, text, metric):
    # (b, b, d) differences and an einsum with a repeated index, so only diag(M) is read (reference code style)
    diff = audio[:, None, :] - text[None, :, :]
    return torch.einsum("ijk,kk,ijk->ij", diff, metric.matrix(), diff).clamp_min(1e-12).sqrt()


def pot_loss(plan: torch.Tensor, mass: float = 1.0) -> torch.Tensor:
    target = duplicate_aware_target(None, plan.shape[0], dtype=plan.dtype)
    return kl_to_plan(target, plan.clamp_min(torch.finfo(plan.dtype).tiny).log(), mass)


def uniform(batch: int) -> torch.Tensor:
    return torch.full((batch,), 1 / batch)


def run_reference(audio, text, metric):
    batch = audio.shape[0]
    plan = ot.sinkhorn(uniform(batch), uniform(batch), normalised(reference_cost(audio, text, metric)), EPSILON)
    return backward(pot_loss(plan), audio, text, metric)


def run_pot_log(audio, text, metric):
    batch = audio.shape[0]
    plan = ot.bregman.sinkhorn_log(uniform(batch), uniform(batch), normalised(metric(audio, text)), EPSILON)
    return backward(pot_loss(plan), audio, text, metric)


def run_pot_partial(audio, text, metric):
    batch = audio.shape[0]
    plan = ot.partial.entropic_partial_wasserstein(uniform(batch), uniform(batch), normalised(metric(audio, text)),
                                                   EPSILON, m=MASS)
    return backward(pot_loss(plan, MASS), audio, text, metric)


# --- Peers: GeomLoss (tensorized backend) and OTT-JAX (CPU jax) on the same entropic problem --------------------------
#
# The problem: the normalised diagonal-Mahalanobis cost C (b x b, max 1), epsilon = 0.05, uniform marginals 1/b,
# stopped at an L1 marginal error (rows + columns) of about TOL. Both peers regularise with KL(P | a b^T) instead of
# -H(P); with uniform marginals this only shifts the potentials by a constant, so the plan is the same. The loss is
# the m-LTM loss KL(T || P*) = log b + (<T, C> - OT_eps(C)) / eps (T = I / b, OT_eps the dual value <a, f> + <b, g>),
# whose gradient in C is (T - P*) / eps by the envelope theorem: each peer's own gradient of its OT value gives it.
TOL = 1e-6
PEER_BATCHES = (256, 1024, 4096)
PEER_TIME_CAP_S = 120.0


class GeomLossTimeout(RuntimeError):
    """A GeomLoss call stopped at its time cap, after ``done`` of its ``total`` iterations (``elapsed_s`` seconds)."""

    def __init__(self, done: int, total: int, elapsed_s: float) -> None:
        super().__init__(f"GeomLoss stopped after {done} of {total} iterations ({elapsed_s:.1f} s)")
        self.done, self.total, self.elapsed_s = done, total, elapsed_s

    def describe(self, cap_s: float) -> str:
        """The row text: the cap, the iterations done and the time the whole call would take at that rate."""
        estimate = self.elapsed_s * self.total / max(self.done, 1)
        return (f"did not finish in {cap_s:g} s ({self.done} of {self.total} iterations done; about {estimate:.3g} s "
                "for the call, extrapolated at that rate)")


class _CappedSchedule(list):
    """GeomLoss's epsilon list (its loop runs ``for i, eps in enumerate(eps_list)``) that raises
    :class:`GeomLossTimeout` before an iteration once ``deadline`` (a ``time.perf_counter`` value) has passed."""

    def __init__(self, values: list, start: float, deadline: float) -> None:
        super().__init__(values)
        self.start, self.deadline = start, deadline

    def __iter__(self):
        for done, value in enumerate(super().__iter__()):
            now = time.perf_counter()
            if now > self.deadline:
                raise GeomLossTimeout(done, len(self), now - self.start)
            yield value


def marginal_error(plan: torch.Tensor) -> float:
    """L1 error of both marginals of a (b, b) plan against 1/b, the one measure applied to every method."""
    batch = plan.shape[-1]
    plan = plan.double()
    return float((plan.sum(-1) - 1 / batch).abs().sum() + (plan.sum(-2) - 1 / batch).abs().sum())


def peer_cost(batch: int) -> tuple[torch.Tensor, tuple]:
    inputs = make_inputs(batch)
    with torch.no_grad():
        cost = normalised(inputs[2](inputs[0], inputs[1]))
    return cost, inputs


class GeomLossPeer:
    """GeomLoss's ``SamplesLoss("sinkhorn", p=1, blur=epsilon, debias=False, backend="tensorized")``.

    Parameter mapping: with ``p = 1`` GeomLoss's cost is ``|x - y|`` and its temperature ``blur**p = epsilon``; the
    points are the metric-scaled embeddings ``x L / c_max`` (``L`` the diagonal factor, ``c_max`` the largest cost),
    so its cost is exactly the normalised cost (for the solve-only rows the precomputed cost is passed through
    ``cost=``). ``diameter = 1`` (the normalised cost's maximum) starts the epsilon-scaling annealing at
    ``epsilon = 1``, divided by ``scaling = 0.5`` per iteration down to ``epsilon``. GeomLoss has no tolerance: its
    schedule ends with a single iteration at the target epsilon, and its symmetric (averaged) updates converge at
    about half the rate of plain Sinkhorn, so the annealed schedule alone stops at a marginal error of about 4e-5
    (scaling 0.5) to 5e-6 (scaling 0.995, 25 s at b = 256). To solve to our tolerance, ``final_iterations`` more
    iterations at the target epsilon are appended to its schedule (``scaling_parameters`` of its tensorized module is
    wrapped); their number is calibrated untimed (doubled until the marginal error is at most ours), which favours
    GeomLoss (it pays no convergence checks).
    """

    def __init__(self, final_iterations: int = 0, time_cap_s: float | None = None) -> None:
        import geomloss._legacy.sinkhorn_samples as tensorized  # the tensorized backend's module

        if time_cap_s is not None and not time_cap_s > 0:
            raise ValueError(f"time_cap_s must be a positive number of seconds or None, got {time_cap_s!r}")
        self.tensorized, self.final_iterations, self.time_cap_s = tensorized, final_iterations, time_cap_s
        self.original = tensorized.scaling_parameters
        self.start = 0.0

    def _schedule(self, *args):
        diameter, eps, eps_list, rho = self.original(*args)
        eps_list = list(eps_list) + [eps] * self.final_iterations
        if self.time_cap_s is not None:
            eps_list = _CappedSchedule(eps_list, self.start, self.start + self.time_cap_s)
        return diameter, eps, eps_list, rho

    def potentials(self, x: torch.Tensor, y: torch.Tensor, cost=None) -> tuple[torch.Tensor, torch.Tensor]:
        from geomloss import SamplesLoss

        weights = torch.full((1, x.shape[0]), 1 / x.shape[0], dtype=x.dtype)
        loss = SamplesLoss("sinkhorn", p=1, blur=EPSILON, diameter=1.0, scaling=0.5, cost=cost, debias=False,
                           potentials=True, backend="tensorized")
        self.tensorized.scaling_parameters = self._schedule
        grad_enabled = torch.is_grad_enabled()
        self.start = time.perf_counter()
        try:
            f, g = loss(weights, x[None], weights, y[None])
        finally:
            self.tensorized.scaling_parameters = self.original
            torch.set_grad_enabled(grad_enabled)  # its loop switches gradients off and on globally
        return f[0], g[0]

    def solve(self, cost: torch.Tensor) -> torch.Tensor:
        """The plan for a precomputed cost (its ``cost=`` callable is called as ``C(x, y)`` and ``C(y, x)``)."""
        batch = cost.shape[0]
        x, y = torch.zeros(batch, 1), torch.zeros(batch, 1)
        pointer = x.data_ptr()
        f, g = self.potentials(x, y, lambda first, _: (cost if first.data_ptr() == pointer else cost.T)[None])
        return ((f[:, None] + g[None, :] - cost) / EPSILON).exp() / batch**2

    def loss(self, audio, text, metric) -> float:
        batch = audio.shape[0]
        factor = metric.factor()
        with torch.no_grad():  # locate the largest cost; it is recomputed below with its gradient
            flat = metric(audio, text).argmax()
        row, column = divmod(int(flat), batch)
        largest = ((audio[row] - text[column]) * factor).norm()
        x, y = audio * factor / largest, text * factor / largest
        f, g = self.potentials(x, y)
        value = f.mean() + g.mean()  # <a, f> + <b, g>, differentiated by GeomLoss's envelope rule
        matched = (x - y).norm(dim=-1).mean()  # <T, C>
        loss = math.log(batch) + (matched - value) / EPSILON
        return backward(loss, audio, text, metric)


class OTTPeer:
    """OTT-JAX: ``Sinkhorn(threshold=TOL, max_iterations=2000, norm_error=1, use_danskin=True)`` on
    ``LinearProblem(Geometry(cost_matrix=C, epsilon=EPSILON))`` (uniform marginals), jit-compiled on CPU jax.

    Parameter mapping: ``epsilon`` is absolute here (``Geometry`` is given the normalised cost, and
    ``relative_epsilon`` is off). OTT stops when the L1 norm (``norm_error=1``) of one marginal's error, checked every
    ``inner_iterations = 10`` iterations, is below ``threshold``; the other marginal is exact after its last update,
    so its threshold is the same L1 measure as ours. Log-domain updates (``lse_mode``), no momentum or Anderson
    acceleration (its defaults). The loss + gradient is ``jax.value_and_grad`` of the whole computation (cost from
    the embeddings and the diagonal metric in jnp, then ``reg_ot_cost`` with Danskin's rule, i.e. the envelope
    gradient); compilation happens in the warm-up and is not timed. Inputs are converted to jax arrays outside the
    timed call.
    """

    def __init__(self) -> None:
        import jax
        import jax.numpy as jnp
        from ott.geometry.geometry import Geometry
        from ott.problems.linear.linear_problem import LinearProblem
        from ott.solvers.linear.sinkhorn import Sinkhorn

        self.jax, self.jnp = jax, jnp
        solver = Sinkhorn(threshold=TOL, max_iterations=2000, norm_error=1, use_danskin=True)

        def solve(cost):
            return solver(LinearProblem(Geometry(cost_matrix=cost, epsilon=EPSILON)))

        def loss(audio, text, weight):
            factor = jnp.sqrt(jax.nn.softplus(weight))
            x, y = audio * factor, text * factor
            squared = (x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2 * x @ y.T  # (b, b)
            cost = jnp.sqrt(jnp.maximum(squared, 1e-30))
            cost = cost / cost.max()
            batch = cost.shape[0]
            return jnp.log(batch) + (jnp.trace(cost) / batch - solve(cost).reg_ot_cost) / EPSILON

        self.solve_jit = jax.jit(lambda cost: solve(cost).matrix)

        def solve_counted(cost):
            output = solve(cost)
            return output.matrix, output.n_iters

        self.solve_counted_jit = jax.jit(solve_counted)  # untimed: the plan and the iteration count
        self.loss_jit = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

    def solve(self, cost) -> object:
        return self.solve_jit(cost).block_until_ready()

    def loss(self, audio, text, weight) -> float:
        value, grads = self.loss_jit(audio, text, weight)
        self.jax.block_until_ready(grads)
        return float(value)


def calibrate_geomloss(cost: torch.Tensor, target: float, time_cap_s: float | None = None,
                       fallback: int | None = None, start: int = 400, limit: int = 6400) -> int:
    """The fewest appended final iterations (doubling from ``start``) whose plan has marginal error <= ``target``;
    when the error stalls first (float32 round-off of GeomLoss's averaged log-sum-exp updates, about 1.5e-6 at
    b = 256), the count where it stalled. Each calibration call is capped at ``time_cap_s``: when one does not
    finish, the last count that did is returned, or ``fallback`` (the count of a smaller b) when none did."""
    final, previous = start, None
    while True:
        try:
            error = marginal_error(GeomLossPeer(final, time_cap_s).solve(cost))
        except GeomLossTimeout as stop:
            chosen = previous[0] if previous is not None else fallback if fallback is not None else final
            print(f"geomloss calibration: {final} final iterations {stop}; using {chosen}", flush=True)
            return chosen
        print(f"geomloss calibration: {final} final iterations, marginal error {error:.2e}", flush=True)
        if previous is not None and error > 0.8 * previous[1]:
            return previous[0]
        if error <= target or final >= limit:
            return final
        final, previous = final * 2, (final, error)


def peer_runs(cost, inputs, geomloss_peer, ott_peer, cost_jax, inputs_jax) -> tuple[dict, dict]:
    """The timed calls of one batch size: ``({method: solve}, {method: loss + gradient})``."""
    solves = {"ours": lambda: sinkhorn(None, None, cost, EPSILON, tol=TOL).plan,
              "geomloss": lambda: geomloss_peer.solve(cost), "ott": lambda: ott_peer.solve(cost_jax)}
    losses = {"ours": lambda: run_ours(*inputs), "geomloss": lambda: geomloss_peer.loss(*inputs),
              "ott": lambda: ott_peer.loss(*inputs_jax)}
    return solves, losses


def run_peers(batches, repeats: int, time_cap_s: float = PEER_TIME_CAP_S) -> list[dict]:
    """Solve and loss + gradient rows for ours, GeomLoss and OTT-JAX at each batch size, timed round-robin.

    Every method is warmed up once per batch size and kind (OTT-JAX compiles there). GeomLoss's warm-up call is capped
    at ``time_cap_s`` seconds; when it does not finish, GeomLoss gets a ``skipped`` row ("did not finish in N s", with
    the iterations done and the extrapolated time of the call) and the round-robin times the other two. Its solve's
    warm-up also gives its marginal error. Rounds: ``repeats`` below b = 1024, 3 at b = 1024, 1 from b = 4096 on.
    """
    import numpy as np

    ott_peer = OTTPeer()
    rows, final_iterations = [], None
    for batch in batches:
        cost, inputs = peer_cost(batch)
        ours = sinkhorn(None, None, cost, EPSILON, tol=TOL)
        ours_error = marginal_error(ours.plan)
        if final_iterations is None or batch <= 1024:  # calibration at b = 4096 would take many minutes
            final_iterations = calibrate_geomloss(cost, ours_error, time_cap_s, final_iterations)
        geomloss_peer = GeomLossPeer(final_iterations, time_cap_s)
        cost_jax = ott_peer.jnp.asarray(cost.numpy())
        inputs_jax = [ott_peer.jnp.asarray(t.detach().numpy()) for t in (inputs[0], inputs[1], inputs[2].weight)]
        ott_plan, ott_iterations = ott_peer.solve_counted_jit(cost_jax)
        errors = {"ours": (ours_error, ours.n_iter),
                  "ott": (marginal_error(torch.from_numpy(np.asarray(ott_plan))), int(ott_iterations))}
        solves, losses = peer_runs(cost, inputs, geomloss_peer, ott_peer, cost_jax, inputs_jax)
        rounds = 1 if batch >= 4096 else 3 if batch >= 1024 else repeats
        geomloss_stopped = None
        for kind, runs in (("solve", solves), ("loss", losses)):
            geomloss_peer.time_cap_s = time_cap_s  # the warm-up is capped, the timed calls are not
            reason = None
            if geomloss_stopped is not None:
                reason = f"not run: its solve {geomloss_stopped}"
            else:
                try:
                    result = runs["geomloss"]()
                except GeomLossTimeout as stop:
                    geomloss_stopped = reason = stop.describe(time_cap_s)
                else:
                    if kind == "solve":
                        errors["geomloss"] = (marginal_error(result), final_iterations)
            if reason is not None:
                del runs["geomloss"]
                rows.append({"key": f"peer_{kind}:geomloss:{batch}", "method": f"geomloss_{kind}", "batch": str(batch),
                             "median_s": None, "skipped": reason, "final_iterations": final_iterations,
                             "peak_mb": None})
                print(f"{'geomloss_' + kind:32s} {batch:>9d}   {reason}", flush=True)
            geomloss_peer.time_cap_s = None
            for name in runs.keys() - {"geomloss"}:
                runs[name]()  # warm-up
            stats = measure_interleaved(runs, rounds, warmup=0)
            for name, row in stats.items():
                error, n_iter = errors[name]
                row.update(key=f"peer_{kind}:{name}:{batch}", method=f"{name}_{kind}", batch=str(batch),
                           marginal_error=error, n_iter=n_iter, peak_mb=None)
                rows.append(row)
                print(f"{row['method']:32s} {batch:>9d} {row['median_s'] * 1e3:10.1f} ms  error {error:.2e}",
                      flush=True)
    return rows


METHODS = {
    "ours": run_ours,
    "ours_full_metric": run_ours,
    "reference": run_reference,
    "pot_log": run_pot_log,
    "ours_partial": run_ours_partial,
    "pot_partial": run_pot_partial,
}
DIRECTIONS = ("text_to_audio", "audio_to_text")
# Configurations that cannot run on the 24 GB benchmark machine, with what was seen.
SKIPPED = {
    "loss:reference:1024": "needs about 20 GB (a 4 GB (b, b, d) tensor and its gradients); OOM-killed beside this process",
    "loss:pot_partial:1024": "killed by the OOM killer above 24 GB RSS (autograd keeps every iteration's b x b matrices)",
}


def loss_job(name: str, batch: int):
    inputs = make_inputs(batch, "full" if name == "ours_full_metric" else "diagonal")
    return lambda: METHODS[name](*inputs)


def ranking_job(mode: str, direction: str, clips: int = 957, ot_max_iter: int = 100):
    generator = torch.Generator().manual_seed(0)
    audio = torch.nn.functional.normalize(torch.randn(clips, DIM, generator=generator), dim=-1)
    noise = torch.randn(5 * clips, DIM, generator=generator) / DIM**0.5
    captions = torch.nn.functional.normalize(audio.repeat_interleave(5, 0) + noise, dim=-1)
    audio_ids, caption_ids = torch.arange(clips), torch.arange(clips).repeat_interleave(5)
    args = (captions, audio, caption_ids, audio_ids) if direction == "text_to_audio" else (audio, captions, audio_ids,
                                                                                          caption_ids)
    return lambda: retrieval_ranks(*args, mode=mode, ot_max_iter=ot_max_iter)


def job(key: str):
    kind, first, second = key.split(":")
    if kind == "loss":
        return loss_job(first, int(second))
    if kind == "large_ranking":  # 5000 queries x 25000 items, streamed (10 OT iterations, as the paper's few)
        return ranking_job(first, second, clips=5000, ot_max_iter=10)
    return ranking_job(first, second)


def benchmark_keys(quick: bool) -> list[str]:
    """The job keys of the loss and ranking rows (``loss:<method>:<b>``, ``ranking:<mode>:<direction>``, ...)."""
    batches = [256] if quick else [64, 256, 1024]
    keys = [f"loss:{name}:{batch}" for batch in batches for name in METHODS]
    keys += ["loss:ours:4096"] + [f"ranking:{mode}:{direction}" for mode in ("distance", "ot") for direction in DIRECTIONS]
    if not quick:
        keys += [f"large_ranking:{mode}:text_to_audio" for mode in ("distance", "ot")]
    return keys


def run_benchmarks(quick: bool, peer_sizes=None, peers_only: bool = False,
                   peer_time_cap_s: float = PEER_TIME_CAP_S, only=None) -> list[dict]:
    """The loss and ranking rows (unless ``peers_only``; only the keys in ``only`` when given, then without peer
    rows), then the peer rows at ``peer_sizes`` (default: b = 256 with ``quick``, else :data:`PEER_BATCHES`)."""
    if peer_sizes is None:
        peer_sizes = (256,) if quick else PEER_BATCHES
    peer_repeats = 5 if quick else 7
    if peers_only:
        return run_peers(peer_sizes, peer_repeats, peer_time_cap_s)
    keys = benchmark_keys(quick) if only is None else list(only)
    rows = []
    for key in keys:
        kind, first, second = key.split(":")
        if key in SKIPPED:
            rows.append({"key": key, "method": first, "batch": second, "median_s": None, "skipped": SKIPPED[key]})
            print(f"{first:32s} {second:>9s}   skipped: {SKIPPED[key]}", flush=True)
            continue
        slow = (kind == "loss" and not first.startswith("ours")) or kind == "large_ranking"
        big = key == "loss:ours:4096"
        huge = slow and kind == "loss" and int(second) >= 1024
        repeats = 1 if huge or (quick and (slow or big or kind == "ranking")) else 3 if slow or big else 11
        stats = measure(job(key), repeats, warmup=0 if slow and not quick else 1 if slow or big else 2)
        size = {"text_to_audio": "4785x957", "audio_to_text": "957x4785"}.get(second)
        stats.update(key=key, method=first if kind == "loss" else f"{kind}_{first}_{second}",
                     batch=second if kind == "loss" else ("25000x5000" if kind == "large_ranking" else size))
        rows.append(stats)
        print(f"{stats['method']:32s} {stats['batch']:>9s} {stats['median_s'] * 1e3:10.1f} ms", flush=True)
    # Peak memory, one fresh process per configuration: all of them in full mode, the headline ones in quick mode.
    quick_memory = ("loss:ours:256", "ranking:ot:audio_to_text")
    for row in rows:
        measured = "skipped" not in row and (not quick or row["key"] in quick_memory)
        row["peak_mb"] = memory_child(row["key"]) if measured else None
    return rows if only is not None else rows + run_peers(peer_sizes, peer_repeats, peer_time_cap_s)


def markdown_table(rows) -> str:
    lines = ["| method | b | median ms | peak MB | marginal error |", "|---|---|---|---|---|"]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['method']} | {row['batch']} | {row['skipped']} | - | - |")
            continue
        peak = "-" if row.get("peak_mb") is None else f"{row['peak_mb']:.0f}"
        error = f"{row['marginal_error']:.1e}" if "marginal_error" in row else "-"
        lines.append(f"| {row['method']} | {row['batch']} | {row['median_s'] * 1e3:.1f} | {peak} | {error} |")
    return "\n".join(lines)


def speedup(rows, slow, fast, batch="256") -> float | None:
    """``slow``'s median time over ``fast``'s at ``batch``; None when either row is missing or was skipped."""
    times = {row["method"]: row["median_s"] for row in rows if row["batch"] == batch}
    if times.get(slow) is None or times.get(fast) is None:
        return None
    return times[slow] / times[fast]


def check_arguments(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` naming the bad command-line option."""
    if args.peer_sizes is not None and any(size < 2 for size in args.peer_sizes):
        raise ValueError(f"--peer_sizes must be batch sizes of at least 2, got {args.peer_sizes}")
    if not args.peer_time_cap > 0:  # also rejects NaN
        raise ValueError(f"--peer_time_cap must be a positive number of seconds, got {args.peer_time_cap}")
    known = set(benchmark_keys(False)) | set(benchmark_keys(True))
    unknown = sorted(set(args.only or ()) - known)
    if unknown:
        raise ValueError(f"--only got unknown row keys {unknown}; choose from {sorted(known)}")
    if args.only is not None and (args.peers_only or args.peer_sizes is not None):
        raise ValueError("--only runs no peer rows; drop --peers_only / --peer_sizes or run them separately")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="b = 256 and one b = 4096 run of ours, few repeats")
    parser.add_argument("--peer_sizes", type=int, nargs="+", metavar="B",
                        help="batch sizes of the GeomLoss / OTT-JAX peer rows (default: 256 with --quick, else 256 "
                             "1024 4096)")
    parser.add_argument("--peers_only", action="store_true",
                        help="only the peer rows (no loss or ranking rows); writes results/ot_peers.json")
    parser.add_argument("--peer_time_cap", type=float, default=PEER_TIME_CAP_S, metavar="S",
                        help="seconds after which a GeomLoss call is stopped and recorded as not finished "
                             f"(default {PEER_TIME_CAP_S:.0f})")
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads (default: torch's own choice); 1 also makes jax's CPU backend "
                             "single-threaded (XLA_FLAGS, unless already set)")
    parser.add_argument("--only", nargs="+", metavar="KEY",
                        help="only these loss / ranking rows, by JSON key (e.g. loss:ours:4096), and no peer rows; "
                             "writes results/ot_loss_only.json")
    parser.add_argument("--memory-for", help=argparse.SUPPRESS)  # child mode: one job key
    args = parser.parse_args()
    check_arguments(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.threads == 1:  # OTT-JAX too (read when jax starts its CPU backend, in OTTPeer)
        os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.memory_for:
        print(json.dumps(peak_memory(job(args.memory_for))))
        return
    rows = run_benchmarks(args.quick, args.peer_sizes, args.peers_only, args.peer_time_cap, args.only)
    summary = {
        "speedup_ref_b256": speedup(rows, "reference", "ours"),
        "speedup_potlog_b256": speedup(rows, "pot_log", "ours"),
        "speedup_partial_b256": speedup(rows, "pot_partial", "ours_partial"),
        # loss + gradient; the solve-only ratios are in the JSON rows
        "speedup_geomloss_b256": speedup(rows, "geomloss_loss", "ours_loss"),
        "speedup_ott_b256": speedup(rows, "ott_loss", "ours_loss"),
    }
    peer_sizes = () if args.only else args.peer_sizes or ((256,) if args.quick else PEER_BATCHES)
    for batch in map(str, peer_sizes):
        for kind in ("solve", "loss"):
            for peer in ("geomloss", "ott"):
                summary[f"{peer}_{kind}_ratio_b{batch}"] = speedup(rows, f"{peer}_{kind}", f"ours_{kind}", batch)
    environment = {"torch": torch.__version__, "pot": ot.__version__, "threads": torch.get_num_threads(),
                   "machine": platform.machine(), "processor": platform.processor(), "quick": args.quick,
                   "peer_sizes": list(peer_sizes), "peer_time_cap_s": args.peer_time_cap,
                   "load_average": list(os.getloadavg()), "xla_flags": os.environ.get("XLA_FLAGS")}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = ("ot_loss_only.json" if args.only else "ot_peers.json" if args.peers_only
            else "ot_loss_quick.json" if args.quick else "ot_loss.json")
    path = RESULTS_DIR / name
    path.write_text(json.dumps({"environment": environment, "summary": summary, "rows": rows}, indent=2) + "\n")
    print()
    print(markdown_table(rows))
    print()
    headline = ("speedup_ref_b256", "speedup_potlog_b256", "speedup_partial_b256", "speedup_geomloss_b256",
                "speedup_ott_b256")
    print(" ".join(f"{key}={'-' if summary[key] is None else format(summary[key], '.1f')}" for key in headline))


if __name__ == "__main__":
    main()
