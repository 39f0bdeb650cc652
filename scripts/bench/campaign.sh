#!/bin/bash
# Alternates two soo binaries through the issue 3 benchmarks on one machine,
# so both see the same host phases (this VM's read bandwidth moves between
# ~35 and ~65 GB/s within seconds). Prints one line per run.
#
#   go build -o /tmp/soo-new ./cmd/soo
#   git worktree add /tmp/old <commit> && (cd /tmp/old && go build -o /tmp/soo-old ./cmd/soo)
#   scripts/bench/campaign.sh /tmp/soo-old /tmp/soo-new
set -u
OLD=$1 NEW=$2
run() {
	for b in $BINS; do
		"$b" bench --shape smollm2-135m "$@" --json | /usr/bin/env python3 -c 'import json,sys
r=json.load(sys.stdin)
rs=r.get("bound_ratios")
print(sys.argv[1], " ".join(sys.argv[2:]), "| tok/s %.1f"%r["decode_tokens_per_s"], "bw %.1f"%r["bandwidth_gb_s"],
      "ratio %.3f"%r.get("bound_ratio",0), ("[" + " ".join("%.2f"%x for x in rs) + "]") if rs else "",
      "pre %.3f"%r["prefill_128_s"],
      ("x%.2f single %.1f"%(r["batch_speedup"],r["single_decode_tokens_per_s"])) if r.get("batch_speedup") else "",
      ("lora %s %+.1f%% (%.2f vs %.2f ms)"%(r.get("lora_dtype","f32"), 100*r["lora_overhead"], r["lora_step_ms"], r["lora_base_step_ms"])) if r.get("adapters") else "", flush=True)' "$b" "$@"
	done
}
date; uptime
for i in 1 2 3; do
	BINS="$OLD $NEW"; run --dtype f32; run --dtype bf16
	BINS="$NEW $OLD"; run --dtype f32; run --dtype bf16
done
for i in 1 2; do
	BINS="$OLD $NEW"; run --dtype f32 --batch 8; run --dtype bf16 --batch 8
	BINS="$NEW $OLD"; run --dtype bf16 --batch 8
done
BINS="$NEW"
for i in 1 2 3; do run --dtype bf16 --batch 4 --adapters 4 --lora-rank 16; run --dtype f32 --batch 4 --adapters 4 --lora-rank 16; done
# Adapters stored in bf16 (NEW must know --lora-dtype: sixth session on).
for i in 1 2 3; do run --dtype bf16 --batch 4 --adapters 4 --lora-rank 16 --lora-dtype bf16; done
run --dtype f32 --vocab 400; run --dtype bf16 --vocab 400; run --dtype f16
date; uptime
