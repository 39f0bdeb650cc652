package model

import (
	"fmt"

	"github.com/sooserve/sooserve/engine/safetensors"
)

// LoadOptions controls Load.
type LoadOptions struct {
	// DType converts every weight matrix to this type; nil keeps the stored type.
	DType *DType
}

// Load reads a Hugging Face model directory: config.json and the safetensors
// weights (single file or sharded), memory-mapped.
func Load(dir string, opts LoadOptions) (*Model, error) {
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", dir, err)
	}
	set, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, fmt.Errorf("model: load %s: %w", dir, err)
	}
	m, err := Bind(cfg, set, opts.DType)
	if err != nil {
		set.Close()
		return nil, fmt.Errorf("load %s: %w", dir, err)
	}
	m.closer = set.Close
	return m, nil
}
