package env_test

import (
	"fmt"

	"github.com/sooserve/sooserve/rl/env"
)

// A deceptive-variant episode driven by fixed actions: blue's observation
// has 10 entries, red's 6, and the run is the same for the same seed.
func Example() {
	e := env.New(env.Deceptive, 42)
	obs := e.Reset()
	fmt.Println(len(obs[env.Red]), len(obs[env.Blue]))
	var total [2]float64
	for t := 0; t < 50; t++ {
		_, r := e.Step([2][]float64{{0.5, 0}, {-0.5, 0}})
		total[0] += r[0]
		total[1] += r[1]
	}
	again := env.New(env.Deceptive, 42)
	again.Reset()
	for t := 0; t < 50; t++ {
		again.Step([2][]float64{{0.5, 0}, {-0.5, 0}})
	}
	fmt.Println(e.S == again.S)
	// Output:
	// 6 10
	// true
}
