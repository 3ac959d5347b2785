"""The main job run by ``make demo``.

Until the training and evaluation scripts exist (see the issue tracker), the demo runs the OT core on a real-size
problem: it builds a batch of paired embeddings, computes the m-LTM loss and its gradient, and ranks an
AudioCaps-size test set by distance and by transductive OT, printing the retrieval metrics of both.
"""

from __future__ import annotations

import time

import torch

from .evaluation import retrieval_metrics, retrieval_ranks
from .ot import MahalanobisMetric, mltm_loss, mltm_partial_loss


def main() -> None:
    torch.manual_seed(0)
    dim, clips = 1024, 957
    audio = torch.nn.functional.normalize(torch.randn(clips, dim), dim=-1)
    captions = torch.nn.functional.normalize(audio.repeat_interleave(5, 0) + 14.0 * torch.randn(5 * clips, dim) / dim**0.5,
                                             dim=-1)
    metric = MahalanobisMetric(dim, "diagonal")
    batch_audio, batch_text = audio[:256].requires_grad_(), captions[::5][:256]
    start = time.perf_counter()
    loss = mltm_loss(metric(batch_audio, batch_text), 0.05, normalization="batch_max")
    loss.backward()
    partial = mltm_partial_loss(metric(batch_audio, batch_text), 0.05, 0.9, normalization="batch_max")
    print(f"m-LTM loss (b=256, d={dim}): {loss.item():.4f}; partial (mass 0.9): {partial.item():.4f}; "
          f"loss + gradient + partial in {time.perf_counter() - start:.3f} s")
    audio_ids, caption_ids = torch.arange(clips), torch.arange(clips).repeat_interleave(5)
    print("synthetic AudioCaps-size test set (957 clips x 4785 captions), Euclidean cost:")
    print("| ranking | direction | R@1 | R@5 | R@10 | medR | mAP@10 |")
    print("|---|---|---|---|---|---|---|")
    for mode in ("distance", "ot"):
        for direction, args in (("text_to_audio", (captions, audio, caption_ids, audio_ids)),
                                ("audio_to_text", (audio, captions, audio_ids, caption_ids))):
            metrics = retrieval_metrics(retrieval_ranks(*args, mode=mode))
            print(f"| {mode} | {direction} | {metrics['R@1']:.2f} | {metrics['R@5']:.2f} | {metrics['R@10']:.2f} | "
                  f"{metrics['medR']} | {metrics['mAP@10']:.3f} |")
    print("(placeholder main job: model training on real data arrives with the training issue)")


if __name__ == "__main__":
    main()
