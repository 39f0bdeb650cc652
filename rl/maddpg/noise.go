package maddpg

import "math/rand/v2"

// OUNoise is Ornstein–Uhlenbeck exploration noise (MADDPG-PyTorch
// OUNoise: θ 0.15, σ 0.2, μ 0), multiplied by Scale on output.
type OUNoise struct {
	Theta, Sigma, Mu, Scale float64
	X                       []float64
}

// NewOUNoise returns noise of dimension dim with the reference parameters.
func NewOUNoise(dim int, scale float64) *OUNoise {
	n := &OUNoise{Theta: 0.15, Sigma: 0.2, Scale: scale, X: make([]float64, dim)}
	n.Reset()
	return n
}

// Reset sets the state back to μ.
func (n *OUNoise) Reset() {
	for i := range n.X {
		n.X[i] = n.Mu
	}
}

// Sample advances the process one step and returns Scale·x (a new slice).
func (n *OUNoise) Sample(rng *rand.Rand) []float64 {
	out := make([]float64, len(n.X))
	for i, x := range n.X {
		x += n.Theta*(n.Mu-x) + n.Sigma*rng.NormFloat64()
		n.X[i] = x
		out[i] = x * n.Scale
	}
	return out
}

// NoiseScale is the linear decay of train.py: final + (init−final)·
// max(0, explEps−ep)/explEps, for episode ep (0-based).
func NoiseScale(ep, explEps int, init, final float64) float64 {
	if explEps <= 0 {
		return final
	}
	rem := float64(max(0, explEps-ep)) / float64(explEps)
	return final + (init-final)*rem
}
