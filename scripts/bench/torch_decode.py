#!/usr/bin/env python3
"""PyTorch peer of `soo bench`: a Llama model of the SmolLM2-135M shape with
random weights (std 0.02), 128-token prefill and greedy decode through a KV
cache, timed on the CPU. Prints one JSON line.

    /usr/bin/python3 scripts/bench/torch_decode.py --threads 2 --tokens 32 [--vocab 400] [--dtype f32|bf16] [--prefill 2000]

--prefill N also times one N-token prompt (the better of two), as `soo bench --prefill N`.

No transformers dependency: the model is written out in plain torch ops, the
way transformers' LlamaForCausalLM computes it (RMSNorm, RoPE rotate_half,
GQA attention, SwiGLU MLP, tied LM head).
"""
import argparse
import json
import statistics
import time

import torch

SHAPE = dict(vocab=49152, hidden=576, inter=1536, layers=30, heads=9, kv_heads=3, theta=100000.0, eps=1e-5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=0)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--prefill", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    s = dict(SHAPE)
    if a.vocab:
        s["vocab"] = a.vocab
    dt = torch.float32 if a.dtype == "f32" else torch.bfloat16
    d, I, H, KH = s["hidden"], s["inter"], s["heads"], s["kv_heads"]
    hd = d // H

    def w(o, i):
        return (torch.randn(o, i) * 0.02).to(dt)

    emb = w(s["vocab"], d)
    layers = [dict(q=w(H * hd, d), k=w(KH * hd, d), v=w(KH * hd, d), o=w(d, H * hd),
                   g=w(I, d), u=w(I, d), dn=w(d, I),
                   n1=torch.ones(d, dtype=dt), n2=torch.ones(d, dtype=dt)) for _ in range(s["layers"])]
    fnorm = torch.ones(d, dtype=dt)
    inv = 1.0 / (s["theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    F = torch.nn.functional

    def rms(x, g):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + s["eps"])).to(dt) * g

    def rot(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return torch.cat((-x2, x1), dim=-1)

    def forward(ids, cache):
        T = ids.shape[0]
        p0 = cache[0][0].shape[1] if cache[0] is not None else 0
        pos = torch.arange(p0, p0 + T, dtype=torch.float32)
        f = torch.outer(pos, inv)
        e = torch.cat((f, f), dim=-1)
        cos, sin = e.cos().to(dt), e.sin().to(dt)
        x = emb[ids]
        for li, L in enumerate(layers):
            h = rms(x, L["n1"])
            q = F.linear(h, L["q"]).view(T, H, hd).transpose(0, 1)
            k = F.linear(h, L["k"]).view(T, KH, hd).transpose(0, 1)
            v = F.linear(h, L["v"]).view(T, KH, hd).transpose(0, 1)
            q = q * cos + rot(q) * sin
            k = k * cos + rot(k) * sin
            if cache[li] is not None:
                k = torch.cat((cache[li][0], k), dim=1)
                v = torch.cat((cache[li][1], v), dim=1)
            cache[li] = (k, v)
            kk = k.repeat_interleave(H // KH, dim=0)
            vv = v.repeat_interleave(H // KH, dim=0)
            sc = q @ kk.transpose(1, 2) / hd ** 0.5
            S = kk.shape[1]
            mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
            sc = sc.masked_fill(~mask, float("-inf"))
            att = (sc.float().softmax(-1).to(dt) @ vv).transpose(0, 1).reshape(T, d)
            x = x + F.linear(att, L["o"])
            h = rms(x, L["n2"])
            x = x + F.linear(F.silu(F.linear(h, L["g"])) * F.linear(h, L["u"]), L["dn"])
        return F.linear(rms(x[-1:], fnorm), emb)

    with torch.no_grad():
        pre = []
        for i in range(4):
            cache = [None] * s["layers"]
            ids = torch.randint(0, s["vocab"], (128,))
            t0 = time.perf_counter()
            forward(ids, cache)
            if i:
                pre.append(time.perf_counter() - t0)
        long_s = None
        if a.prefill:
            for _ in range(2):
                cache = [None] * s["layers"]
                ids = torch.randint(0, s["vocab"], (a.prefill,))
                t0 = time.perf_counter()
                forward(ids, cache)
                t = time.perf_counter() - t0
                long_s = t if long_s is None else min(long_s, t)
        cache = [None] * s["layers"]
        logits = forward(torch.randint(0, s["vocab"], (8,)), cache)
        steps = []
        for i in range(a.tokens + 2):
            tok = logits.argmax(-1)
            t0 = time.perf_counter()
            logits = forward(tok, cache)
            if i >= 2:
                steps.append(time.perf_counter() - t0)
    params = emb.numel() + sum(t.numel() for L in layers for n, t in L.items() if n not in ("n1", "n2"))
    out = dict(peer="pytorch " + torch.__version__, dtype=a.dtype, threads=a.threads, vocab=s["vocab"],
               params=params, decode_tokens_per_s=1 / statistics.median(steps),
               decode_step_ms=1e3 * statistics.median(steps), prefill_128_s=statistics.median(pre))
    if a.prefill:
        out.update(prefill_tokens=a.prefill, prefill_s=long_s)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
