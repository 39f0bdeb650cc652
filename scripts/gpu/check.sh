#!/bin/bash
# The GPU checks, run from the repository root on a machine with an NVIDIA GPU,
# Python with torch + transformers + peft + jax[cuda13] (whose PJRT CUDA plugin
# GoMLX loads), after scripts/gpu/build.sh filled .gpu/ on a machine with Go:
#   1. PEFT: the adapters SOO Serve writes load in transformers + PEFT with the same logits;
#   2. engine/xla's tests on xla:cuda (cpu parity, PyTorch reference, SOO gradients);
#   3. the server over HTTP on xla:cuda against the cpu executor;
#   4. soo bench --backend xla:cuda on the SmolLM2-135M shape.
# Logs go to $OUT (default /tmp/gpu-out).
R=$(pwd); G=$R/.gpu; L=${OUT:-/tmp/gpu-out}; mkdir -p "$L"
exec > >(tee "$L/all.log") 2>&1
date; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
(cd "$G" && xz -d -T4 -f ./*.xz && chmod +x xla.test server.test soo)
echo "== PEFT check"; PYTHONUNBUFFERED=1 timeout 150 python3 scripts/peftcheck/check.py .gpu/peft
P=$(python3 -c "import jax_plugins.xla_cuda13 as p,os;print(os.path.dirname(p.__file__))")
SP=$(dirname "$(dirname "$P")")
mkdir -p /tmp/pjrt && ln -sf "$P/xla_cuda_plugin.so" /tmp/pjrt/pjrt_c_api_cuda_plugin.so
export PJRT_PLUGIN_LIBRARY_PATH=/tmp/pjrt GOPJRT_CUDA_CHECKS=0
export LD_LIBRARY_PATH=$(ls -d "$SP"/nvidia/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
LD=$(find "$SP/nvidia" /usr/local/cuda* -name 'libdevice*.bc' 2>/dev/null | head -1)
CUDA_DIR=$(dirname "$(dirname "$(dirname "$LD")")")
# XLA's default f32 matmuls use TF32 on Ampere and later (logits then differ
# from the cpu executor by ~6e-3): the parity runs switch it off.
EXACT="--xla_gpu_cuda_data_dir=$CUDA_DIR --xla_gpu_enable_triton_gemm=false"
echo "== engine/xla tests on CUDA, TF32 off"
(cd engine/xla && XLA_FLAGS="$EXACT" NVIDIA_TF32_OVERRIDE=0 timeout 400 "$G/xla.test" -test.v -test.count=1 > "$L/xla.log" 2>&1; echo "rc=$?")
grep -E "^(\s*--- |PASS|FAIL|panic|SIG)|_test.go" "$L/xla.log"
echo "== server on xla:cuda, TF32 off"
(cd server && SOO_TEST_XLA_BACKEND=xla:cuda XLA_FLAGS="$EXACT" NVIDIA_TF32_OVERRIDE=0 timeout 120 "$G/server.test" -test.run TestXLABackendServesSameTokens -test.v 2>&1 | grep -E "^(\s*--- |PASS|FAIL)|_test.go")
echo "== soo bench --backend xla:cuda (XLA defaults: TF32 allowed)"
XLA_FLAGS="--xla_gpu_cuda_data_dir=$CUDA_DIR" timeout 150 "$G/soo" bench --backend xla:cuda --shape smollm2-135m --tokens 32 --json 2>&1 | grep '^{'
date
