package synth

import (
	"context"
	"math"
	"slices"
	"testing"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
)

func TestSmolLM2Config(t *testing.T) {
	cfg, err := Config("smollm2-135m")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Hidden != 576 || cfg.Intermediate != 1536 || cfg.Layers != 30 || cfg.Heads != 9 || cfg.KVHeads != 3 ||
		cfg.VocabSize != 49152 || !cfg.TieEmbeddings || cfg.RopeTheta != 100000 || cfg.MaxPositions != 8192 || cfg.HeadDim != 64 {
		t.Fatalf("config = %+v", cfg)
	}
	if _, err := Config("nope"); err == nil {
		t.Fatal("unknown shape accepted")
	}
}

func TestTinyModelRuns(t *testing.T) {
	for _, dt := range []model.DType{model.F32, model.BF16, model.F16} {
		m, err := Model("tiny", dt, 7)
		if err != nil {
			t.Fatal(err)
		}
		m2, _ := Model("tiny", dt, 7)
		if m.Layers[1].Proj[model.Down].W.Bytes() == 0 || m.LMHead != &m.Embed {
			t.Fatal("weights not bound")
		}
		w1, w2 := m.Layers[1].Proj[model.Q].W, m2.Layers[1].Proj[model.Q].W
		if !slices.Equal(w1.F32, w2.F32) || !slices.Equal(w1.U16, w2.U16) {
			t.Fatal("same seed gave different weights")
		}
		var sum, sq float64
		row := make([]float32, w1.Cols)
		for r := 0; r < w1.Rows; r++ {
			w1.RowF32(r, row)
			for _, v := range row {
				sum += float64(v)
				sq += float64(v) * float64(v)
			}
		}
		n := float64(w1.Rows * w1.Cols)
		if std := math.Sqrt(sq/n - (sum/n)*(sum/n)); math.Abs(std-Std) > 0.002 {
			t.Fatalf("std = %g", std)
		}
		ex := cpu.New(m, cpu.Options{})
		out, err := ex.Forward(context.Background(), []engine.Row{{Seq: ex.NewSequence(), Tokens: []int32{1, 2, 3}}})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range out[0].Logits.Data {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatal("non-finite logits")
			}
		}
	}
}

func TestWriteDirLoads(t *testing.T) {
	dir := t.TempDir()
	if err := WriteDir(dir, "tiny", model.BF16, 3, 0); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	want, _ := Model("tiny", model.BF16, 3)
	if m.Config.Hidden != 64 || m.Layers[1].Proj[model.Up].W.DType != model.BF16 ||
		m.Layers[1].Proj[model.Up].W.U16[7] != want.Layers[1].Proj[model.Up].W.U16[7] {
		t.Error("written model differs from the synthetic one")
	}
}
