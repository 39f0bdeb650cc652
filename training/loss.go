// Package training fine-tunes Self-Other Overlap (SOO) LoRA adapters: pair
// datasets, the SOO loss, the optimiser and training jobs.
package training

import (
	"fmt"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/overlap"
)

// Pooling says how a [T, d] activation is compared with its twin; the
// names and meanings are the overlap metrics' (DESIGN.md §5).
type Pooling = overlap.Pooling

// Poolings, as in package overlap.
const (
	PoolFull = overlap.PoolFull
	PoolMean = overlap.PoolMean
	PoolLast = overlap.PoolLast
)

// ParsePooling validates a pooling name; "" means full, the training default
// (the overlap metrics default to mean).
func ParsePooling(s string) (Pooling, error) {
	if s == "" {
		return PoolFull, nil
	}
	return overlap.ParsePooling(s)
}

// SOOLoss returns MSE(S, O) under the pooling, computed in float64, and its
// gradients with respect to S and O.
func SOOLoss(S, O engine.Tensor2D, p Pooling) (loss float64, dS, dO engine.Tensor2D, err error) {
	if S.Cols != O.Cols || S.Rows == 0 || O.Rows == 0 {
		return 0, dS, dO, fmt.Errorf("training: SOO loss of [%d,%d] and [%d,%d]", S.Rows, S.Cols, O.Rows, O.Cols)
	}
	d := S.Cols
	dS = engine.Tensor2D{Rows: S.Rows, Cols: d, Data: make([]float32, len(S.Data))}
	dO = engine.Tensor2D{Rows: O.Rows, Cols: d, Data: make([]float32, len(O.Data))}
	switch p {
	case PoolFull:
		T := max(S.Rows, O.Rows)
		n := float64(T * d)
		for t := 0; t < T; t++ {
			for i := 0; i < d; i++ {
				var s, o float64
				if t < S.Rows {
					s = float64(S.Data[t*d+i])
				}
				if t < O.Rows {
					o = float64(O.Data[t*d+i])
				}
				diff := s - o
				loss += diff * diff
				g := 2 * diff / n
				if t < S.Rows {
					dS.Data[t*d+i] = float32(g)
				}
				if t < O.Rows {
					dO.Data[t*d+i] = float32(-g)
				}
			}
		}
		loss /= n
	case PoolMean:
		for i := 0; i < d; i++ {
			var ms, mo float64
			for t := 0; t < S.Rows; t++ {
				ms += float64(S.Data[t*d+i])
			}
			for t := 0; t < O.Rows; t++ {
				mo += float64(O.Data[t*d+i])
			}
			ms /= float64(S.Rows)
			mo /= float64(O.Rows)
			diff := ms - mo
			loss += diff * diff
			g := 2 * diff / float64(d)
			for t := 0; t < S.Rows; t++ {
				dS.Data[t*d+i] = float32(g / float64(S.Rows))
			}
			for t := 0; t < O.Rows; t++ {
				dO.Data[t*d+i] = float32(-g / float64(O.Rows))
			}
		}
		loss /= float64(d)
	case PoolLast:
		s, o := S.Row(S.Rows-1), O.Row(O.Rows-1)
		ds, do := dS.Row(S.Rows-1), dO.Row(O.Rows-1)
		for i := 0; i < d; i++ {
			diff := float64(s[i]) - float64(o[i])
			loss += diff * diff
			ds[i] = float32(2 * diff / float64(d))
			do[i] = -ds[i]
		}
		loss /= float64(d)
	default:
		return 0, dS, dO, fmt.Errorf("training: unknown pooling %q", p)
	}
	return loss, dS, dO, nil
}
