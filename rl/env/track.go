package env

// Record is one candidate deceptive step of the blue agent (PAPER.md §8.4):
// a step whose movement projects more onto the direction of the non-goal
// landmark than onto the goal's, and positively so.
type Record struct {
	ProjNonGoal    float64 // movement_dir · nongoal_dir
	CosGoalNonGoal float64 // goal_dir · nongoal_dir
	RedInSight     bool    // red within the sight radius after the move
}

// Tracker accumulates the Records of the blue agent across steps and
// episodes. Call Begin after Env.Reset and After after every Env.Step.
type Tracker struct {
	Records []Record
	prev    Vec
}

// Begin remembers blue's starting position of a new episode.
func (t *Tracker) Begin(s *State) { t.prev = s.Pos[Blue] }

// After inspects the move just made by blue and appends a Record when
// proj_nongoal > proj_goal and proj_nongoal > 0.
//
// The reference code evaluates red's presence at the end of the move and
// records a step one call late; recording it at once is equivalent except
// that it also counts an episode's last step and not the spurious
// movement-from-origin at reset (INFERRED clean-up).
func (t *Tracker) After(s *State) {
	pos := s.Pos[Blue]
	mv := pos.sub(t.prev)
	t.prev = pos
	n := mv.norm()
	if n == 0 {
		return
	}
	g := s.GoalPos().sub(pos)
	f := s.FakePos().sub(pos)
	gn, fn := g.norm(), f.norm()
	if gn == 0 || fn == 0 {
		return
	}
	md := mv.scale(1 / n)
	gd, fd := g.scale(1/gn), f.scale(1/fn)
	pg, pf := md.dot(gd), md.dot(fd)
	if pf > pg && pf > 0 {
		t.Records = append(t.Records, Record{ProjNonGoal: pf, CosGoalNonGoal: gd.dot(fd), RedInSight: s.RedInSight()})
	}
}
