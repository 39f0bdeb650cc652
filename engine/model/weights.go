package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"unsafe"

	"github.com/sooserve/sooserve/engine/safetensors"
)

// DType is the storage type of a weight matrix.
type DType uint8

// Weight storage types.
const (
	F32 DType = iota
	BF16
	F16
)

// String returns the dtype's short name (f32, bf16, f16).
func (d DType) String() string {
	switch d {
	case BF16:
		return "bf16"
	case F16:
		return "f16"
	}
	return "f32"
}

// ParseDType parses "f32", "bf16" or "f16" (case-insensitive).
func ParseDType(s string) (DType, error) {
	switch strings.ToLower(s) {
	case "f32", "float32":
		return F32, nil
	case "bf16", "bfloat16":
		return BF16, nil
	case "f16", "float16":
		return F16, nil
	}
	return 0, fmt.Errorf("model: unknown dtype %q (want f32, bf16 or f16)", s)
}

// Matrix is a row-major [Rows, Cols] weight matrix; exactly one of F32 and U16
// holds data (U16 holds bf16 or f16 bit patterns).
type Matrix struct {
	Rows, Cols int
	DType      DType
	F32        []float32
	U16        []uint16
}

// RowF32 decodes row i into dst (len Cols).
func (m *Matrix) RowF32(i int, dst []float32) {
	switch m.DType {
	case F32:
		copy(dst, m.F32[i*m.Cols:(i+1)*m.Cols])
	case BF16:
		src := m.U16[i*m.Cols : (i+1)*m.Cols]
		for j, h := range src {
			dst[j] = safetensors.BF16ToF32(h)
		}
	case F16:
		src := m.U16[i*m.Cols : (i+1)*m.Cols]
		for j, h := range src {
			dst[j] = safetensors.F16ToF32(h)
		}
	}
}

// Bytes returns the storage size of the matrix.
func (m *Matrix) Bytes() int64 {
	if m.DType == F32 {
		return int64(len(m.F32)) * 4
	}
	return int64(len(m.U16)) * 2
}

// Module names a linear projection inside a decoder layer.
type Module int

// The projections of a decoder layer, in the order PEFT lists them.
const (
	Q Module = iota
	K
	V
	O
	Gate
	Up
	Down
	NumModules
)

var moduleNames = [NumModules]string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

// String returns the Hugging Face module name, e.g. "q_proj".
func (m Module) String() string {
	if m < 0 || m >= NumModules {
		return fmt.Sprintf("module(%d)", int(m))
	}
	return moduleNames[m]
}

// Path returns the module's path inside a layer, e.g. "self_attn.q_proj".
func (m Module) Path() string {
	if m <= O {
		return "self_attn." + m.String()
	}
	return "mlp." + m.String()
}

// ParseModule maps a Hugging Face module name ("q_proj") to a Module.
func ParseModule(name string) (Module, bool) {
	for i, n := range moduleNames {
		if n == name {
			return Module(i), true
		}
	}
	return 0, false
}

// Shape returns the (out, in) dimensions of module m's weight.
func (c *Config) Shape(m Module) (out, in int) {
	switch m {
	case Q:
		return c.QDim(), c.Hidden
	case K, V:
		return c.KVDim(), c.Hidden
	case O:
		return c.Hidden, c.QDim()
	case Gate, Up:
		return c.Intermediate, c.Hidden
	case Down:
		return c.Hidden, c.Intermediate
	}
	return 0, 0
}

// HasBias reports whether module m carries a bias vector in this architecture.
func (c *Config) HasBias(m Module) bool {
	switch m {
	case Q, K, V:
		return c.QKVBias
	case O:
		return c.OBias
	}
	return c.MLPBias
}

// Linear is a projection y = W x + b (Bias nil when absent).
type Linear struct {
	W    Matrix
	Bias []float32
}

// Layer holds one decoder layer's weights. Norm weights already include the
// architecture's NormOffset, so every executor computes x·rsqrt(mean(x²)+eps)·w.
type Layer struct {
	AttnNorm     []float32 // input_layernorm
	AttnPostNorm []float32 // gemma2 post_attention_layernorm; nil otherwise
	MLPNorm      []float32 // llama post_attention_layernorm, gemma2 pre_feedforward_layernorm
	MLPPostNorm  []float32 // gemma2 post_feedforward_layernorm; nil otherwise
	Proj         [NumModules]Linear
}

// Model is a loaded model: configuration and weights.
type Model struct {
	Config    *Config
	Embed     Matrix // [vocab, hidden]
	Layers    []Layer
	FinalNorm []float32
	LMHead    *Matrix // == &Embed when tied
	closer    func() error
}

// Close releases the model's file mappings; the model must not be used afterwards.
func (m *Model) Close() error {
	if m.closer == nil {
		return nil
	}
	err := m.closer()
	m.closer = nil
	return err
}

// Bytes returns the total storage of the weights read per decoded token.
func (m *Model) Bytes() int64 {
	var n int64
	for _, l := range m.Layers {
		for _, p := range l.Proj {
			n += p.W.Bytes()
		}
	}
	return n + m.LMHead.Bytes()
}

// TensorSpec names one tensor a checkpoint must provide.
type TensorSpec struct {
	Name  string
	Shape []int
}

// TensorNames lists every tensor a checkpoint of this configuration holds, with
// its Hugging Face name and shape, in a stable order.
func (c *Config) TensorNames() []TensorSpec {
	specs := []TensorSpec{{"model.embed_tokens.weight", []int{c.VocabSize, c.Hidden}}}
	for l := 0; l < c.Layers; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		specs = append(specs, TensorSpec{p + "input_layernorm.weight", []int{c.Hidden}})
		specs = append(specs, TensorSpec{p + "post_attention_layernorm.weight", []int{c.Hidden}})
		if c.SandwichNorms {
			specs = append(specs, TensorSpec{p + "pre_feedforward_layernorm.weight", []int{c.Hidden}})
			specs = append(specs, TensorSpec{p + "post_feedforward_layernorm.weight", []int{c.Hidden}})
		}
		for m := Module(0); m < NumModules; m++ {
			out, in := c.Shape(m)
			specs = append(specs, TensorSpec{p + m.Path() + ".weight", []int{out, in}})
			if c.HasBias(m) {
				specs = append(specs, TensorSpec{p + m.Path() + ".bias", []int{out}})
			}
		}
	}
	specs = append(specs, TensorSpec{"model.norm.weight", []int{c.Hidden}})
	if !c.TieEmbeddings {
		specs = append(specs, TensorSpec{"lm_head.weight", []int{c.VocabSize, c.Hidden}})
	}
	return specs
}

// TensorSource looks tensors up by name (a safetensors.Set, or a map in tests).
type TensorSource interface {
	Tensor(name string) (safetensors.Tensor, bool)
}

// Bind builds a Model from tensors named as in Hugging Face checkpoints. With
// convert set, every matrix is converted to that dtype; otherwise matrices keep
// their stored dtype (aliasing the source's memory where alignment allows).
func Bind(cfg *Config, src TensorSource, convert *DType) (*Model, error) {
	b := binder{src: src, convert: convert}
	m := &Model{Config: cfg}
	m.Embed = b.matrix("model.embed_tokens.weight", cfg.VocabSize, cfg.Hidden)
	m.Layers = make([]Layer, cfg.Layers)
	for l := range m.Layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		L := &m.Layers[l]
		L.AttnNorm = b.norm(p+"input_layernorm.weight", cfg)
		if cfg.SandwichNorms {
			L.AttnPostNorm = b.norm(p+"post_attention_layernorm.weight", cfg)
			L.MLPNorm = b.norm(p+"pre_feedforward_layernorm.weight", cfg)
			L.MLPPostNorm = b.norm(p+"post_feedforward_layernorm.weight", cfg)
		} else {
			L.MLPNorm = b.norm(p+"post_attention_layernorm.weight", cfg)
		}
		for mod := Module(0); mod < NumModules; mod++ {
			out, in := cfg.Shape(mod)
			L.Proj[mod].W = b.matrix(p+mod.Path()+".weight", out, in)
			if cfg.HasBias(mod) {
				L.Proj[mod].Bias = b.vector(p+mod.Path()+".bias", out)
			}
		}
	}
	m.FinalNorm = b.norm("model.norm.weight", cfg)
	if cfg.TieEmbeddings {
		m.LMHead = &m.Embed
	} else {
		h := b.matrix("lm_head.weight", cfg.VocabSize, cfg.Hidden)
		m.LMHead = &h
	}
	if b.err != nil {
		return nil, b.err
	}
	return m, nil
}

type binder struct {
	src     TensorSource
	convert *DType
	err     error
}

func (b *binder) get(name string, shape ...int) (safetensors.Tensor, bool) {
	if b.err != nil {
		return safetensors.Tensor{}, false
	}
	t, ok := b.src.Tensor(name)
	if !ok {
		b.err = fmt.Errorf("model: missing tensor %q", name)
		return t, false
	}
	if len(t.Shape) != len(shape) {
		b.err = fmt.Errorf("model: tensor %q has shape %v, want %v", name, t.Shape, shape)
		return t, false
	}
	for i := range shape {
		if t.Shape[i] != shape[i] {
			b.err = fmt.Errorf("model: tensor %q has shape %v, want %v", name, t.Shape, shape)
			return t, false
		}
	}
	switch t.DType {
	case safetensors.F32, safetensors.BF16, safetensors.F16:
	default:
		b.err = fmt.Errorf("model: tensor %q has dtype %s; want F32, BF16 or F16", name, t.DType)
		return t, false
	}
	return t, true
}

func (b *binder) vector(name string, n int) []float32 {
	t, ok := b.get(name, n)
	if !ok {
		return nil
	}
	v, err := t.Float32()
	if err != nil {
		b.err = fmt.Errorf("model: %w", err)
	}
	return v
}

func (b *binder) norm(name string, cfg *Config) []float32 {
	v := b.vector(name, cfg.Hidden)
	for i := range v {
		v[i] += cfg.NormOffset
	}
	return v
}

func (b *binder) matrix(name string, rows, cols int) Matrix {
	t, ok := b.get(name, rows, cols)
	if !ok {
		return Matrix{}
	}
	m := Matrix{Rows: rows, Cols: cols}
	stored := map[safetensors.DType]DType{safetensors.F32: F32, safetensors.BF16: BF16, safetensors.F16: F16}[t.DType]
	want := stored
	if b.convert != nil {
		want = *b.convert
	}
	if want == stored {
		m.DType = stored
		if stored == F32 {
			m.F32 = aliasF32(t.Data)
		} else {
			m.U16 = aliasU16(t.Data)
		}
		return m
	}
	f, err := t.Float32()
	if err != nil {
		b.err = fmt.Errorf("model: %w", err)
		return Matrix{}
	}
	m.DType = want
	switch want {
	case F32:
		m.F32 = f
	case BF16:
		m.U16 = make([]uint16, len(f))
		for i, v := range f {
			m.U16[i] = safetensors.F32ToBF16(v)
		}
	case F16:
		m.U16 = make([]uint16, len(f))
		for i, v := range f {
			m.U16[i] = safetensors.F32ToF16(v)
		}
	}
	return m
}

// aliasF32 reinterprets little-endian bytes as float32s without copying when
// the address is aligned (and the host is little-endian), else copies.
func aliasF32(b []byte) []float32 {
	n := len(b) / 4
	if n == 0 {
		return []float32{}
	}
	if littleEndian && uintptr(unsafe.Pointer(&b[0]))%4 == 0 {
		return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n)
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

func aliasU16(b []byte) []uint16 {
	n := len(b) / 2
	if n == 0 {
		return []uint16{}
	}
	if littleEndian && uintptr(unsafe.Pointer(&b[0]))%2 == 0 {
		return unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), n)
	}
	out := make([]uint16, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return out
}

var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()
