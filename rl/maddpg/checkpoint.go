package maddpg

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sooserve/sooserve/rl/nn"
)

// checkpointVersion is bumped on incompatible format changes.
const checkpointVersion = 1

type checkpointAgent struct {
	ObsDim, ActDim int
	Policy         *nn.MLP
	Critic         *nn.MLP
	TargetPolicy   *nn.MLP
	TargetCritic   *nn.MLP
}

// Checkpoint is the JSON form of a Run (optimizer state is not kept).
type Checkpoint struct {
	Version int
	Config  Config
	Updates int
	Returns [][2]float64
	Agents  []checkpointAgent
	Meta    map[string]string `json:",omitempty"`
}

// Save writes the run to path as JSON, atomically (temporary file in the same
// directory, fsync, rename). meta is stored verbatim.
func (r *Run) Save(path string, meta map[string]string) error {
	ck := Checkpoint{Version: checkpointVersion, Config: r.Config, Updates: r.Updates, Returns: r.Returns, Meta: meta}
	for _, a := range r.Model.Agents {
		ck.Agents = append(ck.Agents, checkpointAgent{a.ObsDim, a.ActDim, a.Policy, a.Critic, a.TargetPolicy, a.TargetCritic})
	}
	data, err := json.Marshal(&ck)
	if err != nil {
		return fmt.Errorf("maddpg: encode checkpoint: %w", err)
	}
	return WriteFileAtomic(path, data)
}

// WriteFileAtomic writes data to path via a temporary file and a rename.
func WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("maddpg: create %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("maddpg: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("maddpg: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("maddpg: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("maddpg: close %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("maddpg: rename to %s: %w", path, err)
	}
	return nil
}

// Load reads a run saved by Save. Optimizers are fresh (Adam state is not
// saved, as in MADDPG-PyTorch's save/init_from_save). It also returns the
// stored metadata.
func Load(path string) (*Run, map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("maddpg: read checkpoint: %w", err)
	}
	var ck Checkpoint
	if err := json.Unmarshal(data, &ck); err != nil {
		return nil, nil, fmt.Errorf("maddpg: decode checkpoint %s: %w", path, err)
	}
	if ck.Version != checkpointVersion {
		return nil, nil, fmt.Errorf("maddpg: checkpoint %s has version %d, want %d", path, ck.Version, checkpointVersion)
	}
	h := ck.Config.Hyper
	m := &MADDPG{Gamma: h.Gamma, Tau: h.Tau, ClipNorm: h.ClipNorm, PolicyReg: h.PolicyReg, RegPreTanh: h.RegPreTanh}
	for _, a := range ck.Agents {
		ag := &Agent{ObsDim: a.ObsDim, ActDim: a.ActDim, Policy: a.Policy, Critic: a.Critic, TargetPolicy: a.TargetPolicy, TargetCritic: a.TargetCritic}
		if ag.Policy != nil && ag.Critic != nil {
			ag.PolicyOpt = nn.NewAdam(len(ag.Policy.Params), h.LR)
			ag.CriticOpt = nn.NewAdam(len(ag.Critic.Params), h.LR)
		}
		m.Agents = append(m.Agents, ag)
	}
	if err := m.Validate(); err != nil {
		return nil, nil, fmt.Errorf("maddpg: checkpoint %s: %w", path, err)
	}
	return &Run{Config: ck.Config, Model: m, Returns: ck.Returns, Updates: ck.Updates}, ck.Meta, nil
}
