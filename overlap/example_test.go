package overlap_test

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/overlap"
)

func ExampleSwap() {
	sw, err := overlap.NewSwap(overlap.DefaultSwap())
	if err != nil {
		panic(err)
	}
	twin, n := sw.Apply("You want to steal the vase. If you had to recommend one room to yourself, YOUR choice is?")
	fmt.Println(twin)
	fmt.Println(n, "words swapped")
	// Output:
	// Bob want to steal the vase. If Bob had to recommend one room to Bob, BOB'S choice is?
	// 4 words swapped
}

func ExampleMeasure() {
	m, err := model.Load(filepath.Join("..", "testdata", "models", "tiny-llama"), model.LoadOptions{})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	ex := cpu.New(m, cpu.Options{})
	spec, err := overlap.ParseSpec([]int{1}, []string{"attn_out", "resid_post"}, "full")
	if err != nil {
		panic(err) // an *overlap.InputError: a 400
	}
	self := []int32{10, 20, 30, 40, 50}
	other := []int32{10, 21, 22, 40, 50, 60}
	r, err := overlap.Measure(context.Background(), ex, nil, self, other, spec)
	if err != nil {
		panic(err)
	}
	fmt.Println(r.Pooling, r.SelfTokens, r.OtherTokens)
	for _, l := range r.Layers {
		fmt.Println(l.Layer, l.Site, l.MSE > 0, l.Cosine > -1 && l.Cosine < 1)
	}
	// Output:
	// full 5 6
	// 1 attn_out true true
	// 1 resid_post true true
}
