package training

import (
	"context"
	"testing"

	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
)

// lmBenchConfig is config.json of the testbed shape (issue 17): d=128, 4
// layers, 4 heads, SwiGLU with 344, RoPE, vocabulary 1024, context 256,
// tied embeddings.
const lmBenchConfig = `{"model_type": "llama", "vocab_size": 1024, "hidden_size": 128, "intermediate_size": 344,
	"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256,
	"rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true, "hidden_act": "silu"}`

// lmBenchBatch is 16 rows of 256 tokens, each packing documents of
// 24..183 tokens (the last one cut to fill the row), the second half of
// each document's tokens weighted 5: the batch of engine/cpu's
// BenchmarkLMLossGrad and of scripts/bench/torch_lm_step.py.
func lmBenchBatch(vocab int) cpu.LMBatch {
	var b cpu.LMBatch
	k := 0
	for r := range 16 {
		var row, docs []int32
		var ws []float32
		for t := 0; t < 256; k++ {
			n := min(24+(k*37)%160, 256-t)
			for i := range n {
				row = append(row, int32(((r*256+t+i)*7919+13)%vocab))
				docs = append(docs, int32(k))
				ws = append(ws, float32(1+4*(2*i/n)))
			}
			t += n
		}
		b.Rows, b.Docs, b.Weights = append(b.Rows, row), append(b.Docs, docs), append(b.Weights, ws)
	}
	return b
}

// BenchmarkLMStep times one full-parameter training step on the testbed
// shape: 16×256 packed tokens, the weighted next-token loss and every
// weight's gradient, clipping to norm 1 and an AdamW update, on all
// threads. Compare with scripts/bench/torch_lm_step.py's "step" line, run
// on the same machine with the same thread count.
func BenchmarkLMStep(b *testing.B) {
	cfg, err := model.ParseConfig([]byte(lmBenchConfig))
	if err != nil {
		b.Fatal(err)
	}
	tr, err := NewLMTrainer(NewLMModel(cfg, 1), LMConfig{LR: 3e-3, WarmupSteps: 10, Steps: 1000, WeightDecay: 0.01, ClipNorm: 1}, cpu.Options{})
	if err != nil {
		b.Fatal(err)
	}
	batch := lmBenchBatch(cfg.VocabSize)
	ctx := context.Background()
	if _, err := tr.Step(ctx, batch); err != nil { // sizes the workspace
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := tr.Step(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(16*256*b.N)/b.Elapsed().Seconds(), "tokens/s")
}
