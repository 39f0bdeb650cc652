package plots

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/sooserve/sooserve/rl/env"
	"github.com/sooserve/sooserve/rl/measure"
)

func TestPlotsWritePNGs(t *testing.T) {
	dir := t.TempDir()
	s := measure.Count([]env.Record{{ProjNonGoal: 0.8, CosGoalNonGoal: -0.5, RedInSight: true}})
	tr := []measure.Trajectory{{Red: []env.Vec{{0, 0}, {0.1, 0}}, Blue: []env.Vec{{0, 0.1}, {0.2, 0.1}}, Goal: env.Vec{0.5, 0.5}, Fake: env.Vec{-0.5, 0}}}
	steps := []struct {
		name string
		f    func(string) error
	}{
		{"heat.png", func(p string) error { return Heatmap(s, "test", p) }},
		{"bars.png", func(p string) error { return Bars([]Bar{{"a", 1, 0.5}, {"b", 2, 0.1}}, "t", "y", p) }},
		{"traj.png", func(p string) error { return Trajectories(tr, "t", p) }},
		{"lines.png", func(p string) error {
			return Lines([]Curve{{Name: "c", X: []float64{1, 2}, Y: []float64{0.5, 1}}}, "t", "x", "y", p)
		}},
	}
	for _, st := range steps {
		p := filepath.Join(dir, st.name)
		if err := st.f(p); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		b, err := os.ReadFile(p)
		if err != nil || len(b) < 100 || string(b[1:4]) != "PNG" {
			t.Fatalf("%s: not a PNG (%d bytes, %v)", st.name, len(b), err)
		}
	}
}
