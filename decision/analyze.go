package decision

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
)

// Defaults of Options.
const (
	DefaultFolds       = 5
	DefaultLambda      = 1.0
	DefaultMinAccuracy = 0.75
)

// Rule states how the decision site is chosen, as the report prints it.
const Rule = "score = cosine × transfer (transfer = other_as_conflict − self_as_conflict), counted only where " +
	"both are positive and the probe's held-out accuracy is at least min_accuracy; the decision site is the " +
	"highest score (ties: the earlier row, layer first, then attn_out, mlp_out, resid_post); none when no score is positive"

// Options configures an analysis.
type Options struct {
	// Layers to analyse; nil means every layer.
	Layers []int
	// Sites to analyse at each layer; nil means attn_out, mlp_out and
	// resid_post.
	Sites []engine.Site
	// Folds of the probe's cross-validation; 0 means DefaultFolds.
	Folds int
	// Lambda is the probe's L2 penalty (FitLogistic); 0 means DefaultLambda.
	Lambda float64
	// MinAccuracy is the held-out accuracy a site's probe needs for the site
	// to be a candidate (Rule); nil means DefaultMinAccuracy.
	MinAccuracy *float64
	// Batch is the number of prompts per forward step; 0 means DefaultBatch.
	Batch int
	// Workers is the number of sites analysed at once; 0 means GOMAXPROCS.
	Workers int
}

// resolved returns o with defaults filled and its layers and sites checked
// against a model of numLayers layers, and the points in table order.
func (o Options) resolved(numLayers int) (Options, []engine.Point, error) {
	if o.Folds == 0 {
		o.Folds = DefaultFolds
	}
	if o.Folds < 2 {
		return o, nil, fmt.Errorf("decision: want at least 2 folds, got %d", o.Folds)
	}
	if o.Lambda == 0 {
		o.Lambda = DefaultLambda
	}
	if !(o.Lambda > 0) {
		return o, nil, fmt.Errorf("decision: λ must be positive, got %g", o.Lambda)
	}
	if o.MinAccuracy == nil {
		v := DefaultMinAccuracy
		o.MinAccuracy = &v
	}
	if m := *o.MinAccuracy; !(m >= 0 && m <= 1) {
		return o, nil, fmt.Errorf("decision: min accuracy must be in [0, 1], got %g", m)
	}
	layers := slices.Clone(o.Layers)
	if layers == nil {
		for l := range numLayers {
			layers = append(layers, l)
		}
	}
	slices.Sort(layers)
	layers = slices.Compact(layers)
	for _, l := range layers {
		if l < 0 || l >= numLayers {
			return o, nil, fmt.Errorf("decision: layer %d is not in a model of %d layers", l, numLayers)
		}
	}
	sites := slices.Clone(o.Sites)
	if sites == nil {
		sites = []engine.Site{engine.AttnOut, engine.MLPOut, engine.ResidPost}
	}
	slices.Sort(sites)
	sites = slices.Compact(sites)
	for _, s := range sites {
		if s >= engine.NumSites {
			return o, nil, fmt.Errorf("decision: unknown site %v", s)
		}
	}
	if len(layers) == 0 || len(sites) == 0 {
		return o, nil, fmt.Errorf("decision: no layers or no sites to analyse")
	}
	o.Layers, o.Sites = layers, sites
	var pts []engine.Point
	for _, l := range layers {
		for _, s := range sites {
			pts = append(pts, engine.Point{Layer: l, Site: s})
		}
	}
	return o, pts, nil
}

// SiteResult is the analysis of one (layer, site), at the last prompt token.
type SiteResult struct {
	Layer int    `json:"layer"`
	Site  string `json:"site"`
	// ProbeAccuracy is the k-fold held-out accuracy of the conflict-vs-self
	// probe on the scenarios.
	ProbeAccuracy float64 `json:"probe_accuracy"`
	// OtherAsConflict and SelfAsConflict are the fractions of the SOO
	// pairs' other and self fragments that the probe, trained on all the
	// scenarios, calls conflict.
	OtherAsConflict float64 `json:"other_as_conflict"`
	SelfAsConflict  float64 `json:"self_as_conflict"`
	// Transfer is OtherAsConflict − SelfAsConflict.
	Transfer float64 `json:"transfer"`
	// Cosine is the cosine between the scenario direction (mean conflict −
	// mean self) and the SOO direction (mean other − mean self fragment);
	// 0 when either is zero.
	Cosine float64 `json:"cosine"`
	// ScenarioNorm and SOONorm are the two directions' Euclidean norms.
	ScenarioNorm float64 `json:"scenario_norm"`
	SOONorm      float64 `json:"soo_norm"`
	// SOOMSE is the mean over pairs of MSE(self, other) at this site, last
	// token (the SOO loss with last pooling), for reference.
	SOOMSE float64 `json:"soo_mse"`
	// Score ranks the site as a decision site (Rule).
	Score float64 `json:"score"`
}

// Report is the decision-site analysis of a model: one row per (layer,
// site) and the site the Rule picks.
type Report struct {
	// Model, Adapter, Format and Scenarios describe the inputs; the caller
	// fills them (Analyze leaves them empty).
	Model     string `json:"model,omitempty"`
	Adapter   string `json:"adapter,omitempty"`
	Format    Format `json:"format,omitempty"`
	Scenarios string `json:"scenarios,omitempty"`
	// Conflict, Self and Pairs count the inputs.
	Conflict int `json:"conflict"`
	Self     int `json:"self"`
	Pairs    int `json:"pairs"`
	// Folds, Lambda and MinAccuracy are the settings used.
	Folds       int     `json:"folds"`
	Lambda      float64 `json:"lambda"`
	MinAccuracy float64 `json:"min_accuracy"`
	Rule        string  `json:"rule"`
	// Sites are the rows, by layer, then site.
	Sites []SiteResult `json:"sites"`
	// Decision is the row the Rule picks; nil when none qualifies.
	Decision *SiteResult `json:"decision"`
}

// Inputs are the activations an analysis compares: the scenarios' and the
// SOO fragments' (FragSelf[i] and FragOther[i] are pair i).
type Inputs struct {
	Conflict, Self      Activations
	FragSelf, FragOther Activations
}

// Measure captures the last-token activations of the prompts through
// adapter (nil for the base model) and analyses them (Analyze).
func Measure(ctx context.Context, ex engine.Executor, adapter *lora.Adapter, p *Prompts, opts Options) (*Report, error) {
	opts, pts, err := opts.resolved(ex.Config().Layers)
	if err != nil {
		return nil, err
	}
	if len(p.Pairs) == 0 {
		return nil, fmt.Errorf("decision: no SOO pairs")
	}
	fs := make([][]int32, len(p.Pairs))
	fo := make([][]int32, len(p.Pairs))
	for i, pr := range p.Pairs {
		fs[i], fo[i] = pr.Self, pr.Other
	}
	var in Inputs
	for _, set := range []struct {
		name    string
		prompts [][]int32
		dst     *Activations
	}{{"conflict scenarios", p.Conflict, &in.Conflict}, {"self scenarios", p.Self, &in.Self},
		{"self fragments", fs, &in.FragSelf}, {"other fragments", fo, &in.FragOther}} {
		a, err := Capture(ctx, ex, adapter, set.prompts, pts, opts.Batch)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", set.name, err)
		}
		*set.dst = a
	}
	return Analyze(ctx, in, opts, ex.Config().Layers)
}

// Analyze computes the report from captured activations, for the layers
// and sites of opts in a model of numLayers layers. Every result is
// deterministic: the probe's fit and folds depend on the inputs alone.
func Analyze(ctx context.Context, in Inputs, opts Options, numLayers int) (*Report, error) {
	opts, pts, err := opts.resolved(numLayers)
	if err != nil {
		return nil, err
	}
	count := func(a Activations) int {
		for _, pt := range pts {
			return len(a[pt])
		}
		return 0
	}
	r := &Report{
		Conflict: count(in.Conflict), Self: count(in.Self), Pairs: count(in.FragSelf),
		Folds: opts.Folds, Lambda: opts.Lambda, MinAccuracy: *opts.MinAccuracy, Rule: Rule,
		Sites: make([]SiteResult, len(pts)),
	}
	if r.Pairs != count(in.FragOther) {
		return nil, fmt.Errorf("decision: %d self fragments but %d other fragments", r.Pairs, count(in.FragOther))
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	errs := make([]error, len(pts))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, len(pts)) {
		wg.Go(func() {
			for i := range next {
				if err := ctx.Err(); err != nil {
					errs[i] = err
					continue
				}
				res, err := analyzeSite(in, pts[i], opts)
				if err != nil {
					errs[i] = fmt.Errorf("decision: layer %d %s: %w", pts[i].Layer, pts[i].Site, err)
					continue
				}
				r.Sites[i] = *res
			}
		})
	}
	for i := range pts {
		next <- i
	}
	close(next)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	r.Decision = decide(r.Sites, *opts.MinAccuracy)
	return r, nil
}

// analyzeSite computes one row.
func analyzeSite(in Inputs, pt engine.Point, opts Options) (*SiteResult, error) {
	var sets [4][][]float64
	for k, a := range []Activations{in.Conflict, in.Self, in.FragSelf, in.FragOther} {
		rows, err := a.rows64(pt)
		if err != nil {
			return nil, err
		}
		sets[k] = rows
	}
	conflict, self, fragSelf, fragOther := sets[0], sets[1], sets[2], sets[3]
	X := append(slices.Clone(conflict), self...)
	y := make([]bool, len(X))
	for i := range conflict {
		y[i] = true
	}
	acc, err := CrossValidate(X, y, opts.Folds, opts.Lambda)
	if err != nil {
		return nil, err
	}
	probe, err := TrainProbe(X, y, opts.Lambda)
	if err != nil {
		return nil, err
	}
	scen, err := MeanDiff(conflict, self)
	if err != nil {
		return nil, fmt.Errorf("scenario direction: %w", err)
	}
	soo, err := MeanDiff(fragOther, fragSelf)
	if err != nil {
		return nil, fmt.Errorf("SOO direction: %w", err)
	}
	if len(scen) != len(soo) {
		return nil, fmt.Errorf("scenario and fragment activations differ in width (%d and %d)", len(scen), len(soo))
	}
	mse, err := PairMSE(fragSelf, fragOther)
	if err != nil {
		return nil, err
	}
	res := &SiteResult{
		Layer: pt.Layer, Site: pt.Site.String(),
		ProbeAccuracy:   acc,
		OtherAsConflict: probe.Fraction(fragOther),
		SelfAsConflict:  probe.Fraction(fragSelf),
		Cosine:          Cosine(scen, soo),
		ScenarioNorm:    Norm(scen),
		SOONorm:         Norm(soo),
		SOOMSE:          mse,
	}
	res.Transfer = res.OtherAsConflict - res.SelfAsConflict
	res.Score = Score(*res, *opts.MinAccuracy)
	return res, nil
}

// Score is the Rule's score of a row: cosine × transfer where both are
// positive and the probe's accuracy is at least minAccuracy, else 0.
func Score(r SiteResult, minAccuracy float64) float64 {
	if r.Cosine <= 0 || r.Transfer <= 0 || r.ProbeAccuracy < minAccuracy {
		return 0
	}
	return r.Cosine * r.Transfer
}

// decide returns a copy of the row with the highest positive score (the
// first of equals), or nil.
func decide(rows []SiteResult, minAccuracy float64) *SiteResult {
	best := -1
	for i, r := range rows {
		if s := Score(r, minAccuracy); s > 0 && (best < 0 || s > Score(rows[best], minAccuracy)) {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	d := rows[best]
	return &d
}
