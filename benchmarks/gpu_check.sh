#!/usr/bin/env bash
# The GPU check: train on CUDA (MiniLM with every layer fine-tuned, and MPNet when a local
# checkpoint is given), export and validate, refine on CUDA; wall times and peak GPU memory.
#
#   bash benchmarks/gpu_check.sh [MPNET_DIR]      # on a machine with CUDA torch installed
#
# Needs the project installed in the current Python (pip install -e '.[train]' without
# replacing the CUDA torch) and SemEval under ../shared/data. Prints one line per step.
set -euo pipefail
cd "$(dirname "$0")/.."
MPNET="${1:-}"
OUT="${GPU_CHECK_OUT:-runs/gpu-check}"
DATA="../shared/data/semeval-fewshot-mixtral"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1

python - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check needs one"
print("device:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
EOF

step() {  # step NAME COMMAND...: wall time and the peak GPU memory of one command
  local name="$1"; shift
  local start end
  start=$(date +%s.%N)
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "$@" > "$OUT/$name.log" 2>&1
  end=$(date +%s.%N)
  local peak
  peak=$(grep -o 'peak_gpu_mib [0-9.]*' "$OUT/$name.log" | tail -1 | cut -d' ' -f2 || true)
  printf '%-28s %8.1f s   peak GPU %s MiB\n' "$name" "$(echo "$end - $start" | bc)" "${peak:-?}"
}

train() {  # train NAME ENCODER EXTRA...: api.train on CUDA, printing torch's peak memory
  local name="$1" encoder="$2"; shift 2
  python - "$DATA/train.jsonl" "$OUT/$name" "$encoder" "$@" <<'EOF'
import sys, torch
from sidyp_prod import api
from sidyp_prod.config import SiDyPConfig
corpus, out, encoder, *extra = sys.argv[1:]
settings = dict(arg.split("=", 1) for arg in extra)
config = SiDyPConfig(**{k: (v if v == "all" else type(getattr(SiDyPConfig(), k))(v))
                        for k, v in settings.items()})
summary = api.train(corpus, out, config, encoder=encoder or None, device="cuda",
                    overwrite=True, refined_out=out + ".refined.jsonl")
print(summary.to_text())
print("peak_gpu_mib", torch.cuda.max_memory_allocated() / 2**20)
EOF
}

step train-minilm-full train minilm-full "" trainable_layers=all classifier_lr=5e-5 \
  classifier_epochs=20 branches=3
step validate-minilm-full sidyp-prod export "$OUT/minilm-full"
step refine-minilm-full sidyp-prod refine "$DATA/valid.jsonl" --model "$OUT/minilm-full" \
  --out "$OUT/minilm-full.valid.jsonl" --backend torch --quiet
sidyp-prod evaluate "$OUT/minilm-full.refined.jsonl" | head -3
sidyp-prod evaluate "$OUT/minilm-full.valid.jsonl" | head -3
# fp32 against fp16 encoder graphs in ONNX Runtime's CUDA provider (needs onnxruntime-gpu):
# rows/s of each and how many labels differ, on train + valid.
if python -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
  cat "$DATA/train.jsonl" "$DATA/valid.jsonl" > "$OUT/semeval.jsonl"
  step export-fp16 sidyp-prod export "$OUT/minilm-full" --fp16 --no-validate
  for p in fp32 fp16; do
    step "refine-onnx-$p" sidyp-prod refine "$OUT/semeval.jsonl" --model "$OUT/minilm-full" \
      --out "$OUT/semeval.$p.jsonl" --precision "$p" --overwrite
    grep -o '[0-9.]* rows/s' "$OUT/refine-onnx-$p.log" | tail -1
  done
  python - "$OUT/semeval.fp32.jsonl" "$OUT/semeval.fp16.jsonl" <<'EOF'
import json, sys
a, b = ([json.loads(line)["predicted_label"] for line in open(p)] for p in sys.argv[1:])
print(f"fp16 labels differing from fp32: {sum(x != y for x, y in zip(a, b))} of {len(a)}")
EOF
fi
if [ -n "$MPNET" ]; then
  step train-mpnet train mpnet "$MPNET" trainable_layers=all classifier_lr=5e-5 \
    classifier_epochs=20 branches=3
  step validate-mpnet sidyp-prod export "$OUT/mpnet"
  sidyp-prod evaluate "$OUT/mpnet.refined.jsonl" | head -3
fi
