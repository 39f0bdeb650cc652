// Package sample turns logits into tokens: greedy and seeded random sampling
// with temperature, top-k and top-p, OpenAI-style presence and frequency
// penalties, log-probabilities, and stop-sequence matching over streamed text.
package sample

import (
	crand "crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
)

// Params are a request's sampling settings.
type Params struct {
	Temperature      float64 // 0: greedy
	TopP             float64 // 0 or 1: off
	TopK             int     // 0: off
	Seed             *uint64 // nil: random
	PresencePenalty  float64
	FrequencyPenalty float64
}

// Validate checks the ranges the OpenAI API documents.
func (p Params) Validate() error {
	switch {
	case p.Temperature < 0 || p.Temperature > 2 || math.IsNaN(p.Temperature):
		return fmt.Errorf("temperature must be between 0 and 2, got %g", p.Temperature)
	case p.TopP < 0 || p.TopP > 1 || math.IsNaN(p.TopP):
		return fmt.Errorf("top_p must be between 0 and 1, got %g", p.TopP)
	case p.TopK < 0:
		return fmt.Errorf("top_k must be non-negative, got %d", p.TopK)
	case p.PresencePenalty < -2 || p.PresencePenalty > 2:
		return fmt.Errorf("presence_penalty must be between -2 and 2, got %g", p.PresencePenalty)
	case p.FrequencyPenalty < -2 || p.FrequencyPenalty > 2:
		return fmt.Errorf("frequency_penalty must be between -2 and 2, got %g", p.FrequencyPenalty)
	}
	return nil
}

// Sampler draws tokens for one sequence. It is not safe for concurrent use.
type Sampler struct {
	p      Params
	rng    *rand.Rand
	counts map[int32]int
	idx    []int32
	prob   []float64
}

// New returns a sampler; the same Params with the same Seed give the same tokens.
func New(p Params) *Sampler {
	var seed uint64
	if p.Seed != nil {
		seed = *p.Seed
	} else {
		var b [8]byte
		_, _ = crand.Read(b[:])
		seed = binary.LittleEndian.Uint64(b[:])
	}
	return &Sampler{p: p, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), counts: map[int32]int{}}
}

// Observe records a generated token for the presence and frequency penalties.
func (s *Sampler) Observe(tok int32) { s.counts[tok]++ }

// Penalize applies the presence and frequency penalties to logits in place.
func (s *Sampler) Penalize(logits []float32) {
	if s.p.PresencePenalty == 0 && s.p.FrequencyPenalty == 0 {
		return
	}
	for tok, n := range s.counts {
		if int(tok) < len(logits) {
			logits[tok] -= float32(s.p.PresencePenalty + s.p.FrequencyPenalty*float64(n))
		}
	}
}

// Sample picks the next token from logits (which it may modify: penalties are
// applied in place) and records it.
func (s *Sampler) Sample(logits []float32) int32 {
	s.Penalize(logits)
	var tok int32
	if s.p.Temperature == 0 {
		tok = Argmax(logits)
	} else {
		tok = s.draw(logits)
	}
	s.Observe(tok)
	return tok
}

// Argmax returns the index of the largest logit (the first on ties).
func Argmax(logits []float32) int32 {
	best := 0
	for i, v := range logits {
		if v > logits[best] {
			best = i
		}
	}
	return int32(best)
}

func (s *Sampler) draw(logits []float32) int32 {
	n := len(logits)
	s.idx = s.idx[:0]
	for i := range n {
		s.idx = append(s.idx, int32(i))
	}
	// Sort candidates by logit, descending; ties by index for determinism.
	sort.Slice(s.idx, func(a, b int) bool {
		la, lb := logits[s.idx[a]], logits[s.idx[b]]
		if la != lb {
			return la > lb
		}
		return s.idx[a] < s.idx[b]
	})
	k := n
	if s.p.TopK > 0 && s.p.TopK < k {
		k = s.p.TopK
	}
	cand := s.idx[:k]
	inv := 1 / s.p.Temperature
	maxL := float64(logits[cand[0]])
	s.prob = slices.Grow(s.prob[:0], k)
	var sum float64
	for _, i := range cand {
		p := math.Exp((float64(logits[i]) - maxL) * inv)
		s.prob = append(s.prob, p)
		sum += p
	}
	if s.p.TopP > 0 && s.p.TopP < 1 {
		var cum float64
		for j, p := range s.prob {
			cum += p / sum
			if cum >= s.p.TopP {
				s.prob = s.prob[:j+1]
				break
			}
		}
		sum = 0
		for _, p := range s.prob {
			sum += p
		}
	}
	r := s.rng.Float64() * sum
	for j, p := range s.prob {
		r -= p
		if r < 0 {
			return cand[j]
		}
	}
	return cand[len(s.prob)-1]
}

// TokenLogprob is a token with its log-probability.
type TokenLogprob struct {
	Token   int32
	Logprob float32
}

// LogSoftmax returns log(softmax(logits)) computed in float64.
func LogSoftmax(logits []float32) []float32 {
	maxL := math.Inf(-1)
	for _, v := range logits {
		maxL = math.Max(maxL, float64(v))
	}
	var sum float64
	for _, v := range logits {
		sum += math.Exp(float64(v) - maxL)
	}
	lse := maxL + math.Log(sum)
	out := make([]float32, len(logits))
	for i, v := range logits {
		out[i] = float32(float64(v) - lse)
	}
	return out
}

// Top returns the k most likely entries of logprobs, most likely first.
func Top(logprobs []float32, k int) []TokenLogprob {
	k = min(k, len(logprobs))
	out := make([]TokenLogprob, 0, k+1)
	for i, lp := range logprobs {
		if len(out) < k || lp > out[len(out)-1].Logprob {
			j := sort.Search(len(out), func(j int) bool { return out[j].Logprob < lp })
			out = slices.Insert(out, j, TokenLogprob{int32(i), lp})
			if len(out) > k {
				out = out[:k]
			}
		}
	}
	return out
}
