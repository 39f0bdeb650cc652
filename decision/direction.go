package decision

import (
	"errors"
	"fmt"
	"math"
)

// Mean returns the mean of the rows xs, in float64.
func Mean(xs [][]float64) ([]float64, error) {
	if len(xs) == 0 {
		return nil, errors.New("decision: mean of no rows")
	}
	m := make([]float64, len(xs[0]))
	for i, x := range xs {
		if len(x) != len(m) {
			return nil, fmt.Errorf("decision: row %d has %d values, row 0 has %d", i, len(x), len(m))
		}
		for j, v := range x {
			m[j] += v
		}
	}
	for j := range m {
		m[j] /= float64(len(xs))
	}
	return m, nil
}

// MeanDiff returns mean(a) − mean(b): the scenario direction with a the
// conflict and b the self activations, or the SOO direction with a the
// other and b the self fragments' (for matched pairs it equals the mean of
// the pairwise differences).
func MeanDiff(a, b [][]float64) ([]float64, error) {
	ma, err := Mean(a)
	if err != nil {
		return nil, err
	}
	mb, err := Mean(b)
	if err != nil {
		return nil, err
	}
	if len(ma) != len(mb) {
		return nil, fmt.Errorf("decision: difference of means of widths %d and %d", len(ma), len(mb))
	}
	for j := range ma {
		ma[j] -= mb[j]
	}
	return ma, nil
}

// Norm returns the Euclidean norm of v.
func Norm(v []float64) float64 { return math.Sqrt(dot(v, v)) }

// Cosine returns a·b / (‖a‖‖b‖), or 0 when either vector is all zeros (no
// direction to compare). a and b must have the same length.
func Cosine(a, b []float64) float64 {
	na, nb := Norm(a), Norm(b)
	if na == 0 || nb == 0 {
		return 0
	}
	c := dot(a, b) / (na * nb)
	return math.Max(-1, math.Min(1, c))
}

// PairMSE returns the mean over pairs of the mean squared difference between
// self[i] and other[i]: the SOO loss at one site with last-token pooling
// (the "mse" of overlap.Compare with pooling "last", averaged over pairs).
func PairMSE(self, other [][]float64) (float64, error) {
	if len(self) == 0 || len(self) != len(other) {
		return 0, fmt.Errorf("decision: MSE of %d self and %d other rows", len(self), len(other))
	}
	var total float64
	for i := range self {
		s, o := self[i], other[i]
		if len(s) != len(o) || len(s) == 0 {
			return 0, fmt.Errorf("decision: pair %d has widths %d and %d", i, len(s), len(o))
		}
		var sq float64
		for j := range s {
			d := s[j] - o[j]
			sq += d * d
		}
		total += sq / float64(len(s))
	}
	return total / float64(len(self)), nil
}
