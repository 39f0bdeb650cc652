#!/usr/bin/env python3
"""PyTorch peer for `go test -bench 'LMStep' ./training` and
`go test -bench 'LMLossGrad' ./engine/cpu`.

Full-parameter language-model training on the testbed shape (issue 17): a
Llama-shaped model with hidden 128, 4 layers, 4 heads (head dim 32, no GQA),
SwiGLU with intermediate 344, RoPE, vocabulary 1024, tied embeddings, f32.
One batch of 16 rows x 256 tokens, each row packing documents of 24..183
tokens (the last one cut to fill the row), attention within each document
(a block-diagonal causal mask), positions restarting per document, the
next-token cross-entropy weighted 5 on the second half of each document's
tokens and 1 elsewhere, weighted mean. The batch is built exactly as the Go
benchmarks build it (testbedBatch / lmBenchBatch).

It times, after warm-up steps:
  fwd+bwd  the loss and every weight's gradient (the Go LMLossGrad benchmark);
  step     that plus global-norm clipping to 1.0 and an AdamW update
           (the Go LMStep benchmark).
Plain torch (no transformers), float32.

Run with Debian's torch and OpenBLAS on as many cores as the Go run:
  /usr/bin/python3 scripts/bench/torch_lm_step.py --threads 1 --blas-threads 2
  /usr/bin/python3 scripts/bench/torch_lm_step.py --threads 2 --blas-threads 1
--threads is torch.set_num_threads (ATen's intra-op OpenMP threads);
--blas-threads is OPENBLAS_NUM_THREADS (OpenBLAS keeps its own thread pool,
which torch.set_num_threads does not limit). Giving both 2 on a 2-core machine
runs four busy threads on two cores and was twice as slow here; on 2 cores the
fastest configuration measured was --threads 1 --blas-threads 2. Report the
best configuration.
"""
import argparse
import math
import os
import time

V, D, L, H, I, T, B = 1024, 128, 4, 4, 344, 256, 16
HD = D // H


def batch():
    """Rows, document ids and target weights, as the Go benchmarks build them."""
    ids, docs, wts = [], [], []
    k = 0
    for r in range(B):
        row, dr, wr = [], [], []
        t = 0
        while t < T:
            n = min(24 + (k * 37) % 160, T - t)
            for i in range(n):
                row.append(((r * T + t + i) * 7919 + 13) % V)
                dr.append(k)
                wr.append(1.0 + 4.0 * ((2 * i) // n))
            t += n
            k += 1
        ids.append(row)
        docs.append(dr)
        wts.append(wr)
    return torch.tensor(ids), torch.tensor(docs), torch.tensor(wts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--blas-threads", type=int, default=0, help="OPENBLAS_NUM_THREADS (default: --threads)")
    args = ap.parse_args()
    blas = args.blas_threads or args.threads
    # OpenBLAS reads these when torch loads it.
    os.environ["OPENBLAS_NUM_THREADS"] = str(blas)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    global torch, F
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def param(*shape, std=0.02):
        return (torch.randn(*shape) * std).requires_grad_(True)

    emb = param(V, D)
    layers = []
    for _ in range(L):
        layers.append({
            "ln1": torch.ones(D, requires_grad=True), "ln2": torch.ones(D, requires_grad=True),
            "q": param(D, D), "k": param(D, D), "v": param(D, D), "o": param(D, D, std=0.02 / math.sqrt(2 * L)),
            "gate": param(I, D), "up": param(I, D), "down": param(D, I, std=0.02 / math.sqrt(2 * L)),
        })
    lnf = torch.ones(D, requires_grad=True)
    params = [emb, lnf] + [p for lay in layers for p in lay.values()]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01)

    ids, docs, wts = batch()
    # Positions restart per document; attention is causal within a document.
    start = torch.ones(B, T, dtype=torch.bool)
    start[:, 1:] = docs[:, 1:] != docs[:, :-1]
    idx = torch.arange(T).expand(B, T)
    first = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), dim=1).values
    pos = (idx - first).float()
    inv = 1.0 / (10000 ** (torch.arange(0, HD, 2).float() / HD))
    f = pos[..., None] * inv
    cos = torch.cat([f.cos(), f.cos()], -1)[:, None]  # [B, 1, T, HD]
    sin = torch.cat([f.sin(), f.sin()], -1)[:, None]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = causal[None] & (docs[:, :, None] == docs[:, None, :])
    mask = torch.zeros(B, 1, T, T).masked_fill(~allowed[:, None], float("-inf"))
    # Targets: token t+1 of the same document, with its weight.
    tgt = ids[:, 1:]
    w = torch.where(docs[:, 1:] == docs[:, :-1], wts[:, 1:], torch.zeros(()))
    wsum = w.sum()

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * g

    def rope(x):
        x1, x2 = x[..., : HD // 2], x[..., HD // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def loss_fn():
        x = emb[ids]
        for lay in layers:
            h = rms(x, lay["ln1"])
            q = (h @ lay["q"].t()).view(B, T, H, HD).transpose(1, 2)
            k = (h @ lay["k"].t()).view(B, T, H, HD).transpose(1, 2)
            v = (h @ lay["v"].t()).view(B, T, H, HD).transpose(1, 2)
            q, k = rope(q), rope(k)
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HD) + mask, -1) @ v
            x = x + a.transpose(1, 2).reshape(B, T, D) @ lay["o"].t()
            h = rms(x, lay["ln2"])
            x = x + (F.silu(h @ lay["gate"].t()) * (h @ lay["up"].t())) @ lay["down"].t()
        logits = rms(x, lnf)[:, :-1] @ emb.t()
        ce = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), reduction="none")
        return (ce * w.reshape(-1)).sum() / wsum

    def fwd_bwd():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn()
        loss.backward()
        return loss

    def step():
        loss = fwd_bwd()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    ntok = B * T
    for name, fn in (("fwd+bwd", fwd_bwd), ("step", step)):
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            loss = fn()
            times.append(time.perf_counter() - t0)
        best, med = min(times), sorted(times)[len(times) // 2]
        print(f"torch {torch.__version__} threads={args.threads} blas_threads={blas} {name}: median {med:.3f} s "
              f"({ntok / med:.0f} tokens/s), best {best:.3f} s ({ntok / best:.0f} tokens/s), loss {float(loss):.4f}")


if __name__ == "__main__":
    main()
