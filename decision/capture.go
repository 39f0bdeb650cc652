package decision

import (
	"context"
	"fmt"
	"math"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
)

// Activations are the last-token activations of a set of prompts: for each
// capture point, one row per prompt, in prompt order.
type Activations map[engine.Point][][]float32

// rows64 returns the rows at pt as float64.
func (a Activations) rows64(pt engine.Point) ([][]float64, error) {
	rows, ok := a[pt]
	if !ok {
		return nil, fmt.Errorf("decision: no activations at layer %d %s", pt.Layer, pt.Site)
	}
	out := make([][]float64, len(rows))
	for i, r := range rows {
		v := make([]float64, len(r))
		for j, x := range r {
			v[j] = float64(x)
		}
		out[i] = v
	}
	return out, nil
}

// DefaultBatch is the number of prompts Capture runs per forward step.
const DefaultBatch = 8

// maxContext is the longest prompt ex accepts.
func maxContext(ex engine.Executor) int {
	if m, ok := ex.(interface{ MaxContext() int }); ok {
		return m.MaxContext()
	}
	return ex.Config().MaxPositions
}

// Capture runs each prompt on a fresh sequence through adapter (nil for the
// base model), batch prompts per forward step (0: DefaultBatch), without
// logits, and returns the activations of its last token at points. A value
// that is not finite is an error naming the prompt and the point: the model
// or the adapter is numerically broken, and no statistic of it means
// anything.
func Capture(ctx context.Context, ex engine.Executor, adapter *lora.Adapter, prompts [][]int32, points []engine.Point, batch int) (Activations, error) {
	if len(points) == 0 {
		return nil, fmt.Errorf("decision: capture: no points")
	}
	cfg := ex.Config()
	for _, pt := range points {
		if pt.Layer < 0 || pt.Layer >= cfg.Layers || pt.Site >= engine.NumSites {
			return nil, fmt.Errorf("decision: capture: layer %d %s is not in a model of %d layers", pt.Layer, pt.Site, cfg.Layers)
		}
	}
	mc := maxContext(ex)
	for i, ids := range prompts {
		if len(ids) == 0 {
			return nil, fmt.Errorf("decision: capture: prompt %d is empty", i)
		}
		if len(ids) > mc {
			return nil, fmt.Errorf("decision: capture: prompt %d has %d tokens; the context is %d", i, len(ids), mc)
		}
		for _, t := range ids {
			if t < 0 || (cfg.VocabSize > 0 && int(t) >= cfg.VocabSize) {
				return nil, fmt.Errorf("decision: capture: prompt %d has token %d outside the vocabulary of %d", i, t, cfg.VocabSize)
			}
		}
	}
	if batch <= 0 {
		batch = DefaultBatch
	}
	acts := make(Activations, len(points))
	for _, pt := range points {
		acts[pt] = make([][]float32, len(prompts))
	}
	for lo := 0; lo < len(prompts); lo += batch {
		hi := min(lo+batch, len(prompts))
		if err := captureBatch(ctx, ex, adapter, prompts, lo, hi, points, acts); err != nil {
			return nil, err
		}
	}
	return acts, nil
}

// captureBatch runs prompts[lo:hi] as one forward step and stores their
// last-token rows in acts.
func captureBatch(ctx context.Context, ex engine.Executor, adapter *lora.Adapter, prompts [][]int32, lo, hi int, points []engine.Point, acts Activations) error {
	rows := make([]engine.Row, 0, hi-lo)
	for _, ids := range prompts[lo:hi] {
		n := len(ids)
		rows = append(rows, engine.Row{Seq: ex.NewSequence(), Tokens: ids, Adapter: adapter,
			Capture: &engine.Capture{Points: points, From: n - 1, To: n}, Logits: engine.LogitsNone})
	}
	defer func() {
		for _, r := range rows {
			r.Seq.Release()
		}
	}()
	outs, err := ex.Forward(ctx, rows)
	if err != nil {
		return fmt.Errorf("decision: capture prompts %d..%d: forward: %w", lo, hi-1, err)
	}
	for k, out := range outs {
		for _, pt := range points {
			t, ok := out.Acts[pt]
			if !ok || t.Rows < 1 || len(t.Data) < t.Cols {
				return fmt.Errorf("decision: capture prompt %d: the executor returned no activations at layer %d %s", lo+k, pt.Layer, pt.Site)
			}
			row := append([]float32(nil), t.Row(t.Rows-1)...)
			for _, v := range row {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					return fmt.Errorf("decision: capture prompt %d: activations at layer %d %s are not finite (the model or the adapter is numerically broken)", lo+k, pt.Layer, pt.Site)
				}
			}
			acts[pt][lo+k] = row
		}
	}
	return nil
}
