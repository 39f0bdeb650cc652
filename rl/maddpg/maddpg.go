// Package maddpg implements MADDPG (Lowe et al. 2017) with the settings of
// the SOO paper's RL experiment (PAPER.md §8.2): deterministic tanh policies
// and centralized critics (all observations and all actions in), both MLPs
// of width 64 trained with Adam, OU exploration noise with linear decay,
// a replay buffer with reward standardisation, gradient-norm clipping,
// a policy output L2 penalty and soft target updates.
package maddpg

import (
	"fmt"
	"math/rand/v2"

	"github.com/sooserve/sooserve/rl/nn"
)

// Agent holds one agent's networks and optimizers.
type Agent struct {
	ObsDim, ActDim int
	Policy         *nn.MLP
	Critic         *nn.MLP
	TargetPolicy   *nn.MLP
	TargetCritic   *nn.MLP
	PolicyOpt      *nn.Adam
	CriticOpt      *nn.Adam
}

// MADDPG is a set of agents sharing centralized critics.
type MADDPG struct {
	Agents    []*Agent
	Gamma     float64
	Tau       float64
	ClipNorm  float64
	PolicyReg float64 // weight of mean(action²) in the policy loss
	// RegPreTanh applies PolicyReg to the pre-tanh output z instead of the
	// action tanh(z) (as OpenAI's MADDPG regularises the raw policy output).
	// MADDPG-PyTorch penalises the action; that penalty vanishes once tanh
	// saturates, and in short runs here the blue policy then stays stuck
	// at a corner action (see RESULTS.md).
	RegPreTanh bool
	critIn     int
}

// Hyper are the optimisation settings of New.
type Hyper struct {
	LR, Gamma, Tau, ClipNorm, PolicyReg float64
	Hidden                              int
	RegPreTanh                          bool // see MADDPG.RegPreTanh
}

// DefaultHyper returns PAPER.md §8.2's settings: lr 0.01, γ 0.95, τ 0.01,
// clip 0.5, policy L2 1e-3, width 64.
func DefaultHyper() Hyper {
	return Hyper{LR: 0.01, Gamma: 0.95, Tau: 0.01, ClipNorm: 0.5, PolicyReg: 1e-3, Hidden: 64}
}

// New creates agents with the given observation sizes and a common action
// size; targets start as copies of the online networks.
func New(obsDims []int, actDim int, h Hyper, rng *rand.Rand) *MADDPG {
	m := &MADDPG{Gamma: h.Gamma, Tau: h.Tau, ClipNorm: h.ClipNorm, PolicyReg: h.PolicyReg, RegPreTanh: h.RegPreTanh}
	for _, od := range obsDims {
		m.critIn += od + actDim
	}
	for _, od := range obsDims {
		a := &Agent{ObsDim: od, ActDim: actDim}
		a.Policy = nn.NewMLP(od, h.Hidden, actDim, true, rng)
		a.Critic = nn.NewMLP(m.critIn, h.Hidden, 1, false, rng)
		a.TargetPolicy = a.Policy.Clone()
		a.TargetCritic = a.Critic.Clone()
		a.PolicyOpt = nn.NewAdam(len(a.Policy.Params), h.LR)
		a.CriticOpt = nn.NewAdam(len(a.Critic.Params), h.LR)
		m.Agents = append(m.Agents, a)
	}
	return m
}

// CriticIn returns the centralized critic's input size.
func (m *MADDPG) CriticIn() int { return m.critIn }

// Act returns the deterministic action of agent i for one observation.
func (m *MADDPG) Act(i int, obs []float64) []float64 {
	return append([]float64(nil), m.Agents[i].Policy.Forward(obs, 1, nil)...)
}

// criticInput lays out [obs_0, …, obs_k, act_0, …, act_k] per row.
func (m *MADDPG) criticInput(n int, obs, act [][]float64) []float64 {
	x := make([]float64, n*m.critIn)
	for r := 0; r < n; r++ {
		o := r * m.critIn
		for a, ag := range m.Agents {
			o += copy(x[o:], obs[a][r*ag.ObsDim:(r+1)*ag.ObsDim])
		}
		for a, ag := range m.Agents {
			o += copy(x[o:], act[a][r*ag.ActDim:(r+1)*ag.ActDim])
		}
	}
	return x
}

// actOffset returns the column of agent i's action in the critic input.
func (m *MADDPG) actOffset(i int) int {
	o := 0
	for _, ag := range m.Agents {
		o += ag.ObsDim
	}
	for a := 0; a < i; a++ {
		o += m.Agents[a].ActDim
	}
	return o
}

// UpdateStats reports the losses of one agent update.
type UpdateStats struct {
	CriticLoss, PolicyLoss float64
}

// Update performs one critic step and one policy step for agent i on batch b
// (maddpg.update of MADDPG-PyTorch, continuous actions):
//
//	y = r_i + γ·Q'_i(o', π'(o'))·(1−done);  critic loss = mean (Q_i(o,a) − y)²
//	policy loss = −mean Q_i(o, π(o)) + PolicyReg·mean π_i(o_i)²
//
// where the other agents' actions in the policy loss come from their current
// policies. Gradients are clipped to ClipNorm before each Adam step.
func (m *MADDPG) Update(i int, b *Batch) UpdateStats {
	ag := m.Agents[i]
	var st UpdateStats
	var g []float64
	st.CriticLoss, g = m.CriticLossGrad(i, b)
	nn.ClipGradNorm(g, m.ClipNorm)
	ag.CriticOpt.Step(ag.Critic.Params, g)
	st.PolicyLoss, g = m.PolicyLossGrad(i, b)
	nn.ClipGradNorm(g, m.ClipNorm)
	ag.PolicyOpt.Step(ag.Policy.Params, g)
	return st
}

// CriticLossGrad returns agent i's critic loss on b and its gradient with
// respect to the critic's parameters (targets from the target networks).
func (m *MADDPG) CriticLossGrad(i int, b *Batch) (float64, []float64) {
	ag := m.Agents[i]
	n := b.N
	nextAct := make([][]float64, len(m.Agents))
	for a, o := range m.Agents {
		nextAct[a] = append([]float64(nil), o.TargetPolicy.Forward(b.Next[a], n, nil)...)
	}
	tq := ag.TargetCritic.Forward(m.criticInput(n, b.Next, nextAct), n, nil)
	var cc nn.Cache
	q := ag.Critic.Forward(m.criticInput(n, b.Obs, b.Act), n, &cc)
	dq := make([]float64, n)
	var loss float64
	for r := 0; r < n; r++ {
		y := b.Rew[i][r] + m.Gamma*tq[r]*(1-b.Done[r])
		d := q[r] - y
		loss += d * d / float64(n)
		dq[r] = 2 * d / float64(n)
	}
	g := make([]float64, len(ag.Critic.Params))
	ag.Critic.Backward(&cc, dq, nil, nil, g, nil)
	return loss, g
}

// PolicyLossGrad returns agent i's policy loss on b and its gradient with
// respect to the policy's parameters.
func (m *MADDPG) PolicyLossGrad(i int, b *Batch) (float64, []float64) {
	ag := m.Agents[i]
	n := b.N
	var pc nn.Cache
	pi := ag.Policy.Forward(b.Obs[i], n, &pc)
	acts := make([][]float64, len(m.Agents))
	for a, o := range m.Agents {
		if a == i {
			acts[a] = pi
			continue
		}
		acts[a] = append([]float64(nil), o.Policy.Forward(b.Obs[a], n, nil)...)
	}
	var qc nn.Cache
	q := ag.Critic.Forward(m.criticInput(n, b.Obs, acts), n, &qc)
	dqq := make([]float64, n)
	var loss float64
	for r := 0; r < n; r++ {
		loss -= q[r] / float64(n)
		dqq[r] = -1 / float64(n)
	}
	dx := make([]float64, n*m.critIn)
	gc := make([]float64, len(ag.Critic.Params)) // critic grads are discarded
	ag.Critic.Backward(&qc, dqq, nil, nil, gc, dx)
	off := m.actOffset(i)
	da := make([]float64, n*ag.ActDim)
	dz := make([]float64, n*ag.ActDim)
	nel := float64(n * ag.ActDim)
	for r := 0; r < n; r++ {
		for k := 0; k < ag.ActDim; k++ {
			j := r*ag.ActDim + k
			da[j] = dx[r*m.critIn+off+k]
			if m.RegPreTanh {
				v := pc.Z3[j]
				loss += m.PolicyReg * v * v / nel
				dz[j] = m.PolicyReg * 2 * v / nel
			} else {
				v := pi[j]
				loss += m.PolicyReg * v * v / nel
				da[j] += m.PolicyReg * 2 * v / nel
			}
		}
	}
	gp := make([]float64, len(ag.Policy.Params))
	ag.Policy.BackwardPre(&pc, da, dz, nil, nil, gp, nil)
	return loss, gp
}

// UpdateTargets soft-updates every agent's target networks with Tau.
func (m *MADDPG) UpdateTargets() {
	for _, a := range m.Agents {
		nn.SoftUpdate(a.TargetPolicy.Params, a.Policy.Params, m.Tau)
		nn.SoftUpdate(a.TargetCritic.Params, a.Critic.Params, m.Tau)
	}
}

// Validate checks the shapes of all networks.
func (m *MADDPG) Validate() error {
	if len(m.Agents) == 0 {
		return fmt.Errorf("maddpg: no agents")
	}
	m.critIn = 0
	for _, a := range m.Agents {
		m.critIn += a.ObsDim + a.ActDim
	}
	for i, a := range m.Agents {
		for _, net := range []*nn.MLP{a.Policy, a.Critic, a.TargetPolicy, a.TargetCritic} {
			if net == nil {
				return fmt.Errorf("maddpg: agent %d: missing network", i)
			}
			if err := net.Validate(); err != nil {
				return fmt.Errorf("maddpg: agent %d: %w", i, err)
			}
		}
		if a.Critic.In != m.critIn || a.Policy.In != a.ObsDim || a.Policy.Out != a.ActDim {
			return fmt.Errorf("maddpg: agent %d: network sizes do not match obs %d act %d critic %d", i, a.ObsDim, a.ActDim, m.critIn)
		}
	}
	return nil
}
