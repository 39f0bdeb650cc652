package sample

import (
	"math"
	"slices"
	"strings"
	"testing"
)

func seed(v uint64) *uint64 { return &v }

func TestGreedyIsArgmaxFirstOnTies(t *testing.T) {
	s := New(Params{})
	if got := s.Sample([]float32{1, 3, 3, 2}); got != 1 {
		t.Errorf("got %d", got)
	}
}

func TestSeedReproducible(t *testing.T) {
	logits := make([]float32, 50)
	for i := range logits {
		logits[i] = float32(math.Sin(float64(i)))
	}
	draw := func(p Params) []int32 {
		s := New(p)
		var out []int32
		for range 40 {
			out = append(out, s.Sample(slices.Clone(logits)))
		}
		return out
	}
	p := Params{Temperature: 1, Seed: seed(42)}
	a, b := draw(p), draw(p)
	if !slices.Equal(a, b) {
		t.Fatal("same seed gave different tokens")
	}
	p.Seed = seed(43)
	if slices.Equal(a, draw(p)) {
		t.Error("different seeds gave the same 40 tokens")
	}
}

func TestTopKTopP(t *testing.T) {
	logits := []float32{0, 5, 4.9, 1, -1}
	s := New(Params{Temperature: 1, TopK: 2, Seed: seed(1)})
	for range 200 {
		if got := s.Sample(slices.Clone(logits)); got != 1 && got != 2 {
			t.Fatalf("top_k 2 drew %d", got)
		}
	}
	// p(1) ≈ 0.50, p(2) ≈ 0.45: top_p 0.3 keeps only token 1.
	s = New(Params{Temperature: 1, TopP: 0.3, Seed: seed(1)})
	for range 200 {
		if got := s.Sample(slices.Clone(logits)); got != 1 {
			t.Fatalf("top_p 0.3 drew %d", got)
		}
	}
}

func TestSamplingFollowsDistribution(t *testing.T) {
	logits := []float32{0, float32(math.Log(3))} // p = 0.25, 0.75
	s := New(Params{Temperature: 1, Seed: seed(7)})
	n1 := 0
	const n = 20000
	for range n {
		if s.draw(slices.Clone(logits)) == 1 {
			n1++
		}
	}
	if f := float64(n1) / n; math.Abs(f-0.75) > 0.015 {
		t.Errorf("frequency of token 1 = %.3f, want 0.75", f)
	}
}

func TestPenalties(t *testing.T) {
	s := New(Params{PresencePenalty: 1, FrequencyPenalty: 0.5})
	s.Observe(0)
	s.Observe(0)
	l := []float32{3, 1.5}
	s.Penalize(l)
	if l[0] != 1 || l[1] != 1.5 {
		t.Errorf("penalized %v", l)
	}
	if err := (Params{Temperature: 3}).Validate(); err == nil {
		t.Error("temperature 3 accepted")
	}
}

func TestLogSoftmaxAndTop(t *testing.T) {
	lp := LogSoftmax([]float32{1, 2, 3, 0})
	var sum float64
	for _, v := range lp {
		sum += math.Exp(float64(v))
	}
	if math.Abs(sum-1) > 1e-6 {
		t.Errorf("probabilities sum to %g", sum)
	}
	top := Top(lp, 2)
	if len(top) != 2 || top[0].Token != 2 || top[1].Token != 1 {
		t.Errorf("top %v", top)
	}
}

func TestStopMatcher(t *testing.T) {
	for _, tc := range []struct {
		stops  []string
		chunks []string
		want   string
		stop   bool
	}{
		{[]string{"END"}, []string{"hello E", "N", "D more"}, "hello ", true},
		{[]string{"END"}, []string{"hello E", "NX"}, "hello ENX", false},
		{[]string{"\n\n", "###"}, []string{"a\n", "b##", "#c"}, "a\nb", true},
		{nil, []string{"abc"}, "abc", false},
		{[]string{"ab", "b"}, []string{"xa", "b"}, "x", true},
	} {
		m := NewStopMatcher(tc.stops)
		var out strings.Builder
		stopped := false
		for _, c := range tc.chunks {
			e, s := m.Push(c)
			out.WriteString(e)
			if s {
				stopped = true
				break
			}
		}
		out.WriteString(m.Flush())
		if out.String() != tc.want || stopped != tc.stop {
			t.Errorf("%q %q: got %q,%v want %q,%v", tc.stops, tc.chunks, out.String(), stopped, tc.want, tc.stop)
		}
	}
}
