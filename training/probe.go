package training

import (
	"context"
	"fmt"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/overlap"
)

// ProbeAtLayer returns an Env.Probe that measures the latent-SOO probe pairs
// (PAPER.md §7, already tokenized) at the spec's layer and site, with mean
// pooling: the overlap a job reports before and after training.
func ProbeAtLayer(ex engine.Executor, pairs []overlap.TokenPair) func(context.Context, *lora.Adapter, Spec) (float64, error) {
	return func(ctx context.Context, a *lora.Adapter, s Spec) (float64, error) {
		site, err := engine.ParseSite(s.Site)
		if err != nil {
			return 0, err
		}
		spec, err := overlap.Spec{Layers: []int{s.Layer}, Sites: []engine.Site{site}, Pooling: overlap.PoolMean}.Resolve(ex.Config().Layers)
		if err != nil {
			return 0, err
		}
		res, err := overlap.MeasureBatch(ctx, ex, a, pairs, spec)
		if err != nil {
			return 0, fmt.Errorf("training: probe: %w", err)
		}
		var sum float64
		for _, r := range res {
			sum += r.Layers[0].MSE
		}
		return sum / float64(len(res)), nil
	}
}
