#!/usr/bin/python3
"""Language-model loss and full-parameter gradient reference for SOO Serve.

For each tiny model (tiny-llama: untied head, GQA, llama3 RoPE scaling;
tiny-qwen2: tied embeddings, q/k/v biases; tiny-gemma2: soft-capping, sliding
window, sandwich norms, GeGLU, scaled embeddings) it runs one batch of packed
rows through the independent PyTorch model of reference.py (imported, not
modified) in float64, computes the weighted next-token cross-entropy, and takes
the gradient of every weight by autograd. Writes testdata/reference/lm_grad.json
and one lm_grad_<case>.safetensors per model, which
engine/cpu/lmtrain_test.go compares LMLossGrad against.

Run:  /usr/bin/python3 scripts/reference/lm_grad_reference.py --out testdata
Deterministic (fixed generator seeds, one thread): two runs give identical bytes.

Batch semantics (what the Go implementation must match):
  - a row packs documents (runs of equal document ids); attention stays within
    a document and positions restart at 0 where each document begins;
  - token t of a document (t >= 1) is a target predicted from the hidden state
    at t-1, with weight weights[row][t]; the first token of each document is
    never a target (its weight, non-zero here on purpose, is ignored);
  - loss = sum(w * CE) / sum(w) over the targets, CE = logsumexp(logits) -
    logits[target] (after gemma2's final soft-cap).

The packed forward masks attention to the document and restarts positions; a
self-check compares its logits with reference.Model.forward run on each
document alone (agreement to 1e-12).

To keep the fixture small, each gradient tensor is stored as: its sum of
squares (`sumsq.<name>`, F64 [1]), its largest magnitude (`maxabs.<name>`,
F64 [1]), and up to 192 entries drawn at random among its non-zero ones
(`idx.<name>` I32 flat indices, `val.<name>` F64 values). The loss is in the
json.
"""
import argparse
import json
import math
import os
import sys

import torch

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402  (sets single-threaded, deterministic torch)
import st_io  # noqa: E402

CASES = [
    # name, model dir, seed
    ("llama", "tiny-llama", 9101),
    ("qwen2", "tiny-qwen2", 9102),
    ("gemma2", "tiny-gemma2", 9103),
]

# Documents per row, as lengths; gemma2's sliding window (6) matters in the
# documents longer than 6.
ROW_DOCS = [[7, 9], [12], [3, 4, 3]]
SAMPLES = 192


class Packed(reference.Model):
    """reference.Model with attention restricted to a token's document."""

    def attention_packed(self, x, L, positions, docs):
        cfg = self.cfg
        T = x.shape[0]
        nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], reference.head_dim(cfg)
        p = f"model.layers.{L}.self_attn."
        q = self.linear(x, p + "q_proj").view(T, nh, hd).transpose(0, 1)
        k = self.linear(x, p + "k_proj").view(T, nkv, hd).transpose(0, 1)
        v = self.linear(x, p + "v_proj").view(T, nkv, hd).transpose(0, 1)
        cos, sin = reference.rope_cos_sin(cfg, positions)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        q = q * cos + reference.rotate_half(q) * sin
        k = k * cos + reference.rotate_half(k) * sin
        rep = nh // nkv
        k = k.repeat_interleave(rep, dim=0)
        v = v.repeat_interleave(rep, dim=0)
        if self.mt == "gemma2":
            scaling = cfg["query_pre_attn_scalar"] ** -0.5
        else:
            scaling = hd ** -0.5
        s = (q @ k.transpose(1, 2)) * scaling
        if self.mt == "gemma2" and cfg.get("attn_logit_softcapping"):
            c = cfg["attn_logit_softcapping"]
            s = torch.tanh(s / c) * c
        idx = torch.arange(T)
        d = torch.tensor(docs)
        allowed = (idx[None, :] <= idx[:, None]) & (d[None, :] == d[:, None])
        if self.mt == "gemma2" and L % 2 == 0:
            pos = torch.tensor(positions)
            allowed = allowed & (pos[None, :] > pos[:, None] - cfg["sliding_window"])
        s = s.masked_fill(~allowed[None], float("-inf"))
        pr = torch.softmax(s, dim=-1)
        o = (pr @ v).transpose(0, 1).reshape(T, nh * hd)
        return self.linear(o, p + "o_proj")

    def forward_packed(self, ids, docs):
        cfg = self.cfg
        positions = []
        for t in range(len(ids)):
            positions.append(0 if t == 0 or docs[t] != docs[t - 1] else positions[-1] + 1)
        x = self.W["model.embed_tokens.weight"][torch.tensor(ids)]
        if self.mt == "gemma2":
            x = x * torch.tensor(cfg["hidden_size"] ** 0.5, dtype=x.dtype)
        for L in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{L}."
            a = self.attention_packed(self.norm(x, p + "input_layernorm.weight"), L, positions, docs)
            if self.mt == "gemma2":
                h = x + self.norm(a, p + "post_attention_layernorm.weight")
                m = self.mlp(self.norm(h, p + "pre_feedforward_layernorm.weight"), L)
                x = h + self.norm(m, p + "post_feedforward_layernorm.weight")
            else:
                h = x + a
                x = h + self.mlp(self.norm(h, p + "post_attention_layernorm.weight"), L)
        x = self.norm(x, "model.norm.weight")
        logits = x @ self.lm_head.T
        if self.mt == "gemma2" and cfg.get("final_logit_softcapping"):
            c = cfg["final_logit_softcapping"]
            logits = torch.tanh(logits / c) * c
        return logits


def make_batch(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    V = cfg["vocab_size"]
    rows, docs, weights = [], [], []
    for r, lens in enumerate(ROW_DOCS):
        ids, ds, ws = [], [], []
        for k, n in enumerate(lens):
            doc = 10 * r + 3 * k + 1  # any ids; runs of equal ids are documents
            for t in range(n):
                ids.append(int(torch.randint(3, V, (1,), generator=g)))
                ds.append(doc)
                if t == 0:
                    ws.append(7.0)  # ignored: the first token of a document is no target
                else:
                    ws.append([1.0, 1.0, 5.0, 0.0, 1.0, 5.0, 0.5][(t + r + k) % 7])
        rows.append(ids)
        docs.append(ds)
        weights.append(ws)
    return rows, docs, weights


def loss_of(model, rows, docs, weights):
    num = torch.zeros((), dtype=torch.float64)
    den = 0.0
    for ids, ds, ws in zip(rows, docs, weights):
        logits = model.forward_packed(ids, ds)
        lse = torch.logsumexp(logits, dim=-1)
        for t in range(1, len(ids)):
            if ds[t] != ds[t - 1] or ws[t] == 0:
                continue
            ce = lse[t - 1] - logits[t - 1, ids[t]]
            num = num + ws[t] * ce
            den += ws[t]
    return num / den


def self_check_packing(model, rows, docs):
    for ids, ds in zip(rows, docs):
        packed = model.forward_packed(ids, ds)
        start = 0
        for t in range(1, len(ids) + 1):
            if t == len(ids) or ds[t] != ds[t - 1]:
                alone = model.forward(ids[start:t])
                err = float((packed[start:t] - alone).abs().max())
                assert err < 1e-12, f"packed vs alone: {err}"
                start = t


def run_case(out, name, mdir, seed):
    cfg, W = reference.load_model_weights(os.path.join(out, "models", mdir))
    leaves = {k: v.to(torch.float64).clone().requires_grad_(True) for k, v in W.items()}
    model = Packed(cfg, leaves)
    rows, docs, weights = make_batch(cfg, seed)
    with torch.no_grad():
        self_check_packing(model, rows, docs)
    loss = loss_of(model, rows, docs, weights)
    loss.backward()
    g = torch.Generator().manual_seed(seed + 1)
    T = {}
    for k in sorted(leaves):
        grad = leaves[k].grad.detach().reshape(-1)
        nz = torch.nonzero(grad).reshape(-1)
        pick = nz[torch.randperm(len(nz), generator=g)[:SAMPLES]].sort().values
        T["idx." + k] = pick.to(torch.int32)
        T["val." + k] = grad[pick].clone()
        T["sumsq." + k] = (grad * grad).sum().reshape(1)
        T["maxabs." + k] = grad.abs().max().reshape(1)
    rel = f"reference/lm_grad_{name}.safetensors"
    st_io.save_file(T, os.path.join(out, rel))
    return {"name": name, "model": f"models/{mdir}", "rows": rows, "docs": docs, "weights": weights,
            "loss": float(loss), "tensors": rel, "params": len(leaves)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="testdata")
    args = ap.parse_args()
    cases = [run_case(args.out, *c) for c in CASES]
    path = os.path.join(args.out, "reference", "lm_grad.json")
    reference.write_json(path, {"cases": cases})
    for c in cases:
        print(f"  {c['name']}: loss {c['loss']:.6f} over {c['params']} tensors")
    print("wrote", path, "(self-check passed: packed rows == documents alone)")


if __name__ == "__main__":
    main()
