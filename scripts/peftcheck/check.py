"""Loads the adapters peftcheck wrote in Hugging Face transformers + PEFT and
compares the logits with SOO Serve's (cases.json).

    go run ./scripts/peftcheck -out DIR && python3 scripts/peftcheck/check.py DIR

Run from the repository root (the cases name models by repo-relative paths).
For each case it prints the largest differences of the base logits, of the
logits with the adapter, and of the adapter's effect (LoRA minus base) relative
to that effect's size; it exits 1 if any is over its bound.
"""

import json
import os
import sys

import torch
import transformers
import peft
from transformers import AutoModelForCausalLM
from peft import PeftModel

BASE_TOL = 1e-4     # float32 engine vs float64 transformers, absolute
EFFECT_TOL = 1e-3   # relative to max |LoRA - base|


def load(model_dir):
    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, attn_implementation="eager")
    except TypeError:
        return AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float64, attn_implementation="eager")


def main(out):
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    with open(os.path.join(out, "cases.json")) as f:
        cases = json.load(f)
    bad = 0
    for c in cases:
        toks = torch.tensor([c["tokens"]])
        base = load(c["model"]).eval()
        with torch.no_grad():
            hf_base = base(toks).logits[0].double()
        model = PeftModel.from_pretrained(base, os.path.join(out, c["adapter"])).eval()
        with torch.no_grad():
            hf_lora = model(toks).logits[0].double()
        ours_base = torch.tensor(c["base_logits"], dtype=torch.float64)
        ours_lora = torch.tensor(c["lora_logits"], dtype=torch.float64)
        d_base = (hf_base - ours_base).abs().max().item()
        d_lora = (hf_lora - ours_lora).abs().max().item()
        effect = (ours_lora - ours_base).abs().max().item()
        d_eff = ((hf_lora - hf_base) - (ours_lora - ours_base)).abs().max().item() / max(effect, 1e-30)
        ok = d_base <= BASE_TOL and d_eff <= EFFECT_TOL and effect > 1e-2
        bad += not ok
        print(f"{c['name']:<22} base max|Δ| {d_base:.2e}  lora max|Δ| {d_lora:.2e}  "
              f"adapter effect {effect:.3f}, its rel. error {d_eff:.2e}  {'ok' if ok else 'FAIL'}")
    print("PEFT check:", "FAIL" if bad else "all cases agree")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "peftcheck-out")
