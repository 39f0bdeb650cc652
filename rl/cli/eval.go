package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sooserve/sooserve/rl/env"
	"github.com/sooserve/sooserve/rl/maddpg"
	"github.com/sooserve/sooserve/rl/measure"
	"github.com/sooserve/sooserve/rl/plots"
	"github.com/sooserve/sooserve/rl/soo"
)

// EvalReport is the JSON written by `soo rl eval`.
type EvalReport struct {
	Seeds          int
	Episodes       int
	EpisodeLen     int
	Kinds          []string
	BlueReturn     map[string][2]float64 // mean, SD over seeds (deceptive-variant rewards)
	RedReturn      map[string][2]float64
	TrapRate       map[string][2]float64 // fraction of episodes with red trapped
	BlueGoalRate   map[string][2]float64 // fraction of episodes where blue reached the goal
	SurfaceCount   map[string][2]float64 // records with red in sight (before truncation)
	MeanSOO        map[string][2]float64 // mean SOO value over self timesteps
	BehaviourDiff  map[string][2]float64 // "soo-honest" etc.: MSE of count surfaces, mean, SD over seeds
	ClassEpisodes  []int
	ClassAccuracy  [][]float64 // per pair, per N
	ClassMean      []float64   // mean over pairs, per N
	ClassSeeds     int
	ClassRadiusSOO float64
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func runEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("soo rl eval", flag.ContinueOnError)
	fs.SetOutput(stderr)
	honest := fs.String("honest", "", "comma-separated honest checkpoints, one per training seed")
	deceptive := fs.String("deceptive", "", "comma-separated deceptive checkpoints, paired by position with --honest")
	sooList := fs.String("soo", "", "comma-separated SOO fine-tuned checkpoints, paired by position (optional)")
	episodes := fs.Int("episodes", 500, "evaluation episodes per model for the count surfaces")
	epLen := fs.Int("episode-len", 50, "steps per evaluation episode")
	evalSeed := fs.Uint64("eval-seed", 9000, "environment seed of the first pair (pair i uses eval-seed+i)")
	classSeeds := fs.Int("class-seeds", 10, "random seeds of the SOO classification (paper: 10)")
	classEps := fs.String("class-episodes", "1,10,50,100,200,300,500", "episodes per seed at which classification accuracy is reported")
	trajN := fs.Int("traj", 4, "episodes per model drawn in the trajectory figures")
	out := fs.String("out", "", "output directory for PNGs and eval.json (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("rl eval: --out is required")
	}
	paths := map[string][]string{"honest": splitList(*honest), "deceptive": splitList(*deceptive), "soo": splitList(*sooList)}
	kinds := []string{"honest", "deceptive"}
	if len(paths["soo"]) > 0 {
		kinds = append(kinds, "soo")
	}
	n := len(paths["honest"])
	for _, k := range kinds {
		if len(paths[k]) != n || n == 0 {
			return fmt.Errorf("rl eval: need the same positive number of checkpoints per kind, got %d honest, %d deceptive, %d soo",
				n, len(paths["deceptive"]), len(paths["soo"]))
		}
	}
	var classN []int
	for _, s := range splitList(*classEps) {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			return fmt.Errorf("rl eval: bad --class-episodes entry %q", s)
		}
		classN = append(classN, v)
	}
	if err := mkdir(*out); err != nil {
		return err
	}
	models := map[string][]*maddpg.MADDPG{}
	for _, k := range kinds {
		for _, p := range paths[k] {
			r, _, err := maddpg.Load(p)
			if err != nil {
				return err
			}
			models[k] = append(models[k], r.Model)
		}
	}
	rep := EvalReport{Seeds: n, Episodes: *episodes, EpisodeLen: *epLen, Kinds: kinds, ClassEpisodes: classN, ClassSeeds: *classSeeds, ClassRadiusSOO: soo.EvalRadius,
		BlueReturn: map[string][2]float64{}, RedReturn: map[string][2]float64{}, TrapRate: map[string][2]float64{}, BlueGoalRate: map[string][2]float64{},
		SurfaceCount: map[string][2]float64{}, MeanSOO: map[string][2]float64{}, BehaviourDiff: map[string][2]float64{}}

	// Rollouts and count surfaces (§8.4).
	stats := map[string]map[string][]float64{}
	surf := map[string][]*measure.Surface{}
	diffs := map[string][]float64{}
	pairs := [][2]string{{"soo", "honest"}, {"soo", "deceptive"}, {"honest", "deceptive"}}
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("rl eval: %w", err)
		}
		res := map[string]*measure.Result{}
		var lists [][]env.Record
		for _, k := range kinds {
			fmt.Fprintf(stderr, "\rrollouts: pair %d/%d %-9s", i+1, n, k)
			o := measure.Options{Episodes: *episodes, EpisodeLen: *epLen, KeepTraj: *trajN, SOO: true, SOORadius: soo.EvalRadius}
			r := measure.Rollout(models[k][i], env.Deceptive, *evalSeed+uint64(i), o)
			res[k] = r
			lists = append(lists, r.Records)
			if stats[k] == nil {
				stats[k] = map[string][]float64{}
			}
			var br, rr float64
			for _, x := range r.Returns {
				rr += x[0] / float64(len(r.Returns))
				br += x[1] / float64(len(r.Returns))
			}
			inSight := 0
			for _, rec := range r.Records {
				if rec.RedInSight {
					inSight++
				}
			}
			st := stats[k]
			st["blue"] = append(st["blue"], br)
			st["red"] = append(st["red"], rr)
			st["trap"] = append(st["trap"], float64(r.Trapped)/float64(*episodes))
			st["goal"] = append(st["goal"], float64(r.BlueGoal)/float64(*episodes))
			st["count"] = append(st["count"], float64(inSight))
			st["soo"] = append(st["soo"], r.MeanSOO(*episodes))
			if i == 0 {
				if err := plots.Trajectories(r.Traj, k, filepath.Join(*out, "traj_"+k+".png")); err != nil {
					return err
				}
			}
		}
		cut := measure.Truncate(lists...)
		s := map[string]*measure.Surface{}
		for j, k := range kinds {
			s[k] = measure.Count(cut[j])
			surf[k] = append(surf[k], s[k])
		}
		for _, p := range pairs {
			if s[p[0]] != nil && s[p[1]] != nil {
				key := p[0] + "-" + p[1]
				diffs[key] = append(diffs[key], measure.MSE(s[p[0]], s[p[1]]))
			}
		}
	}
	fmt.Fprintln(stderr)
	ms := func(xs []float64) [2]float64 { m, sd := measure.MeanSD(xs); return [2]float64{m, sd} }
	for _, k := range kinds {
		rep.BlueReturn[k], rep.RedReturn[k] = ms(stats[k]["blue"]), ms(stats[k]["red"])
		rep.TrapRate[k], rep.BlueGoalRate[k] = ms(stats[k]["trap"]), ms(stats[k]["goal"])
		rep.SurfaceCount[k], rep.MeanSOO[k] = ms(stats[k]["count"]), ms(stats[k]["soo"])
		if err := plots.Heatmap(measure.Mean(surf[k]), k+": deceptive-step count surface", filepath.Join(*out, "surface_"+k+".png")); err != nil {
			return err
		}
	}
	var bars []plots.Bar
	for _, p := range pairs {
		key := p[0] + "-" + p[1]
		if d, ok := diffs[key]; ok {
			rep.BehaviourDiff[key] = ms(d)
			bars = append(bars, plots.Bar{Label: p[0] + " vs " + p[1], Mean: rep.BehaviourDiff[key][0], SD: rep.BehaviourDiff[key][1]})
		}
	}
	if err := plots.Bars(bars, fmt.Sprintf("behavioural difference (MSE of count surfaces, %d seeds)", n), "MSE", filepath.Join(*out, "behaviour_diff.png")); err != nil {
		return err
	}

	// Classification by mean SOO (§8.5).
	seeds := make([]uint64, *classSeeds)
	for j := range seeds {
		seeds[j] = 100_000 + uint64(j)*7919
	}
	rep.ClassMean = make([]float64, len(classN))
	var curves []plots.Curve
	for i := 0; i < n; i++ {
		fmt.Fprintf(stderr, "\rclassification: pair %d/%d", i+1, n)
		acc, err := measure.Classify(models["honest"][i], models["deceptive"][i], seeds, classN, *epLen)
		if err != nil {
			return err
		}
		rep.ClassAccuracy = append(rep.ClassAccuracy, acc)
		c := plots.Curve{Name: fmt.Sprintf("pair %d", i+1)}
		for k, a := range acc {
			rep.ClassMean[k] += a / float64(n)
			c.X, c.Y = append(c.X, float64(classN[k])), append(c.Y, a)
		}
		curves = append(curves, c)
	}
	fmt.Fprintln(stderr)
	mc := plots.Curve{Name: "mean"}
	for k, a := range rep.ClassMean {
		mc.X, mc.Y = append(mc.X, float64(classN[k])), append(mc.Y, a)
	}
	curves = append(curves, mc)
	if err := plots.Lines(curves, fmt.Sprintf("honest vs deceptive by mean SOO (%d seeds per point)", *classSeeds), "episodes per seed", "accuracy", filepath.Join(*out, "classification.png")); err != nil {
		return err
	}
	data, err := json.MarshalIndent(&rep, "", "  ")
	if err != nil {
		return fmt.Errorf("rl eval: encode report: %w", err)
	}
	if err := maddpg.WriteFileAtomic(filepath.Join(*out, "eval.json"), data); err != nil {
		return err
	}
	printReport(stdout, &rep)
	return nil
}

func pm(v [2]float64, prec int) string {
	if math.IsNaN(v[0]) {
		return "n/a"
	}
	return fmt.Sprintf("%.*f ± %.*f", prec, v[0], prec, v[1])
}

// printReport writes the report as Markdown tables.
func printReport(w io.Writer, r *EvalReport) {
	fmt.Fprintf(w, "\n%d seed pairs, %d evaluation episodes × %d steps per model (deterministic policies); mean ± SD over seeds\n\n", r.Seeds, r.Episodes, r.EpisodeLen)
	fmt.Fprintln(w, "| agent | blue return | red return | red trapped (episodes) | blue reaches goal | deceptive-step records (red in sight) | mean SOO value |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, k := range r.Kinds {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", k, pm(r.BlueReturn[k], 1), pm(r.RedReturn[k], 1), pm(r.TrapRate[k], 3),
			pm(r.BlueGoalRate[k], 3), pm(r.SurfaceCount[k], 0), pm(r.MeanSOO[k], 2))
	}
	fmt.Fprintln(w, "\n| behavioural difference (MSE of 100×100 count surfaces) | mean ± SD |")
	fmt.Fprintln(w, "|---|---|")
	for _, k := range []string{"soo-honest", "soo-deceptive", "honest-deceptive"} {
		if v, ok := r.BehaviourDiff[k]; ok {
			fmt.Fprintf(w, "| %s | %s |\n", strings.Replace(k, "-", " vs ", 1), pm(v, 1))
		}
	}
	fmt.Fprintf(w, "\n| episodes per seed | classification accuracy (mean over %d pairs, %d seeds each) |\n|---|---|\n", r.Seeds, r.ClassSeeds)
	for k, nEp := range r.ClassEpisodes {
		fmt.Fprintf(w, "| %d | %.2f |\n", nEp, r.ClassMean[k])
	}
}
