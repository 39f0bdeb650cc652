#!/bin/bash
# Builds what scripts/gpu/check.sh runs on a GPU machine (which has no Go):
# stripped, xz-compressed -tags xla test binaries and soo, plus the PEFT
# check's adapters and logits, into .gpu/ (git-ignored; carry it).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .gpu && mkdir -p .gpu
go test -c -tags xla -ldflags='-s -w' -o .gpu/xla.test ./engine/xla
go test -c -tags xla -ldflags='-s -w' -o .gpu/server.test ./server
go build -tags xla -ldflags='-s -w' -o .gpu/soo ./cmd/soo
go run ./scripts/peftcheck -out .gpu/peft
xz -T2 -6 .gpu/xla.test .gpu/server.test .gpu/soo
du -sh .gpu
