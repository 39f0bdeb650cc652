package decision

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteTable prints the report as a table, one row per (layer, site), then
// the decision site and the rule that chose it.
func (r *Report) WriteTable(w io.Writer) error {
	head := fmt.Sprintf("decision-site analysis: %d conflict vs %d self scenarios (%d-fold probe, λ %g), %d SOO pairs",
		r.Conflict, r.Self, r.Folds, r.Lambda, r.Pairs)
	if r.Format != "" {
		head += fmt.Sprintf(" (%s format)", r.Format)
	}
	if _, err := fmt.Fprintln(w, head); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "layer\tsite\tprobe acc\tother→conflict\tself→conflict\tcosine\tsoo mse\tscore\t")
	for _, s := range r.Sites {
		fmt.Fprintf(tw, "%d\t%s\t%.3f\t%.3f\t%.3f\t%+.3f\t%.4g\t%.3f\t\n", s.Layer, s.Site, s.ProbeAccuracy,
			s.OtherAsConflict, s.SelfAsConflict, s.Cosine, s.SOOMSE, s.Score)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if d := r.Decision; d != nil {
		fmt.Fprintf(w, "decision site: layer %d %s (score %.3f = cosine %.3f × transfer %.3f; probe accuracy %.3f)\n",
			d.Layer, d.Site, d.Score, d.Cosine, d.Transfer, d.ProbeAccuracy)
	} else {
		fmt.Fprintf(w, "decision site: none (no site has a positive score with probe accuracy ≥ %.2f)\n", r.MinAccuracy)
	}
	_, err := fmt.Fprintf(w, "rule: %s\n", r.Rule)
	return err
}
