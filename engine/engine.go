// Package engine defines what the model executors share: the rows of a
// forward step, activation capture points, and the Executor interface that the
// native cpu executor and the GoMLX xla executor implement.
package engine

import (
	"context"
	"fmt"

	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
)

// Site is a place inside a decoder layer where activations can be captured.
type Site uint8

// Capture sites, named as interpretability researchers name them.
const (
	AttnOut   Site = iota // output of self_attn.o_proj, before any post-norm and the residual add
	MLPOut                // output of mlp.down_proj, before any post-norm and the residual add
	ResidPost             // residual stream after the layer
	NumSites
)

var siteNames = [NumSites]string{"attn_out", "mlp_out", "resid_post"}

// String returns the site's wire name.
func (s Site) String() string {
	if s < NumSites {
		return siteNames[s]
	}
	return fmt.Sprintf("site(%d)", s)
}

// ParseSite maps a wire name ("attn_out", "mlp_out", "resid_post") to a Site.
func ParseSite(name string) (Site, error) {
	for i, n := range siteNames {
		if n == name {
			return Site(i), nil
		}
	}
	return 0, fmt.Errorf("unknown site %q (want attn_out, mlp_out or resid_post)", name)
}

// Point is one (layer, site) capture location; layers count from 0.
type Point struct {
	Layer int
	Site  Site
}

// Capture asks for the activations at Points for the row's tokens in
// [From, To) (indices into Row.Tokens; To <= 0 means through the last token).
type Capture struct {
	Points   []Point
	From, To int
}

// LogitsMode says which logits a row wants back.
type LogitsMode uint8

// Logits modes.
const (
	LogitsLast LogitsMode = iota // the last token's logits only (decoding)
	LogitsAll                    // logits for every token of the row
	LogitsNone                   // no logits (capture-only or cache-filling rows)
)

// Sequence is the per-sequence state an executor keeps between forward steps
// (its KV cache). A sequence must be used by one forward call at a time.
type Sequence interface {
	// Len is the number of tokens already in the cache.
	Len() int
	// Release frees the sequence's memory; it must not be used afterwards.
	Release()
}

// Row is one sequence's part of a forward step.
type Row struct {
	Seq     Sequence
	Tokens  []int32       // new tokens, appended at positions Seq.Len()...
	Adapter *lora.Adapter // nil for the base model
	Capture *Capture      // nil for none
	Logits  LogitsMode
	// LogitsBuf, where its capacity holds the row's logits, receives them
	// (Output.Logits.Data is then a prefix of it), so a caller that is done
	// with a step's logits before the next step can reuse one buffer per
	// sequence instead of garbage per step. Nil, or too small: the
	// executor allocates. Executors may ignore it.
	LogitsBuf []float32
}

// Tensor2D is a dense row-major [Rows, Cols] float32 matrix.
type Tensor2D struct {
	Rows, Cols int
	Data       []float32
}

// Row returns row i.
func (t Tensor2D) Row(i int) []float32 { return t.Data[i*t.Cols : (i+1)*t.Cols] }

// Output is what a forward step returns for one row.
type Output struct {
	Logits Tensor2D           // [1 or len(Tokens), vocab]; empty with LogitsNone
	Acts   map[Point]Tensor2D // captured activations, [To-From, hidden] per point
}

// Executor runs a model's forward pass over a batch of rows, each with its own
// sequence, position, adapter and capture request.
type Executor interface {
	Config() *model.Config
	NewSequence() Sequence
	Forward(ctx context.Context, rows []Row) ([]Output, error)
}
