// Package synth builds random-weight models of named shapes, for benchmarks
// and tests that need a model of a real size but no checkpoint.
package synth

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sort"
	"sync"

	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
)

// Std is the standard deviation of the random weights.
const Std = 0.02

// shapes are config.json contents of the named shapes.
var shapes = map[string]map[string]any{
	// SmolLM2-135M: the shape of DESIGN §7's benchmarks.
	"smollm2-135m": {
		"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
		"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
		"max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
		"tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
	},
	// tiny: a small llama for fast tests.
	"tiny": {
		"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 160,
		"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
		"max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
		"tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
	},
}

// Shapes returns the known shape names, sorted.
func Shapes() []string {
	var names []string
	for n := range shapes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Config returns the configuration of a named shape.
func Config(shape string) (*model.Config, error) {
	s, ok := shapes[shape]
	if !ok {
		return nil, fmt.Errorf("synth: unknown shape %q (known: %v)", shape, Shapes())
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	return model.ParseConfig(b)
}

// Model builds a model of the named shape with random weights (normal-like,
// standard deviation Std) stored as dtype, deterministically from seed.
func Model(shape string, dtype model.DType, seed uint64) (*model.Model, error) {
	cfg, err := Config(shape)
	if err != nil {
		return nil, err
	}
	return FromConfig(cfg, dtype, seed), nil
}

// FromConfig builds a model of configuration cfg with random weights stored as
// dtype, deterministically from seed. Norm weights are 1 (before the
// architecture's NormOffset) and biases 0.
func FromConfig(cfg *model.Config, dtype model.DType, seed uint64) *model.Model {
	m := &model.Model{Config: cfg, Layers: make([]model.Layer, cfg.Layers)}
	var jobs []func()
	mat := func(dst *model.Matrix, rows, cols int) {
		id := uint64(len(jobs))
		jobs = append(jobs, func() { *dst = randomMatrix(rows, cols, dtype, seed, id) })
	}
	norm := func() []float32 {
		v := make([]float32, cfg.Hidden)
		for i := range v {
			v[i] = 1 + cfg.NormOffset
		}
		return v
	}
	mat(&m.Embed, cfg.VocabSize, cfg.Hidden)
	for l := range m.Layers {
		L := &m.Layers[l]
		L.AttnNorm, L.MLPNorm = norm(), norm()
		if cfg.SandwichNorms {
			L.AttnPostNorm, L.MLPPostNorm = norm(), norm()
		}
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			out, in := cfg.Shape(mod)
			mat(&L.Proj[mod].W, out, in)
			if cfg.HasBias(mod) {
				L.Proj[mod].Bias = make([]float32, out)
			}
		}
	}
	m.FinalNorm = norm()
	if cfg.TieEmbeddings {
		m.LMHead = &m.Embed
	} else {
		m.LMHead = &model.Matrix{}
		mat(m.LMHead, cfg.VocabSize, cfg.Hidden)
	}
	// Fill the matrices in parallel; each has its own random stream.
	var wg sync.WaitGroup
	next := make(chan func())
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				j()
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	return m
}

// randomMatrix fills a [rows, cols] matrix with uniform values of standard
// deviation Std from the stream (seed, id).
func randomMatrix(rows, cols int, dtype model.DType, seed, id uint64) model.Matrix {
	rng := rand.New(rand.NewPCG(seed, id))
	a := Std * math.Sqrt(3) // uniform on [-a, a] has standard deviation Std
	m := model.Matrix{Rows: rows, Cols: cols, DType: dtype}
	n := rows * cols
	val := func() float32 { return float32((2*rng.Float64() - 1) * a) }
	switch dtype {
	case model.BF16:
		m.U16 = make([]uint16, n)
		for i := range m.U16 {
			m.U16[i] = safetensors.F32ToBF16(val())
		}
	case model.F16:
		m.U16 = make([]uint16, n)
		for i := range m.U16 {
			m.U16[i] = safetensors.F32ToF16(val())
		}
	default:
		m.DType = model.F32
		m.F32 = make([]float32, n)
		for i := range m.F32 {
			m.F32[i] = val()
		}
	}
	return m
}

// Adapter returns a LoRA adapter of rank r on the given modules of every
// layer of cfg, with A and B drawn from N(0, 0.02²) (both non-zero, so every
// product does real work) and scale 2 (alpha = 2r).
func Adapter(cfg *model.Config, name string, r int, modules []model.Module, seed uint64) *lora.Adapter {
	rng := rand.New(rand.NewPCG(seed, 0x10a))
	a := &lora.Adapter{Name: name, Rank: r, Alpha: float64(2 * r), Modules: modules,
		Layers: make([][model.NumModules]*lora.Pair, cfg.Layers)}
	fill := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * 0.02)
		}
		return v
	}
	for l := range a.Layers {
		for _, m := range modules {
			out, in := cfg.Shape(m)
			a.Layers[l][m] = &lora.Pair{R: r, In: in, Out: out, A: fill(r * in), B: fill(out * r), Scale: lora.Scale(a.Alpha, r, false)}
		}
	}
	return a
}

// RoundBF16 rounds every value of a's A and B to the nearest bf16 value,
// as storing the adapter in bf16 would; a.CompactBF16 then gives its pairs
// the bf16 copies that loading it from a bf16 file gives.
func RoundBF16(a *lora.Adapter) {
	for _, mods := range a.Layers {
		for _, p := range mods {
			if p == nil {
				continue
			}
			for _, v := range [][]float32{p.A, p.B} {
				for i, f := range v {
					v[i] = safetensors.BF16ToF32(safetensors.F32ToBF16(f))
				}
			}
		}
	}
}
