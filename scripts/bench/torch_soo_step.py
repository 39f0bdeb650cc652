#!/usr/bin/env python3
"""PyTorch peer for `go test -bench SOOStep ./training`.

One SOO optimiser step on the SmolLM2-135M shape (hidden 576, intermediate 1536,
9 heads, 3 KV heads, vocab 49152), layers 0..15 with the loss at layer 15's
o_proj output, one pair of 64-token prompts, LoRA rank 8 on q/k/v/o (B non-zero),
full-pooling MSE, AdamW. Plain torch (no transformers/peft), float32.

Run with Debian's torch and OpenBLAS:
  OMP_NUM_THREADS=2 /usr/bin/python3 scripts/bench/torch_soo_step.py
"""
import math
import time

import torch

torch.manual_seed(0)
torch.set_num_threads(2)
H, I, NH, NKV, V, L, T, R = 576, 1536, 9, 3, 49152, 16, 64, 8
HD = H // NH
dev = "cpu"


def lin(o, i):
    return (torch.randn(o, i) * 0.02).requires_grad_(False)


class Layer:
    def __init__(self):
        self.ln1 = torch.ones(H)
        self.ln2 = torch.ones(H)
        self.w = {"q": lin(NH * HD, H), "k": lin(NKV * HD, H), "v": lin(NKV * HD, H), "o": lin(H, NH * HD),
                  "gate": lin(I, H), "up": lin(I, H), "down": lin(H, I)}
        self.A = {m: (torch.rand(R, self.w[m].shape[1]) * 2 - 1) / math.sqrt(self.w[m].shape[1]) for m in "qkvo"}
        self.B = {m: torch.full((self.w[m].shape[0], R), 0.01) for m in "qkvo"}
        for m in "qkvo":
            self.A[m].requires_grad_(True)
            self.B[m].requires_grad_(True)

    def proj(self, m, x):
        y = x @ self.w[m].t()
        if m in self.A:
            y = y + 2.0 * ((x @ self.A[m].t()) @ self.B[m].t())
        return y


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def rope(x, pos):
    inv = 1.0 / (100000 ** (torch.arange(0, HD, 2).float() / HD))
    f = pos[:, None].float() * inv[None]
    cos, sin = torch.cat([f.cos(), f.cos()], -1), torch.cat([f.sin(), f.sin()], -1)
    x1, x2 = x[..., : HD // 2], x[..., HD // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


emb = torch.randn(V, H) * 0.02
layers = [Layer() for _ in range(L)]
params = [p for l in layers for m in "qkvo" for p in (l.A[m], l.B[m])]
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
mask = torch.full((T, T), float("-inf")).triu(1)
pos = torch.arange(T)


def site(ids):
    x = emb[ids]
    for li, l in enumerate(layers):
        h = rms(x, l.ln1)
        q = l.proj("q", h).view(T, NH, HD).transpose(0, 1)
        k = l.proj("k", h).view(T, NKV, HD).transpose(0, 1).repeat_interleave(NH // NKV, 0)
        v = l.proj("v", h).view(T, NKV, HD).transpose(0, 1).repeat_interleave(NH // NKV, 0)
        q, k = rope(q, pos), rope(k, pos)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(HD) + mask, -1) @ v
        o = l.proj("o", a.transpose(0, 1).reshape(T, H))
        if li == L - 1:
            return o
        x = x + o
        h = rms(x, l.ln2)
        x = x + l.proj("down", torch.nn.functional.silu(l.proj("gate", h)) * l.proj("up", h))


def step():
    s, o = site(torch.randint(0, V, (T,))), site(torch.randint(0, V, (T,)))
    loss = torch.nn.functional.mse_loss(s, o)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


step()  # warm-up
times = []
for _ in range(5):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
times.sort()
print(f'{{"torch_version": "{torch.__version__}", "threads": {torch.get_num_threads()}, '
      f'"soo_step_s_median": {times[len(times)//2]:.4f}, "soo_step_s_best": {times[0]:.4f}}}')
