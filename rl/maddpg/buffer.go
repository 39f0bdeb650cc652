package maddpg

import (
	"math"
	"math/rand/v2"
)

// Buffer is the replay buffer of MADDPG-PyTorch: per-agent observations,
// actions, rewards, next observations and done flags in a ring of Capacity
// transitions. Storage grows on demand up to Capacity.
type Buffer struct {
	Capacity int
	ObsDims  []int
	ActDim   int
	obs      [][]float64
	next     [][]float64
	act      [][]float64
	rew      [][]float64
	done     []float64
	n, head  int
}

// NewBuffer returns an empty buffer.
func NewBuffer(capacity int, obsDims []int, actDim int) *Buffer {
	na := len(obsDims)
	return &Buffer{Capacity: capacity, ObsDims: obsDims, ActDim: actDim,
		obs: make([][]float64, na), next: make([][]float64, na), act: make([][]float64, na), rew: make([][]float64, na)}
}

// Len returns the number of stored transitions.
func (b *Buffer) Len() int { return b.n }

// Push stores one joint transition.
func (b *Buffer) Push(obs, act [][]float64, rew []float64, next [][]float64, done bool) {
	d := 0.0
	if done {
		d = 1
	}
	if b.n < b.Capacity {
		for a := range b.ObsDims {
			b.obs[a] = append(b.obs[a], obs[a]...)
			b.next[a] = append(b.next[a], next[a]...)
			b.act[a] = append(b.act[a], act[a]...)
			b.rew[a] = append(b.rew[a], rew[a])
		}
		b.done = append(b.done, d)
		b.n++
		return
	}
	i := b.head
	for a, od := range b.ObsDims {
		copy(b.obs[a][i*od:], obs[a])
		copy(b.next[a][i*od:], next[a])
		copy(b.act[a][i*b.ActDim:], act[a])
		b.rew[a][i] = rew[a]
	}
	b.done[i] = d
	b.head = (b.head + 1) % b.Capacity
}

// Batch is a sampled minibatch; per-agent slices are row-major N×dim.
type Batch struct {
	N    int
	Obs  [][]float64
	Act  [][]float64
	Rew  [][]float64
	Next [][]float64
	Done []float64
}

// Sample draws n distinct transitions uniformly (Floyd's algorithm, like
// numpy's choice without replacement). If normRew is set, each agent's
// rewards are standardised by the mean and population SD of all its stored
// rewards, as in MADDPG-PyTorch (a zero SD is replaced by 1: INFERRED guard,
// the reference would divide by zero).
func (b *Buffer) Sample(n int, rng *rand.Rand, normRew bool) *Batch {
	if n > b.n {
		n = b.n
	}
	idx := make([]int, 0, n)
	seen := make(map[int]struct{}, n)
	for j := b.n - n; j < b.n; j++ {
		t := rng.IntN(j + 1)
		if _, ok := seen[t]; ok {
			t = j
		}
		seen[t] = struct{}{}
		idx = append(idx, t)
	}
	na := len(b.ObsDims)
	bt := &Batch{N: n, Obs: make([][]float64, na), Act: make([][]float64, na), Rew: make([][]float64, na), Next: make([][]float64, na), Done: make([]float64, n)}
	for a, od := range b.ObsDims {
		bt.Obs[a] = make([]float64, n*od)
		bt.Next[a] = make([]float64, n*od)
		bt.Act[a] = make([]float64, n*b.ActDim)
		bt.Rew[a] = make([]float64, n)
		mean, sd := 0.0, 1.0
		if normRew {
			mean, sd = meanSD(b.rew[a][:b.n])
			if sd == 0 {
				sd = 1
			}
		}
		for k, i := range idx {
			copy(bt.Obs[a][k*od:(k+1)*od], b.obs[a][i*od:(i+1)*od])
			copy(bt.Next[a][k*od:(k+1)*od], b.next[a][i*od:(i+1)*od])
			copy(bt.Act[a][k*b.ActDim:(k+1)*b.ActDim], b.act[a][i*b.ActDim:(i+1)*b.ActDim])
			bt.Rew[a][k] = (b.rew[a][i] - mean) / sd
		}
	}
	for k, i := range idx {
		bt.Done[k] = b.done[i]
	}
	return bt
}

// ObsRows returns agent a's stored observations (row-major, Len()×dim).
func (b *Buffer) ObsRows(a int) []float64 { return b.obs[a][:b.n*b.ObsDims[a]] }

func meanSD(x []float64) (float64, float64) {
	var s float64
	for _, v := range x {
		s += v
	}
	m := s / float64(len(x))
	var ss float64
	for _, v := range x {
		ss += (v - m) * (v - m)
	}
	return m, math.Sqrt(ss / float64(len(x)))
}
