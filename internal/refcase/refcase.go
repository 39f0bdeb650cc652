// Package refcase loads the PyTorch reference fixtures under testdata/
// (written by scripts/reference/reference.py) for the engine's parity tests.
package refcase

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sooserve/sooserve/engine/safetensors"
)

// Case is one reference forward pass.
type Case struct {
	Name     string  `json:"name"`
	Model    string  `json:"model"`   // directory relative to testdata
	Adapter  *string `json:"adapter"` // directory relative to testdata, or nil
	InputIDs []int32 `json:"input_ids"`
	Greedy   []int32 `json:"greedy"`
	Tensors  string  `json:"tensors"`
}

// TestData returns the absolute path of the repository's testdata directory,
// found by walking up from the working directory to go.mod.
func TestData() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "testdata"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("refcase: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Cases reads testdata/reference/cases.json.
func Cases() ([]Case, string, error) {
	td, err := TestData()
	if err != nil {
		return nil, "", err
	}
	b, err := os.ReadFile(filepath.Join(td, "reference", "cases.json"))
	if err != nil {
		return nil, "", fmt.Errorf("refcase: %w", err)
	}
	var cs []Case
	if err := json.Unmarshal(b, &cs); err != nil {
		return nil, "", fmt.Errorf("refcase: cases.json: %w", err)
	}
	return cs, td, nil
}

// Expected holds a case's reference tensors as float32 slices.
type Expected map[string][]float32

// LoadTensors reads every tensor of a reference file (path relative to testdata).
func LoadTensors(td, rel string) (Expected, error) {
	f, err := safetensors.Open(filepath.Join(td, rel))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := Expected{}
	for _, n := range f.Names() {
		t, _ := f.Tensor(n)
		v, err := t.Float32()
		if err != nil {
			return nil, err
		}
		out[n] = v
	}
	return out, nil
}

// MaxAbsDiff returns max |a[i]-b[i]|, or +Inf when the lengths differ.
func MaxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return 1e300
	}
	var m float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		if d < 0 {
			d = -d
		}
		if d > m || d != d {
			m = d
		}
	}
	return m
}

// SOOGrad is testdata/reference/soo_grad.json: one self/other pair, the
// capture point, and per pooling the loss and the file of LoRA gradients.
type SOOGrad struct {
	Model    string  `json:"model"`
	Adapter  string  `json:"adapter"`
	Layer    int     `json:"layer"`
	Site     string  `json:"site"`
	SelfIDs  []int32 `json:"self_ids"`
	OtherIDs []int32 `json:"other_ids"`
	Poolings map[string]struct {
		Loss    float64 `json:"loss"`
		Tensors string  `json:"tensors"`
	} `json:"poolings"`
}

// LoadSOOGrad reads testdata/reference/soo_grad.json.
func LoadSOOGrad() (*SOOGrad, string, error) {
	td, err := TestData()
	if err != nil {
		return nil, "", err
	}
	b, err := os.ReadFile(filepath.Join(td, "reference", "soo_grad.json"))
	if err != nil {
		return nil, "", fmt.Errorf("refcase: %w", err)
	}
	var g SOOGrad
	if err := json.Unmarshal(b, &g); err != nil {
		return nil, "", fmt.Errorf("refcase: soo_grad.json: %w", err)
	}
	return &g, td, nil
}
