package plots

import (
	"fmt"
	"os"

	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/vgimg"
)

func newCanvas(w, h vg.Length) *vgimg.Canvas { return vgimg.New(w, h) }

func writePNG(c *vgimg.Canvas, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plots: create %s: %w", path, err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: c}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("plots: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("plots: close %s: %w", path, err)
	}
	return nil
}
