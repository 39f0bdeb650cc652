package model

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/sooserve/sooserve/engine/safetensors"
)

// Tensors returns the model's weights under their Hugging Face names, the
// inverse of Bind (norm weights have the NormOffset taken back out). Matrices
// keep their dtype; the data is copied.
func (m *Model) Tensors() []safetensors.Tensor {
	cfg := m.Config
	var ts []safetensors.Tensor
	mat := func(name string, w *Matrix) {
		t := safetensors.Tensor{Name: name, Shape: []int{w.Rows, w.Cols}}
		switch w.DType {
		case F32:
			t.DType = safetensors.F32
			t.Data = make([]byte, 4*len(w.F32))
			for i, v := range w.F32 {
				binary.LittleEndian.PutUint32(t.Data[4*i:], math.Float32bits(v))
			}
		default:
			t.DType = safetensors.BF16
			if w.DType == F16 {
				t.DType = safetensors.F16
			}
			t.Data = make([]byte, 2*len(w.U16))
			for i, v := range w.U16 {
				binary.LittleEndian.PutUint16(t.Data[2*i:], v)
			}
		}
		ts = append(ts, t)
	}
	vec := func(name string, v []float32, offset float32) {
		out := make([]float32, len(v))
		for i, x := range v {
			out[i] = x - offset
		}
		ts = append(ts, safetensors.FromFloat32(name, safetensors.F32, []int{len(v)}, out))
	}
	mat("model.embed_tokens.weight", &m.Embed)
	for l := range m.Layers {
		L := &m.Layers[l]
		p := fmt.Sprintf("model.layers.%d.", l)
		vec(p+"input_layernorm.weight", L.AttnNorm, cfg.NormOffset)
		if cfg.SandwichNorms {
			vec(p+"post_attention_layernorm.weight", L.AttnPostNorm, cfg.NormOffset)
			vec(p+"pre_feedforward_layernorm.weight", L.MLPNorm, cfg.NormOffset)
			vec(p+"post_feedforward_layernorm.weight", L.MLPPostNorm, cfg.NormOffset)
		} else {
			vec(p+"post_attention_layernorm.weight", L.MLPNorm, cfg.NormOffset)
		}
		for mod := Module(0); mod < NumModules; mod++ {
			mat(p+mod.Path()+".weight", &L.Proj[mod].W)
			if b := L.Proj[mod].Bias; b != nil {
				vec(p+mod.Path()+".bias", b, 0)
			}
		}
	}
	vec("model.norm.weight", m.FinalNorm, cfg.NormOffset)
	if !cfg.TieEmbeddings {
		mat("lm_head.weight", m.LMHead)
	}
	return ts
}
