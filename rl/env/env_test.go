package env

import (
	"math"
	"testing"
)

// place returns an env with a hand-set state (goal is landmark 0).
func place(v Variant, red, blue, goal, fake Vec) *Env {
	e := New(v, 1)
	e.Reset()
	e.S = State{Goal: 0}
	e.S.Pos[Red], e.S.Pos[Blue] = red, blue
	e.S.Landmarks[0], e.S.Landmarks[1] = goal, fake
	return e
}

var still = [2][]float64{{0, 0}, {0, 0}}

func TestDeterministicUnderSeed(t *testing.T) {
	run := func(seed uint64) []float64 {
		e := New(Deceptive, seed)
		var out []float64
		for ep := 0; ep < 3; ep++ {
			o := e.Reset()
			out = append(out, o[1]...)
			for s := 0; s < 10; s++ {
				o, r := e.Step([2][]float64{{0.3, -0.2}, {-0.5, 0.9}})
				out = append(out, o[0]...)
				out = append(out, r[0], r[1])
			}
		}
		return out
	}
	a, b, c := run(7), run(7), run(8)
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("same seed diverged at %d", i)
		}
	}
	same := true
	for i := range a {
		same = same && a[i] == c[i]
	}
	if same {
		t.Fatal("different seeds gave identical rollouts")
	}
}

func TestResetDistribution(t *testing.T) {
	e := New(Honest, 3)
	goals := [2]int{}
	lo, hi := -1+WallMargin, 1-WallMargin
	for i := 0; i < 2000; i++ {
		e.Reset()
		s := e.S
		goals[s.Goal]++
		for _, p := range []Vec{s.Pos[Red], s.Pos[Blue], s.Landmarks[0], s.Landmarks[1]} {
			if p[0] < lo || p[0] > hi || p[1] < lo || p[1] > hi {
				t.Fatalf("position %v outside the spawn box", p)
			}
		}
		if d := dist(s.Pos[Red], s.Pos[Blue]); d > SightRadius+1e-12 {
			t.Fatalf("blue spawned %v from red, want ≤ %v", d, SightRadius)
		}
		if s.Vel != [2]Vec{} || s.Step != 0 {
			t.Fatal("reset left velocity or step count")
		}
	}
	if goals[0] < 900 || goals[1] < 900 {
		t.Fatalf("goal choice not uniform: %v", goals)
	}
}

func TestObservationLayoutAndRadius(t *testing.T) {
	e := place(Honest, Vec{0, 0}, Vec{0.1, 0}, Vec{0.5, 0.5}, Vec{-0.5, 0.2})
	o := e.Observe()
	wantBlue := []float64{0.4, 0.5, 0.4, 0.5, -0.6, 0.2, -0.1, 0, 0, 0}
	wantRed := []float64{0.5, 0.5, -0.5, 0.2, 0.1, 0}
	for i, w := range wantBlue {
		if math.Abs(o[Blue][i]-w) > 1e-12 {
			t.Fatalf("blue obs %v, want %v", o[Blue], wantBlue)
		}
	}
	for i, w := range wantRed {
		if math.Abs(o[Red][i]-w) > 1e-12 {
			t.Fatalf("red obs %v, want %v", o[Red], wantRed)
		}
	}
	// Out of the 0.125 radius both see (0, 0).
	e.S.Pos[Blue] = Vec{0.13, 0}
	o = e.Observe()
	if o[Blue][6] != 0 || o[Blue][7] != 0 || o[Red][4] != 0 || o[Red][5] != 0 {
		t.Fatalf("agents visible beyond radius: %v %v", o[Red], o[Blue])
	}
	// Red is colour-blind: swapping which landmark is the goal changes only blue's first two entries.
	e.S.Pos[Blue] = Vec{0.1, 0}
	a := e.Observe()
	e.S.Goal = 1
	b := e.Observe()
	for i := range a[Red] {
		if a[Red][i] != b[Red][i] {
			t.Fatal("red's observation depends on the goal")
		}
	}
	if b[Blue][0] != -0.6 || b[Blue][1] != 0.2 {
		t.Fatalf("blue goal entry %v after goal swap", b[Blue][:2])
	}
}

func TestDynamics(t *testing.T) {
	e := place(Honest, Vec{0, 0}, Vec{0.5, 0}, Vec{0.5, 0.5}, Vec{-0.5, 0.5})
	e.Step([2][]float64{{1, 0}, {0, 0}})
	// v = 0·0.75 + 5·1·0.1 = 0.5; x = 0.5·0.1.
	if v := e.S.Vel[Red][0]; math.Abs(v-0.5) > 1e-12 {
		t.Fatalf("velocity %v, want 0.5", v)
	}
	if x := e.S.Pos[Red][0]; math.Abs(x-0.05) > 1e-12 {
		t.Fatalf("position %v, want 0.05", x)
	}
	e.Step(still)
	if v := e.S.Vel[Red][0]; math.Abs(v-0.375) > 1e-12 {
		t.Fatalf("damped velocity %v, want 0.375", v)
	}
	// Actions are clipped to [-1, 1].
	e2 := place(Honest, Vec{0, 0}, Vec{0.5, 0}, Vec{0.5, 0.5}, Vec{-0.5, 0.5})
	e2.Step([2][]float64{{7, 0}, {0, 0}})
	if v := e2.S.Vel[Red][0]; math.Abs(v-0.5) > 1e-12 {
		t.Fatalf("unclipped action: velocity %v", v)
	}
}

func TestWallsPushBack(t *testing.T) {
	e := place(Honest, Vec{0, 0}, Vec{0.5, 0}, Vec{0.5, 0.5}, Vec{-0.5, 0.5})
	maxX := 0.0
	for s := 0; s < 200; s++ {
		e.Step([2][]float64{{1, 0}, {0, -1}})
		maxX = math.Max(maxX, e.S.Pos[Red][0])
	}
	// Contact starts at 1 − (size + width/2) = 0.8; the soft wall balances a
	// thrust of 5 at a penetration of 5/100, i.e. x = 0.85, after overshooting.
	if maxX >= 1 {
		t.Fatalf("red crossed the wall: x = %v", maxX)
	}
	if x := e.S.Pos[Red][0]; math.Abs(x-0.85) > 0.01 {
		t.Fatalf("red rests at x = %v pushing into the right wall, want 0.85", x)
	}
	if y := e.S.Pos[Blue][1]; math.Abs(y+0.85) > 0.01 {
		t.Fatalf("blue at y = %v pushing into the bottom wall", y)
	}
	if f := wallForce(Vec{0, 0}); math.Abs(f[0]) > 1e-100 || math.Abs(f[1]) > 1e-100 {
		t.Fatalf("wall force at the centre: %v", f)
	}
}

func TestTrappingFreezesRed(t *testing.T) {
	fake := Vec{-0.5, 0.5}
	e := place(Deceptive, Vec{-0.5 + 0.2, 0.5}, Vec{0.5, 0}, Vec{0.5, 0.5}, fake)
	e.S.Vel[Red] = Vec{-1, 0}
	e.Step([2][]float64{{-1, 0}, {0, 0}}) // x: −0.3 → −0.3 + (−0.75−0.5)... reaches < 0.16 of fake
	if !e.S.Trapped {
		t.Fatalf("red at %v (%.3f from fake) not trapped", e.S.Pos[Red], dist(e.S.Pos[Red], fake))
	}
	p := e.S.Pos[Red]
	for s := 0; s < 5; s++ {
		o, _ := e.Step([2][]float64{{1, 1}, {0, 0}})
		if o[Blue][8] != 1 || o[Blue][9] != 1 {
			t.Fatal("blue's trapped flag not set")
		}
	}
	if e.S.Pos[Red] != p {
		t.Fatalf("trapped red moved from %v to %v", p, e.S.Pos[Red])
	}
	// A new episode frees red.
	e.Reset()
	for e.S.Trapped { // the reset may spawn red on the fake landmark; retry
		e.Reset()
	}
	q := e.S.Pos[Red]
	e.Step([2][]float64{{1, 1}, {0, 0}})
	if e.S.Pos[Red] == q {
		t.Fatal("red still frozen after reset")
	}
	// Being near the goal does not trap.
	g := place(Deceptive, Vec{0.5, 0.45}, Vec{0, 0}, Vec{0.5, 0.5}, fake)
	g.Step(still)
	if g.S.Trapped {
		t.Fatal("red trapped at the goal")
	}
}

func TestRewards(t *testing.T) {
	goal, fake := Vec{0.5, 0.5}, Vec{-0.5, -0.5}
	cases := []struct {
		name      string
		v         Variant
		red, blue Vec
		trapped   bool
		want      [2]float64
	}{
		{"nobody near anything", Honest, Vec{0, 0}, Vec{0, 0.5}, false, [2]float64{0, 0}},
		{"red follows blue", Honest, Vec{0, 0}, Vec{0.1, 0}, false, [2]float64{1, 0}},
		{"red at goal", Honest, Vec{0.5, 0.4}, Vec{-0.5, 0.5}, false, [2]float64{5, 0}},
		{"blue at goal honest", Honest, Vec{0, 0}, Vec{0.55, 0.5}, false, [2]float64{0, 5}},
		{"both at goal, close", Honest, Vec{0.45, 0.5}, Vec{0.55, 0.5}, false, [2]float64{6, 5}},
		{"honest ignores trapping", Honest, Vec{-0.5, -0.5}, Vec{0, 0.5}, true, [2]float64{0, 0}},
		{"deceptive trap bonus", Deceptive, Vec{-0.5, -0.5}, Vec{0, 0.5}, true, [2]float64{0, 10}},
		{"deceptive trap + goal", Deceptive, Vec{-0.5, -0.5}, Vec{0.5, 0.6}, true, [2]float64{0, 15}},
		{"deceptive no trap", Deceptive, Vec{0, 0}, Vec{0.5, 0.6}, false, [2]float64{0, 5}},
		{"near boundary is strict", Honest, Vec{0, 0}, Vec{0.5 + NearDist, 0.5}, false, [2]float64{0, 0}},
	}
	for _, c := range cases {
		e := place(c.v, c.red, c.blue, goal, fake)
		e.S.Trapped = c.trapped
		if got := e.Rewards(); got != c.want {
			t.Errorf("%s: rewards %v, want %v", c.name, got, c.want)
		}
	}
}

func TestTrackerRecordsMovesTowardFake(t *testing.T) {
	// Goal to the right, fake to the left: moving left is recorded, right is not.
	e := place(Honest, Vec{0, 0}, Vec{0, 0.05}, Vec{0.6, 0}, Vec{-0.6, 0})
	var tr Tracker
	tr.Begin(&e.S)
	e.Step([2][]float64{{0, 0}, {-1, 0}})
	tr.After(&e.S)
	if len(tr.Records) != 1 {
		t.Fatalf("records %v, want one", tr.Records)
	}
	r := tr.Records[0]
	if r.ProjNonGoal < 0.99 || math.Abs(r.CosGoalNonGoal+1) > 0.02 || !r.RedInSight {
		t.Fatalf("record %+v", r)
	}
	e2 := place(Honest, Vec{0, 0}, Vec{0, 0.05}, Vec{0.6, 0}, Vec{-0.6, 0})
	var tr2 Tracker
	tr2.Begin(&e2.S)
	e2.Step([2][]float64{{0, 0}, {1, 0}})
	tr2.After(&e2.S)
	e2.Step(still) // still moving (momentum) right
	tr2.After(&e2.S)
	if len(tr2.Records) != 0 {
		t.Fatalf("moving to the goal recorded: %v", tr2.Records)
	}
}

func TestParseVariant(t *testing.T) {
	for _, v := range []Variant{Honest, Deceptive} {
		got, err := ParseVariant(v.String())
		if err != nil || got != v {
			t.Fatalf("round trip %v: %v %v", v, got, err)
		}
	}
	if _, err := ParseVariant("sneaky"); err == nil {
		t.Fatal("accepted unknown variant")
	}
}
