#!/usr/bin/python3
"""Overlap-metric reference for SOO Serve (DESIGN.md §5).

Runs self/other token-id pairs (different lengths) through the independent
PyTorch model of reference.py (imported, not modified), captures every site of
every layer in float64, and computes every overlap metric for every pooling in
float64. Writes testdata/overlap/expected.json, which overlap/overlap_test.go
compares Measure against, and testdata/overlap/tokenizer/ (a byte-level
tokenizer whose ids fit the tiny models, for the `soo overlap` test).

Run:  /usr/bin/python3 scripts/reference/overlap_reference.py --out testdata
Deterministic (fixed generator seeds): two runs give identical bytes.

Definitions (S [Ts, d], O [To, d] are the captured activations):
  mean:  s = mean_t S, o = mean_t O   (d-vectors)
  last:  s = S[-1],    o = O[-1]      (d-vectors)
  full:  s, o = S, O right-padded with zero rows to max(Ts, To), flattened
  mse = mean((s - o)^2); log_mse = ln(mse + 1e-25);
  cosine = <s, o> / (|s| |o|) (0 if either norm is 0); self_norm = |s|; other_norm = |o|
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

SITES = ["attn_out", "mlp_out", "resid_post"]
POOLINGS = ["mean", "last", "full"]

CASES = [
    # name, model dir, adapter dir, seed
    ("llama_base", "tiny-llama", None, 7001),
    ("llama_lora", "tiny-llama", "tiny-llama-lora", 7002),
    ("gemma2_base", "tiny-gemma2", None, 7003),
    ("gemma2_lora", "tiny-gemma2", "tiny-gemma2-lora", 7004),
]


def make_pairs(seed, vocab):
    """Two pairs per case: unrelated prompts (self 11 tokens, other 8), and a
    twin that shares a prefix and suffix with the self prompt but has one
    token replaced by two (self 9 tokens, other 10), like a word swap."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(3, vocab, [11], generator=g).tolist()
    b = torch.randint(3, vocab, [8], generator=g).tolist()
    s = torch.randint(3, vocab, [9], generator=g).tolist()
    r = torch.randint(3, vocab, [2], generator=g).tolist()
    o = s[:3] + r + s[4:]
    return [("random", a, b), ("twin", s, o)]


def pool(S, O, pooling):
    if pooling == "mean":
        return S.mean(0), O.mean(0)
    if pooling == "last":
        return S[-1], O[-1]
    if pooling == "full":
        n = max(S.shape[0], O.shape[0])
        Sp = torch.cat([S, S.new_zeros(n - S.shape[0], S.shape[1])])
        Op = torch.cat([O, O.new_zeros(n - O.shape[0], O.shape[1])])
        return Sp.reshape(-1), Op.reshape(-1)
    raise ValueError(pooling)


def metrics(S, O, pooling):
    s, o = pool(S.double(), O.double(), pooling)
    mse = float(((s - o) ** 2).mean())
    sn, on = float(s.norm()), float(o.norm())
    cos = float((s * o).sum()) / (sn * on) if sn > 0 and on > 0 else 0.0
    return {"mse": mse, "log_mse": math.log(mse + 1e-25), "cosine": cos, "self_norm": sn, "other_norm": on}


def bytes_to_unicode():
    """GPT-2's byte -> printable-character map (ByteLevel pre-tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_probe_tokenizer(out):
    """A byte-level BPE tokenizer without merges (one token per byte, ids 3..258)
    and a BOS <s> = 1, EOS </s> = 2: every id fits the tiny models' vocabulary
    of 320, so `soo overlap --tokenizer testdata/overlap/tokenizer` can run the
    text probe on them."""
    b2u = bytes_to_unicode()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[b2u[b]] = 3 + b
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for c, i in [("<unk>", 0), ("<s>", 1), ("</s>", 2)]]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    d = os.path.join(out, "overlap", "tokenizer")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tok, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>"},
                  f, indent=1, sort_keys=True)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="testdata")
    args = ap.parse_args()
    cases = []
    for name, mdir, adir, seed in CASES:
        model = reference.build_model(args.out, mdir, adir)
        L = model.cfg["num_hidden_layers"]
        for kind, self_ids, other_ids in make_pairs(seed, model.cfg["vocab_size"]):
            with torch.no_grad():
                aS, aO = {}, {}
                model.forward(self_ids, acts=aS)
                model.forward(other_ids, acts=aO)
            results = {}
            for pooling in POOLINGS:
                layers = []
                for layer in range(L):
                    for site in SITES:
                        key = f"{site}.{layer}"
                        m = metrics(aS[key], aO[key], pooling)
                        layers.append({"layer": layer, "site": site, **m})
                results[pooling] = {"pooling": pooling, "layers": layers,
                                    "self_tokens": len(self_ids), "other_tokens": len(other_ids)}
            cases.append({
                "name": f"{name}_{kind}",
                "model": f"models/{mdir}",
                "adapter": f"adapters/{adir}" if adir else None,
                "self_ids": self_ids,
                "other_ids": other_ids,
                "results": results,
            })
            r = results["mean"]["layers"]
            print(f"{name}_{kind}: Ts={len(self_ids)} To={len(other_ids)} "
                  f"mean-pooled attn_out mse by layer "
                  + " ".join(f"{x['mse']:.4g}" for x in r if x["site"] == "attn_out"))
    os.makedirs(os.path.join(args.out, "overlap"), exist_ok=True)
    path = os.path.join(args.out, "overlap", "expected.json")
    with open(path, "w") as f:
        json.dump({
            "note": "written by scripts/reference/overlap_reference.py; activations from reference.py's float64 model, "
                    "each prompt its own sequence from position 0, no BOS added; metrics in float64 (DESIGN.md §5)",
            "cases": cases,
        }, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", path)
    write_probe_tokenizer(args.out)
    print("wrote", os.path.join(args.out, "overlap", "tokenizer"))


if __name__ == "__main__":
    main()
