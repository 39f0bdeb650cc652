// Package overlap measures self/other overlap: how differently a model
// represents a self-referencing prompt and its other-referencing twin
// (Self-Other Overlap, arXiv 2412.16325; DESIGN.md §5).
//
// For a self prompt and an other prompt the engine captures the activations
// S [Ts, d] and O [To, d] at each requested (layer, site). Both are pooled
// (see Pooling) and compared in float64:
//
//   - mse: the mean of the squared differences of the pooled values;
//   - log_mse: ln(mse + 1e-25), the paper's RL "SOO value";
//   - cosine: the cosine similarity of the pooled values (0 when either is
//     all zeros);
//   - self_norm, other_norm: the L2 norms of the pooled values.
//
// Activations that hold a NaN or an infinity (a numerically broken adapter
// or model) make the values that depend on them non-finite. JSON has no
// such numbers: a LayerResult writes each non-finite value as null and adds
// "nonfinite", a reason naming the prompt(s) whose activations were not
// finite ({"layer": 3, "site": "attn_out", "mse": null, "log_mse": null,
// "cosine": null, "self_norm": null, "other_norm": 4.2, "nonfinite": "..."});
// finite results carry no "nonfinite" key, so existing clients see what
// they always saw. Reading such JSON back gives NaN for each null.
//
// With "mean" and "last" pooling the pooled values are d-vectors. With "full"
// pooling they are the zero-padded [max(Ts,To), d] matrices, flattened: cosine
// is the cosine of the flattened matrices and the norms are their Frobenius
// norms (padding rows add nothing to either).
//
// Serving: the "soo" extension and POST /v1/overlap.
//
//   - Parse the request's "layers", "sites" and "pooling" with ParseSpec and
//     Spec.Resolve; every error they return (and those of Measure, CheckTokens
//     and NewSwap) matches ErrInvalid and is an *InputError whose Param names
//     the field: answer 400.
//   - POST /v1/overlap: Measure runs the pair as two rows of one batched,
//     logits-free forward step (one prefill of each, upper layers skipped).
//   - "soo" on a completion: attach spec.Capture() to the prompt's prefill
//     row, then MeasureTwin (one extra prefill), or put the twin's row in the
//     same step and call Compute. The twin comes from "other", or from the
//     prompt by Swap (apply it to each message's text before the chat
//     template, so both prompts get the same template).
//   - Record each result with a Recorder (a Store such as Ring, and Metrics).
package overlap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
)

// LogEpsilon is added to the MSE before taking its logarithm (log_mse).
const LogEpsilon = 1e-25

// Pooling says how the token dimension of the activations is reduced before
// self and other are compared.
type Pooling string

// Poolings.
const (
	// PoolMean compares the means over tokens.
	PoolMean Pooling = "mean"
	// PoolLast compares the last tokens.
	PoolLast Pooling = "last"
	// PoolFull right-pads the shorter matrix with zero rows and compares
	// elementwise.
	PoolFull Pooling = "full"
)

// DefaultPooling is the pooling of a Spec that names none.
const DefaultPooling = PoolMean

// DefaultSite is the site of a Spec that names none (the paper's site).
const DefaultSite = engine.AttnOut

// ParsePooling maps a wire name to a Pooling; "" gives DefaultPooling.
func ParsePooling(name string) (Pooling, error) {
	switch p := Pooling(name); p {
	case "":
		return DefaultPooling, nil
	case PoolMean, PoolLast, PoolFull:
		return p, nil
	}
	return "", invalid("pooling", "unknown pooling %q (want mean, last or full)", name)
}

// ErrInvalid is matched (errors.Is) by every error that a bad request causes:
// a bad spec, an empty or too long prompt, a bad swap. The server answers
// these with a 400.
var ErrInvalid = errors.New("invalid overlap request")

// InputError is a request error; Param names the offending request field
// ("layers", "sites", "pooling", "self", "other", "swap") for the error
// envelope's "param".
type InputError struct {
	Param   string
	Message string
}

// Error returns the message.
func (e *InputError) Error() string { return "overlap: " + e.Message }

// Is makes errors.Is(err, ErrInvalid) true.
func (e *InputError) Is(target error) bool { return target == ErrInvalid }

func invalid(param, format string, args ...any) error {
	return &InputError{Param: param, Message: fmt.Sprintf(format, args...)}
}

// Spec says what to measure. The zero Spec measures every layer at
// DefaultSite with DefaultPooling.
type Spec struct {
	// Layers to measure, counted from 0, in the order the result lists them;
	// empty means every layer of the model.
	Layers []int
	// Sites to measure at each layer, in the order the result lists them;
	// empty means DefaultSite.
	Sites []engine.Site
	// Pooling; "" means DefaultPooling.
	Pooling Pooling
}

// ParseSpec builds a Spec from wire values (site names as in
// engine.ParseSite, pooling as in ParsePooling).
func ParseSpec(layers []int, sites []string, pooling string) (Spec, error) {
	p, err := ParsePooling(pooling)
	if err != nil {
		return Spec{}, err
	}
	s := Spec{Layers: slices.Clone(layers), Pooling: p}
	for _, n := range sites {
		site, err := engine.ParseSite(n)
		if err != nil {
			return Spec{}, invalid("sites", "unknown site %q (want attn_out, mlp_out or resid_post)", n)
		}
		s.Sites = append(s.Sites, site)
	}
	return s, nil
}

// Resolve validates s against a model with the given number of layers and
// returns it with its defaults filled in.
func (s Spec) Resolve(numLayers int) (Spec, error) {
	out := Spec{Pooling: s.Pooling}
	if out.Pooling == "" {
		out.Pooling = DefaultPooling
	}
	if _, err := ParsePooling(string(out.Pooling)); err != nil {
		return Spec{}, err
	}
	if len(s.Layers) == 0 {
		for l := range numLayers {
			out.Layers = append(out.Layers, l)
		}
	} else {
		seen := make(map[int]bool, len(s.Layers))
		for _, l := range s.Layers {
			if l < 0 || l >= numLayers {
				return Spec{}, invalid("layers", "layer %d out of range: the model has %d layers (0..%d)", l, numLayers, numLayers-1)
			}
			if seen[l] {
				return Spec{}, invalid("layers", "layer %d listed twice", l)
			}
			seen[l] = true
			out.Layers = append(out.Layers, l)
		}
	}
	if len(s.Sites) == 0 {
		out.Sites = []engine.Site{DefaultSite}
	} else {
		seen := make(map[engine.Site]bool, len(s.Sites))
		for _, site := range s.Sites {
			if site >= engine.NumSites {
				return Spec{}, invalid("sites", "unknown site %v (want attn_out, mlp_out or resid_post)", site)
			}
			if seen[site] {
				return Spec{}, invalid("sites", "site %v listed twice", site)
			}
			seen[site] = true
			out.Sites = append(out.Sites, site)
		}
	}
	return out, nil
}

// Points lists the capture points of a resolved Spec (Spec.Resolve; an
// unresolved Spec may have none), layer-major, in result order.
func (s Spec) Points() []engine.Point {
	pts := make([]engine.Point, 0, len(s.Layers)*len(s.Sites))
	for _, l := range s.Layers {
		for _, site := range s.Sites {
			pts = append(pts, engine.Point{Layer: l, Site: site})
		}
	}
	return pts
}

// Capture returns the capture request of a resolved Spec for a row whose
// every token is to be compared (attach it to a chat request's prefill row,
// then call Compute or MeasureTwin).
func (s Spec) Capture() *engine.Capture { return &engine.Capture{Points: s.Points()} }

// LayerResult is the overlap at one (layer, site). Its JSON writes a
// non-finite value as null, with NonFinite saying why (see the package doc).
type LayerResult struct {
	Layer     int     `json:"layer"`
	Site      string  `json:"site"`
	MSE       float64 `json:"mse"`
	LogMSE    float64 `json:"log_mse"`
	Cosine    float64 `json:"cosine"`
	SelfNorm  float64 `json:"self_norm"`
	OtherNorm float64 `json:"other_norm"`
	// NonFinite, when set, says why some of the values are not finite
	// (NaN or infinite activations); "" when every value is finite.
	NonFinite string `json:"nonfinite,omitempty"`
}

// layerWire is the JSON form of a LayerResult: a null is a value that is
// not finite.
type layerWire struct {
	Layer     int      `json:"layer"`
	Site      string   `json:"site"`
	MSE       *float64 `json:"mse"`
	LogMSE    *float64 `json:"log_mse"`
	Cosine    *float64 `json:"cosine"`
	SelfNorm  *float64 `json:"self_norm"`
	OtherNorm *float64 `json:"other_norm"`
	NonFinite string   `json:"nonfinite,omitempty"`
}

// orNull returns &v, or nil (JSON null) when v is NaN or infinite.
func orNull(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

// orNaN returns *p, or NaN for a JSON null.
func orNaN(p *float64) float64 {
	if p == nil {
		return math.NaN()
	}
	return *p
}

// Finite reports whether every value of l is finite.
func (l LayerResult) Finite() bool {
	for _, v := range [...]float64{l.MSE, l.LogMSE, l.Cosine, l.SelfNorm, l.OtherNorm} {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}

// MarshalJSON writes l with null for each value that is not finite, and a
// "nonfinite" reason whenever there is one.
func (l LayerResult) MarshalJSON() ([]byte, error) {
	w := layerWire{Layer: l.Layer, Site: l.Site, MSE: orNull(l.MSE), LogMSE: orNull(l.LogMSE), Cosine: orNull(l.Cosine),
		SelfNorm: orNull(l.SelfNorm), OtherNorm: orNull(l.OtherNorm), NonFinite: l.NonFinite}
	if w.NonFinite == "" && !l.Finite() {
		w.NonFinite = "a value is not finite (NaN or infinite activations)"
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads what MarshalJSON writes: a null value is NaN.
func (l *LayerResult) UnmarshalJSON(b []byte) error {
	var w layerWire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*l = LayerResult{Layer: w.Layer, Site: w.Site, MSE: orNaN(w.MSE), LogMSE: orNaN(w.LogMSE), Cosine: orNaN(w.Cosine),
		SelfNorm: orNaN(w.SelfNorm), OtherNorm: orNaN(w.OtherNorm), NonFinite: w.NonFinite}
	return nil
}

// Result is the overlap of one self/other pair (DESIGN.md §5).
type Result struct {
	Pooling     Pooling       `json:"pooling"`
	Layers      []LayerResult `json:"layers"`
	SelfTokens  int           `json:"self_tokens"`
	OtherTokens int           `json:"other_tokens"`
}

// Finite reports whether every value of every entry of r is finite.
func (r *Result) Finite() bool {
	for _, l := range r.Layers {
		if !l.Finite() {
			return false
		}
	}
	return true
}

// MeanMSE returns the mean of the MSE over the result's entries (over all
// listed layers and sites), or 0 for an empty result.
func (r *Result) MeanMSE() float64 {
	if len(r.Layers) == 0 {
		return 0
	}
	var s float64
	for _, l := range r.Layers {
		s += l.MSE
	}
	return s / float64(len(r.Layers))
}

// Compare computes the overlap metrics of S [Ts, d] and O [To, d] under
// pooling p, in float64. The returned LayerResult has Layer and Site unset.
func Compare(S, O engine.Tensor2D, p Pooling) (LayerResult, error) {
	if S.Rows <= 0 || O.Rows <= 0 {
		return LayerResult{}, fmt.Errorf("overlap: compare: empty activations (%d and %d rows)", S.Rows, O.Rows)
	}
	if S.Cols != O.Cols || S.Cols <= 0 {
		return LayerResult{}, fmt.Errorf("overlap: compare: widths differ (%d and %d)", S.Cols, O.Cols)
	}
	if len(S.Data) != S.Rows*S.Cols || len(O.Data) != O.Rows*O.Cols {
		return LayerResult{}, fmt.Errorf("overlap: compare: data length does not match the shape")
	}
	d := S.Cols
	var sq, dot, ss, oo float64
	var n int
	switch p {
	case PoolMean:
		sm, om := meanRows(S), meanRows(O)
		for i := range d {
			a, b := sm[i], om[i]
			sq += (a - b) * (a - b)
			dot += a * b
			ss += a * a
			oo += b * b
		}
		n = d
	case PoolLast:
		sl, ol := S.Row(S.Rows-1), O.Row(O.Rows-1)
		for i := range d {
			a, b := float64(sl[i]), float64(ol[i])
			sq += (a - b) * (a - b)
			dot += a * b
			ss += a * a
			oo += b * b
		}
		n = d
	case PoolFull:
		common := min(S.Rows, O.Rows) * d
		for i := range common {
			a, b := float64(S.Data[i]), float64(O.Data[i])
			sq += (a - b) * (a - b)
			dot += a * b
			ss += a * a
			oo += b * b
		}
		// Padding: the longer matrix's extra rows are compared with zeros.
		for _, v := range S.Data[common:] {
			a := float64(v)
			sq += a * a
			ss += a * a
		}
		for _, v := range O.Data[common:] {
			b := float64(v)
			sq += b * b
			oo += b * b
		}
		n = max(S.Rows, O.Rows) * d
	default:
		return LayerResult{}, invalid("pooling", "unknown pooling %q (want mean, last or full)", p)
	}
	mse := sq / float64(n)
	r := LayerResult{MSE: mse, LogMSE: math.Log(mse + LogEpsilon), SelfNorm: math.Sqrt(ss), OtherNorm: math.Sqrt(oo)}
	if ss > 0 && oo > 0 {
		r.Cosine = dot / (r.SelfNorm * r.OtherNorm)
	}
	// Finite float32 activations give finite float64 sums (a square is at
	// most 1.2e77), so a non-finite sum means a NaN or an infinity among
	// the compared values.
	if !finite(sq) || !finite(dot) || !finite(ss) || !finite(oo) {
		if !finite(dot) || !finite(ss) || !finite(oo) {
			r.Cosine = math.NaN() // not the 0 of "either is all zeros"
		}
		r.NonFinite = nonFiniteReason(S, O, p)
	}
	return r, nil
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// nonFiniteReason says which of S and O hold NaN or infinite values in the
// part that pooling p compares.
func nonFiniteReason(S, O engine.Tensor2D, p Pooling) string {
	count := func(t engine.Tensor2D) string {
		v := t.Data
		if p == PoolLast {
			v = t.Row(t.Rows - 1)
		}
		var nan, inf int
		for _, x := range v {
			switch {
			case x != x:
				nan++
			case math.IsInf(float64(x), 0):
				inf++
			}
		}
		if nan+inf == 0 {
			return "finite"
		}
		return fmt.Sprintf("%d NaN and %d infinite of %d values", nan, inf, len(v))
	}
	return fmt.Sprintf("non-finite activations (self: %s; other: %s); the adapter or the weights are numerically broken", count(S), count(O))
}

func meanRows(t engine.Tensor2D) []float64 {
	m := make([]float64, t.Cols)
	for r := range t.Rows {
		for i, v := range t.Row(r) {
			m[i] += float64(v)
		}
	}
	for i := range m {
		m[i] /= float64(t.Rows)
	}
	return m
}

// Compute builds the Result of a resolved spec (Spec.Resolve) from activations already
// captured for every point of spec.Points(): self and other map each point to
// [tokens, hidden] (engine.Output.Acts). self_tokens and other_tokens are the
// captured row counts.
func Compute(spec Spec, self, other map[engine.Point]engine.Tensor2D) (*Result, error) {
	res := &Result{Pooling: spec.Pooling, SelfTokens: -1, OtherTokens: -1}
	for _, pt := range spec.Points() {
		S, ok1 := self[pt]
		O, ok2 := other[pt]
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("overlap: no activations captured at layer %d %v", pt.Layer, pt.Site)
		}
		if res.SelfTokens < 0 {
			res.SelfTokens, res.OtherTokens = S.Rows, O.Rows
		} else if S.Rows != res.SelfTokens || O.Rows != res.OtherTokens {
			return nil, fmt.Errorf("overlap: layer %d %v: captured %d/%d tokens, other points %d/%d",
				pt.Layer, pt.Site, S.Rows, O.Rows, res.SelfTokens, res.OtherTokens)
		}
		lr, err := Compare(S, O, spec.Pooling)
		if err != nil {
			return nil, fmt.Errorf("overlap: layer %d %v: %w", pt.Layer, pt.Site, err)
		}
		lr.Layer, lr.Site = pt.Layer, pt.Site.String()
		res.Layers = append(res.Layers, lr)
	}
	if res.SelfTokens < 0 {
		return nil, errors.New("overlap: the spec has no capture points")
	}
	return res, nil
}

// MeasureTwin measures the overlap of a prompt whose activations were already
// captured (selfActs, e.g. the Acts of a chat request's prefill row that
// carried spec.Capture()) against its twin, which it runs as one fresh,
// logits-free row: the twin costs one extra prefill and no decoding. spec
// must be resolved (Spec.Resolve). A scheduler that can put the twin into
// the same forward step as the prompt should instead add a row with
// spec.Capture() and Logits engine.LogitsNone, and call Compute.
func MeasureTwin(ctx context.Context, ex engine.Executor, adapter *lora.Adapter, selfActs map[engine.Point]engine.Tensor2D, other []int32, spec Spec) (*Result, error) {
	if len(spec.Layers) == 0 || len(spec.Sites) == 0 || spec.Pooling == "" {
		return nil, errors.New("overlap: MeasureTwin needs a resolved spec (Spec.Resolve)")
	}
	if err := checkPrompt(ex, "other", other); err != nil {
		return nil, err
	}
	seq := ex.NewSequence()
	defer seq.Release()
	outs, err := ex.Forward(ctx, []engine.Row{{Seq: seq, Tokens: other, Adapter: adapter, Capture: spec.Capture(), Logits: engine.LogitsNone}})
	if err != nil {
		return nil, fmt.Errorf("overlap: twin forward: %w", err)
	}
	return Compute(spec, selfActs, outs[0].Acts)
}

// TokenPair is a self prompt and its other-referencing twin, tokenized.
type TokenPair struct {
	Self, Other []int32
}

// maxContext is the longest sequence ex accepts.
func maxContext(ex engine.Executor) int {
	if m, ok := ex.(interface{ MaxContext() int }); ok {
		return m.MaxContext()
	}
	return ex.Config().MaxPositions
}

// CheckTokens validates a pair's token counts against the executor: neither
// prompt may be empty, longer than the context, or outside the vocabulary.
func CheckTokens(ex engine.Executor, p TokenPair) error {
	if err := checkPrompt(ex, "self", p.Self); err != nil {
		return err
	}
	return checkPrompt(ex, "other", p.Other)
}

func checkPrompt(ex engine.Executor, param string, ids []int32) error {
	if len(ids) == 0 {
		return invalid(param, "the %s prompt is empty", param)
	}
	if mc := maxContext(ex); len(ids) > mc {
		return invalid(param, "the %s prompt has %d tokens; the context is %d", param, len(ids), mc)
	}
	if vs := ex.Config().VocabSize; vs > 0 {
		for _, t := range ids {
			if t < 0 || int(t) >= vs {
				return invalid(param, "the %s prompt has token %d outside the vocabulary of %d", param, t, vs)
			}
		}
	}
	return nil
}

// Measure runs self and other as two rows of one forward step (fresh
// sequences, no logits, capture at the spec's points, upper layers skipped),
// through adapter (nil for the base model), and returns their overlap. The
// spec is resolved against the executor's model.
func Measure(ctx context.Context, ex engine.Executor, adapter *lora.Adapter, self, other []int32, spec Spec) (*Result, error) {
	rs, err := MeasureBatch(ctx, ex, adapter, []TokenPair{{Self: self, Other: other}}, spec)
	if err != nil {
		return nil, err
	}
	return rs[0], nil
}

// MeasureBatch measures several pairs in one forward step of 2·len(pairs)
// rows; results are in the order of pairs.
func MeasureBatch(ctx context.Context, ex engine.Executor, adapter *lora.Adapter, pairs []TokenPair, spec Spec) ([]*Result, error) {
	cfg := ex.Config()
	rs, err := spec.Resolve(cfg.Layers)
	if err != nil {
		return nil, err
	}
	if len(pairs) == 0 {
		return nil, nil
	}
	for i, p := range pairs {
		if err := CheckTokens(ex, p); err != nil {
			if len(pairs) > 1 {
				return nil, fmt.Errorf("pair %d: %w", i, err)
			}
			return nil, err
		}
	}
	capture := rs.Capture()
	rows := make([]engine.Row, 0, 2*len(pairs))
	for _, p := range pairs {
		for _, ids := range [][]int32{p.Self, p.Other} {
			rows = append(rows, engine.Row{Seq: ex.NewSequence(), Tokens: ids, Adapter: adapter, Capture: capture, Logits: engine.LogitsNone})
		}
	}
	defer func() {
		for _, r := range rows {
			r.Seq.Release()
		}
	}()
	outs, err := ex.Forward(ctx, rows)
	if err != nil {
		return nil, fmt.Errorf("overlap: forward: %w", err)
	}
	res := make([]*Result, len(pairs))
	for i := range pairs {
		r, err := Compute(rs, outs[2*i].Acts, outs[2*i+1].Acts)
		if err != nil {
			return nil, err
		}
		res[i] = r
	}
	return res, nil
}
