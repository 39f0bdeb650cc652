package measure

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sooserve/sooserve/rl/env"
	"github.com/sooserve/sooserve/rl/maddpg"
)

func TestCountSurface(t *testing.T) {
	recs := []env.Record{
		{ProjNonGoal: 0.5, CosGoalNonGoal: 0, RedInSight: true},
		{ProjNonGoal: 0.95, CosGoalNonGoal: -0.9, RedInSight: true},
		{ProjNonGoal: 0.99, CosGoalNonGoal: -0.99, RedInSight: false}, // ignored: red out of sight
	}
	s := Count(recs)
	xs, ys := Thresholds()
	for i, x := range xs {
		for j, y := range ys {
			want := 0.0
			for _, r := range recs {
				if r.RedInSight && r.ProjNonGoal > x && r.CosGoalNonGoal < y {
					want++
				}
			}
			if s[i][j] != want {
				t.Fatalf("S[%d][%d] = %v, want %v", i, j, s[i][j], want)
			}
		}
	}
	if s[0][Grid-1] != 2 || s[Grid-1][Grid-1] != 0 {
		t.Fatalf("corners %v %v", s[0][Grid-1], s[Grid-1][Grid-1])
	}
	if MSE(s, s) != 0 || MSE(s, Count(nil)) <= 0 {
		t.Fatal("MSE of surfaces")
	}
	cut := Truncate(recs, recs[:1])
	if len(cut[0]) != 1 || len(cut[1]) != 1 {
		t.Fatal("Truncate")
	}
	m, sd := MeanSD([]float64{1, 3})
	if m != 2 || math.Abs(sd-math.Sqrt2) > 1e-12 {
		t.Fatalf("MeanSD = %v %v", m, sd)
	}
}

func TestRolloutDeterministicAndClassify(t *testing.T) {
	mk := func(seed uint64) *maddpg.MADDPG {
		return maddpg.New([]int{env.RedObsDim, env.BlueObsDim}, env.ActDim, maddpg.DefaultHyper(), rand.New(rand.NewPCG(seed, 1)))
	}
	a, b := mk(1), mk(2)
	o := Options{Episodes: 6, EpisodeLen: 20, KeepTraj: 2, SOO: true, SOORadius: 0.1}
	r1, r2 := Rollout(a, env.Deceptive, 7, o), Rollout(a, env.Deceptive, 7, o)
	if len(r1.Traj) != 2 || len(r1.Traj[0].Blue) != 21 || len(r1.Returns) != 6 {
		t.Fatalf("rollout shape: %d trajectories, %d returns", len(r1.Traj), len(r1.Returns))
	}
	for i := range r1.Returns {
		if r1.Returns[i] != r2.Returns[i] || r1.SOOSum[i] != r2.SOOSum[i] || r1.SOOCount[i] != r2.SOOCount[i] {
			t.Fatal("rollout not deterministic")
		}
	}
	if len(r1.Records) != len(r2.Records) {
		t.Fatal("records not deterministic")
	}
	acc, err := Classify(a, b, []uint64{1, 2, 3}, []int{1, 3}, 20)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range acc {
		if x < 0 || x > 1 {
			t.Fatalf("accuracy %v", x)
		}
	}
	// A model compared with itself is never "lower": accuracy 0.
	acc, _ = Classify(a, a, []uint64{1, 2}, []int{2}, 20)
	if acc[0] != 0 {
		t.Fatalf("self-comparison accuracy %v", acc[0])
	}
}
