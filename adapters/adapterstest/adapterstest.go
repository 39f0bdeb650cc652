// Package adapterstest helps tests of adapters and of the server: random
// PEFT adapters for a base model, and a throwaway redis-server.
package adapterstest

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"mime/multipart"
	"testing"
	"time"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
)

// Random returns the PEFT files of a random adapter for base: rank r on
// modules in every layer, weights drawn from seed with standard deviation
// std (large enough to change greedy outputs when std is about 0.5).
func Random(base *model.Config, r int, modules []string, seed uint64, std float64) adapters.Files {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	a := &lora.Adapter{Rank: r, Alpha: float64(r), Layers: make([][model.NumModules]*lora.Pair, base.Layers)}
	for _, name := range modules {
		m, ok := model.ParseModule(name)
		if !ok {
			panic("adapterstest: unknown module " + name)
		}
		a.Modules = append(a.Modules, m)
		out, in := base.Shape(m)
		for l := range a.Layers {
			p := &lora.Pair{R: r, In: in, Out: out, Scale: 1, A: make([]float32, r*in), B: make([]float32, out*r)}
			for i := range p.A {
				p.A[i] = float32(rng.NormFloat64() * std)
			}
			for i := range p.B {
				p.B[i] = float32(rng.NormFloat64() * std)
			}
			a.Layers[l][m] = p
		}
	}
	var w bytes.Buffer
	if err := safetensors.Write(&w, adapters.Tensors(a), map[string]string{"format": "pt"}); err != nil {
		panic(err)
	}
	cfg := adapters.NewConfig(a, 0, "test")
	cj, err := json.Marshal(map[string]any{"peft_type": "LORA", "r": cfg.R, "lora_alpha": cfg.LoRAAlpha,
		"target_modules": cfg.TargetModules, "bias": "none", "task_type": "CAUSAL_LM", "use_rslora": false})
	if err != nil {
		panic(err)
	}
	return adapters.Files{Config: cj, Weights: w.Bytes()}
}

// Multipart returns a POST /v1/adapters body for name and f, and its
// Content-Type.
func Multipart(name string, f adapters.Files) ([]byte, string) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	mw.WriteField(adapters.FieldName, name)
	w, _ := mw.CreateFormFile(adapters.ConfigFile, adapters.ConfigFile)
	w.Write(f.Config)
	w, _ = mw.CreateFormFile(adapters.WeightsFile, adapters.WeightsFile)
	w.Write(f.Weights)
	mw.Close()
	return b.Bytes(), mw.FormDataContentType()
}

// StartRedis starts a private redis-server on a free loopback port in a
// temporary directory, stops it when the test ends, and returns its URL.
// The test is skipped, loudly, only when redis-server is not installed.
func StartRedis(t testing.TB) string {
	t.Helper()
	return StartRedisServer(t).URL
}

// Eventually polls cond every 10 ms until it holds or d passes.
func Eventually(ctx context.Context, d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
