// Package model describes a Llama-family transformer once: its configuration
// (parsed from a Hugging Face config.json) and its weights (bound by Hugging
// Face tensor name from safetensors files). Llama, Mistral, Qwen2 and Gemma-2
// differ only in the options of Config; executors read the same Model.
package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
)

// Activation names the MLP's gate nonlinearity.
type Activation string

// Supported MLP activations.
const (
	SiLU     Activation = "silu"
	GELUTanh Activation = "gelu_tanh"
)

// Config is the architecture of a model, with every family difference spelled
// out as an option.
type Config struct {
	Arch             string // model_type: llama, mistral, qwen2, gemma2
	VocabSize        int
	Hidden           int
	Intermediate     int
	Layers           int
	Heads            int
	KVHeads          int
	HeadDim          int
	MaxPositions     int
	NormEps          float32
	RopeTheta        float64
	RopeScaling      *RopeScaling
	TieEmbeddings    bool
	QKVBias          bool // bias on q/k/v projections (qwen2, llama attention_bias)
	OBias            bool // bias on o_proj (llama attention_bias)
	MLPBias          bool // bias on gate/up/down (llama mlp_bias)
	Act              Activation
	NormOffset       float32 // RMSNorm multiplies by (NormOffset + w): 1 for gemma2
	SandwichNorms    bool    // gemma2: norms after attention and after the MLP too
	EmbedScale       float32 // embeddings multiplied by this (gemma2: sqrt(hidden)); 1 otherwise
	AttnScale        float32 // softmax scale of q·k
	AttnSoftcap      float32 // 0: none; else scores = c·tanh(s/c)
	FinalSoftcap     float32 // 0: none; else logits = c·tanh(l/c)
	SlidingWindow    int     // 0: none
	slidingLayers    func(layer int) bool
	BOS              int32 // -1 when unknown
	EOS              []int32
	TorchDType       string
	RawArchitectures []string
}

// RopeScaling holds Llama-3 style frequency scaling ("rope_type": "llama3").
type RopeScaling struct {
	Type          string  `json:"rope_type"`
	LegacyType    string  `json:"type"`
	Factor        float64 `json:"factor"`
	LowFreq       float64 `json:"low_freq_factor"`
	HighFreq      float64 `json:"high_freq_factor"`
	OriginalMaxPE float64 `json:"original_max_position_embeddings"`
}

// QDim is the width of the query projection's output.
func (c *Config) QDim() int { return c.Heads * c.HeadDim }

// KVDim is the width of the key and value projections' outputs.
func (c *Config) KVDim() int { return c.KVHeads * c.HeadDim }

// Window returns the attention window of layer l: 0 means the full context.
func (c *Config) Window(l int) int {
	if c.SlidingWindow <= 0 || c.slidingLayers == nil || !c.slidingLayers(l) {
		return 0
	}
	return c.SlidingWindow
}

// RopeInvFreq returns the HeadDim/2 inverse frequencies, with any scaling applied,
// rounded through float32 as Hugging Face computes them.
func (c *Config) RopeInvFreq() []float64 {
	half := c.HeadDim / 2
	inv := make([]float64, half)
	for i := range inv {
		inv[i] = float64(float32(1 / math.Pow(c.RopeTheta, float64(2*i)/float64(c.HeadDim))))
	}
	s := c.RopeScaling
	if s == nil || s.kind() != "llama3" {
		return inv
	}
	lowWave := s.OriginalMaxPE / s.LowFreq
	highWave := s.OriginalMaxPE / s.HighFreq
	for i, f := range inv {
		wave := 2 * math.Pi / f
		switch {
		case wave < highWave:
		case wave > lowWave:
			inv[i] = f / s.Factor
		default:
			smooth := (s.OriginalMaxPE/wave - s.LowFreq) / (s.HighFreq - s.LowFreq)
			inv[i] = (1-smooth)*f/s.Factor + smooth*f
		}
		inv[i] = float64(float32(inv[i]))
	}
	return inv
}

func (s *RopeScaling) kind() string {
	if s.Type != "" {
		return s.Type
	}
	return s.LegacyType
}

// hfConfig is the subset of config.json that the supported families use.
type hfConfig struct {
	ModelType          string          `json:"model_type"`
	Architectures      []string        `json:"architectures"`
	VocabSize          int             `json:"vocab_size"`
	HiddenSize         int             `json:"hidden_size"`
	IntermediateSize   int             `json:"intermediate_size"`
	NumHiddenLayers    int             `json:"num_hidden_layers"`
	NumAttentionHeads  int             `json:"num_attention_heads"`
	NumKeyValueHeads   *int            `json:"num_key_value_heads"`
	HeadDim            *int            `json:"head_dim"`
	MaxPositions       int             `json:"max_position_embeddings"`
	RMSNormEps         *float64        `json:"rms_norm_eps"`
	RopeTheta          *float64        `json:"rope_theta"`
	RopeScaling        json.RawMessage `json:"rope_scaling"`
	TieWordEmbeddings  *bool           `json:"tie_word_embeddings"`
	AttentionBias      bool            `json:"attention_bias"`
	MLPBias            bool            `json:"mlp_bias"`
	HiddenAct          string          `json:"hidden_act"`
	HiddenActivation   string          `json:"hidden_activation"`
	SlidingWindow      *int            `json:"sliding_window"`
	UseSlidingWindow   *bool           `json:"use_sliding_window"`
	MaxWindowLayers    *int            `json:"max_window_layers"`
	QueryPreAttnScalar *float64        `json:"query_pre_attn_scalar"`
	AttnLogitSoftcap   *float64        `json:"attn_logit_softcapping"`
	FinalLogitSoftcap  *float64        `json:"final_logit_softcapping"`
	BOSTokenID         json.RawMessage `json:"bos_token_id"`
	EOSTokenID         json.RawMessage `json:"eos_token_id"`
	TorchDType         string          `json:"torch_dtype"`
}

// ErrUnsupportedArch is returned (wrapped) for a model_type this engine does not run.
var ErrUnsupportedArch = errors.New("unsupported architecture")

// LoadConfig reads dir/config.json.
func LoadConfig(dir string) (*Config, error) {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("model: read config: %w", err)
	}
	return ParseConfig(b)
}

// ParseConfig parses a Hugging Face config.json.
func ParseConfig(data []byte) (*Config, error) {
	var h hfConfig
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, fmt.Errorf("model: config.json: %w", err)
	}
	c := &Config{
		Arch:             h.ModelType,
		VocabSize:        h.VocabSize,
		Hidden:           h.HiddenSize,
		Intermediate:     h.IntermediateSize,
		Layers:           h.NumHiddenLayers,
		Heads:            h.NumAttentionHeads,
		MaxPositions:     h.MaxPositions,
		NormEps:          1e-6,
		RopeTheta:        10000,
		Act:              SiLU,
		EmbedScale:       1,
		BOS:              -1,
		TorchDType:       h.TorchDType,
		RawArchitectures: h.Architectures,
	}
	switch h.ModelType {
	case "llama", "mistral":
		c.QKVBias, c.OBias, c.MLPBias = h.AttentionBias, h.AttentionBias, h.MLPBias
		if h.SlidingWindow != nil && *h.SlidingWindow > 0 {
			c.SlidingWindow = *h.SlidingWindow
			c.slidingLayers = func(int) bool { return true }
		}
	case "qwen2":
		c.QKVBias = true
		if h.UseSlidingWindow != nil && *h.UseSlidingWindow && h.SlidingWindow != nil && *h.SlidingWindow > 0 {
			c.SlidingWindow = *h.SlidingWindow
			from := 0
			if h.MaxWindowLayers != nil {
				from = *h.MaxWindowLayers
			}
			c.slidingLayers = func(l int) bool { return l >= from }
		}
	case "gemma2":
		c.Act = GELUTanh
		c.NormOffset = 1
		c.SandwichNorms = true
		c.EmbedScale = float32(math.Sqrt(float64(h.HiddenSize)))
		c.QKVBias, c.OBias = h.AttentionBias, h.AttentionBias
		if h.SlidingWindow != nil && *h.SlidingWindow > 0 {
			c.SlidingWindow = *h.SlidingWindow
			c.slidingLayers = func(l int) bool { return l%2 == 0 }
		}
		if h.AttnLogitSoftcap != nil {
			c.AttnSoftcap = float32(*h.AttnLogitSoftcap)
		}
		if h.FinalLogitSoftcap != nil {
			c.FinalSoftcap = float32(*h.FinalLogitSoftcap)
		}
	case "":
		return nil, fmt.Errorf("model: config.json has no model_type: %w", ErrUnsupportedArch)
	default:
		return nil, fmt.Errorf("model: model_type %q (architectures %v): %w; supported: llama, mistral, qwen2, gemma2", h.ModelType, h.Architectures, ErrUnsupportedArch)
	}
	act := h.HiddenAct
	if h.HiddenActivation != "" {
		act = h.HiddenActivation
	}
	switch act {
	case "", "silu", "swish":
		if h.ModelType == "gemma2" && act != "" {
			c.Act = SiLU
		}
	case "gelu_pytorch_tanh", "gelu_tanh", "gelu":
		// Gemma-2 checkpoints say "gelu_pytorch_tanh"; transformers also maps plain
		// "gelu" in Gemma configs to the tanh approximation.
		c.Act = GELUTanh
	default:
		return nil, fmt.Errorf("model: unsupported hidden activation %q", act)
	}
	if h.NumKeyValueHeads != nil {
		c.KVHeads = *h.NumKeyValueHeads
	} else {
		c.KVHeads = c.Heads
	}
	if h.HeadDim != nil && *h.HeadDim > 0 {
		c.HeadDim = *h.HeadDim
	} else if c.Heads > 0 {
		c.HeadDim = c.Hidden / c.Heads
	}
	if h.RMSNormEps != nil {
		c.NormEps = float32(*h.RMSNormEps)
	}
	if h.RopeTheta != nil {
		c.RopeTheta = *h.RopeTheta
	}
	if h.TieWordEmbeddings != nil {
		c.TieEmbeddings = *h.TieWordEmbeddings
	} else {
		c.TieEmbeddings = h.ModelType == "gemma2" // transformers' per-family default
	}
	c.AttnScale = float32(1 / math.Sqrt(float64(c.HeadDim)))
	if h.QueryPreAttnScalar != nil && *h.QueryPreAttnScalar > 0 {
		c.AttnScale = float32(1 / math.Sqrt(*h.QueryPreAttnScalar))
	}
	if len(h.RopeScaling) > 0 && string(h.RopeScaling) != "null" {
		var rs RopeScaling
		if err := json.Unmarshal(h.RopeScaling, &rs); err != nil {
			return nil, fmt.Errorf("model: rope_scaling: %w", err)
		}
		switch rs.kind() {
		case "llama3":
			if rs.Factor <= 0 || rs.LowFreq <= 0 || rs.HighFreq <= rs.LowFreq || rs.OriginalMaxPE <= 0 {
				return nil, fmt.Errorf("model: rope_scaling llama3 needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0")
			}
			c.RopeScaling = &rs
		case "default", "":
		default:
			return nil, fmt.Errorf("model: unsupported rope_scaling type %q", rs.kind())
		}
	}
	if v, ok := tokenIDs(h.BOSTokenID); ok && len(v) > 0 {
		c.BOS = v[0]
	}
	c.EOS, _ = tokenIDs(h.EOSTokenID)
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func tokenIDs(raw json.RawMessage) ([]int32, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, false
	}
	var one int32
	if json.Unmarshal(raw, &one) == nil {
		return []int32{one}, true
	}
	var many []int32
	if json.Unmarshal(raw, &many) == nil {
		return many, true
	}
	return nil, false
}

func (c *Config) validate() error {
	pos := map[string]int{
		"vocab_size": c.VocabSize, "hidden_size": c.Hidden, "intermediate_size": c.Intermediate,
		"num_hidden_layers": c.Layers, "num_attention_heads": c.Heads, "num_key_value_heads": c.KVHeads, "head_dim": c.HeadDim,
	}
	for _, k := range []string{"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim"} {
		if pos[k] <= 0 {
			return fmt.Errorf("model: config.json: %s must be positive, got %d", k, pos[k])
		}
	}
	if c.Heads%c.KVHeads != 0 {
		return fmt.Errorf("model: config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d", c.Heads, c.KVHeads)
	}
	if c.HeadDim%2 != 0 {
		return fmt.Errorf("model: config.json: head_dim %d must be even for rotary embeddings", c.HeadDim)
	}
	if c.MaxPositions <= 0 {
		c.MaxPositions = 4096
	}
	return nil
}
