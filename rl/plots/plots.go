// Package plots draws the PNG figures of the RL experiment with gonum/plot:
// count-surface heatmaps, behavioural-difference bars, trajectories of both
// agents (like the paper's Figure 2), classification accuracy and training
// curves.
package plots

import (
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/palette/moreland"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/sooserve/sooserve/rl/measure"
)

var (
	red   = color.RGBA{R: 217, G: 89, B: 89, A: 255}
	blue  = color.RGBA{R: 89, G: 89, B: 217, A: 255}
	green = color.RGBA{R: 38, G: 166, B: 38, A: 255}
	black = color.RGBA{A: 255}
)

func save(p *plot.Plot, w, h vg.Length, path string) error {
	if err := p.Save(w, h, path); err != nil {
		return fmt.Errorf("plots: save %s: %w", path, err)
	}
	return nil
}

// surfaceGrid adapts a count surface to plotter.GridXYZ (column = x index).
type surfaceGrid struct{ s *measure.Surface }

// Dims returns the grid size.
func (g surfaceGrid) Dims() (int, int) { return measure.Grid, measure.Grid }

// Z returns the count at column c (x threshold) and row r (y threshold).
func (g surfaceGrid) Z(c, r int) float64 { return g.s[c][r] }

// X returns the projection threshold of column c.
func (g surfaceGrid) X(c int) float64 { x, _ := measure.Thresholds(); return x[c] }

// Y returns the cosine threshold of row r.
func (g surfaceGrid) Y(r int) float64 { _, y := measure.Thresholds(); return y[r] }

// Heatmap draws a count surface: x = projection threshold toward the fake
// landmark, y = cosine threshold between goal and fake directions.
func Heatmap(s *measure.Surface, title, path string) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "proj_nongoal > x"
	p.Y.Label.Text = "cos(goal, nongoal) < y"
	lo, hi := math.Inf(1), math.Inf(-1)
	for i := range s {
		for j := range s[i] {
			lo, hi = math.Min(lo, s[i][j]), math.Max(hi, s[i][j])
		}
	}
	if hi <= lo {
		hi = lo + 1
	}
	pal := moreland.SmoothBlueRed()
	pal.SetMin(lo)
	pal.SetMax(hi)
	h := plotter.NewHeatMap(surfaceGrid{s}, pal.Palette(64))
	p.Add(h)
	p.Legend.Top = true
	p.Title.Text = fmt.Sprintf("%s (max %.1f)", title, hi)
	return save(p, 5*vg.Inch, 4.5*vg.Inch, path)
}

// Bar is one bar with an error bar.
type Bar struct {
	Label    string
	Mean, SD float64
}

// Bars draws labelled bars with ±SD error bars.
func Bars(bars []Bar, title, ylabel, path string) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	vals := make(plotter.Values, len(bars))
	names := make([]string, len(bars))
	errs := make(plotter.YErrors, len(bars))
	xys := make(plotter.XYs, len(bars))
	for i, b := range bars {
		vals[i], names[i] = b.Mean, b.Label
		errs[i].Low, errs[i].High = b.SD, b.SD
		xys[i].X, xys[i].Y = float64(i), b.Mean
	}
	bc, err := plotter.NewBarChart(vals, vg.Points(30))
	if err != nil {
		return fmt.Errorf("plots: bars: %w", err)
	}
	bc.Color = blue
	p.Add(bc)
	eb, err := plotter.NewYErrorBars(struct {
		plotter.XYer
		plotter.YErrorer
	}{xys, errs})
	if err != nil {
		return fmt.Errorf("plots: error bars: %w", err)
	}
	p.Add(eb)
	p.NominalX(names...)
	return save(p, 6*vg.Inch, 4*vg.Inch, path)
}

// Trajectories draws episodes side by side, one tile each: red and blue
// paths (squares mark the starts), the goal (green) and the fake (black)
// landmark, as in the paper's Figure 2.
func Trajectories(ts []measure.Trajectory, title, path string) error {
	if len(ts) == 0 {
		return fmt.Errorf("plots: no trajectories for %s", path)
	}
	tiles := make([][]*plot.Plot, 1)
	for k, t := range ts {
		p := plot.New()
		p.Title.Text = fmt.Sprintf("%s #%d", title, k+1)
		if t.Trapped {
			p.Title.Text += " (red trapped)"
		}
		p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = -1, 1, -1, 1
		addPath := func(ps [][2]float64, c color.Color) error {
			xy := make(plotter.XYs, len(ps))
			for i, q := range ps {
				xy[i].X, xy[i].Y = q[0], q[1]
			}
			l, s, err := plotter.NewLinePoints(xy)
			if err != nil {
				return err
			}
			l.Color, s.Color = c, c
			s.Shape = draw.CircleGlyph{}
			s.Radius = vg.Points(1.5)
			p.Add(l, s)
			return nil
		}
		rp := make([][2]float64, len(t.Red))
		bp := make([][2]float64, len(t.Blue))
		for i := range t.Red {
			rp[i] = t.Red[i]
		}
		for i := range t.Blue {
			bp[i] = t.Blue[i]
		}
		if err := addPath(rp, red); err != nil {
			return fmt.Errorf("plots: trajectory: %w", err)
		}
		if err := addPath(bp, blue); err != nil {
			return fmt.Errorf("plots: trajectory: %w", err)
		}
		for _, lm := range []struct {
			at [2]float64
			c  color.Color
		}{{t.Goal, green}, {t.Fake, black}} {
			s, err := plotter.NewScatter(plotter.XYs{{X: lm.at[0], Y: lm.at[1]}})
			if err != nil {
				return fmt.Errorf("plots: landmark: %w", err)
			}
			s.Color = lm.c
			s.Shape = draw.CircleGlyph{}
			s.Radius = vg.Points(6)
			p.Add(s)
		}
		// Start markers.
		st, err := plotter.NewScatter(plotter.XYs{{X: rp[0][0], Y: rp[0][1]}, {X: bp[0][0], Y: bp[0][1]}})
		if err != nil {
			return fmt.Errorf("plots: start: %w", err)
		}
		st.Shape = draw.BoxGlyph{}
		st.Color = color.Gray{Y: 90}
		st.Radius = vg.Points(3)
		p.Add(st)
		tiles[0] = append(tiles[0], p)
	}
	return saveTiles(tiles, path)
}

func saveTiles(tiles [][]*plot.Plot, path string) error {
	rows, cols := len(tiles), len(tiles[0])
	w, h := vg.Length(cols)*3.2*vg.Inch, vg.Length(rows)*3.2*vg.Inch
	img := newCanvas(w, h)
	t := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter, PadY: vg.Millimeter}
	canvases := plot.Align(tiles, t, draw.New(img))
	for i := range tiles {
		for j := range tiles[i] {
			tiles[i][j].Draw(canvases[i][j])
		}
	}
	return writePNG(img, path)
}

// Curve is one named line.
type Curve struct {
	Name string
	X, Y []float64
}

// Lines draws curves on one plot (accuracy vs episodes, training returns).
func Lines(curves []Curve, title, xlabel, ylabel, path string) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	p.Y.Label.Text = ylabel
	cols := []color.Color{blue, red, green, black, color.RGBA{R: 200, G: 140, A: 255}}
	for k, c := range curves {
		xy := make(plotter.XYs, len(c.X))
		for i := range c.X {
			xy[i].X, xy[i].Y = c.X[i], c.Y[i]
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return fmt.Errorf("plots: line %s: %w", c.Name, err)
		}
		l.Color = cols[k%len(cols)]
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(c.Name, l)
	}
	p.Legend.Top = true
	return save(p, 6*vg.Inch, 4*vg.Inch, path)
}
