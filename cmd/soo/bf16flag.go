package main

import (
	"flag"
	"fmt"
)

// bf16InputsFlag registers --bf16-inputs on fs and returns a function that
// reports, once fs is parsed, whether products with bf16 weights read their
// inputs unrounded (cpu.Options.ExactBF16Inputs), or an error for a value
// other than rounded or exact.
func bf16InputsFlag(fs *flag.FlagSet) func() (exact bool, err error) {
	v := fs.String("bf16-inputs", "rounded", "rounded: products with bf16 weights read their inputs rounded to bf16 (as llama.cpp's; AVX512_BF16 kernels where the CPU has them); exact: unrounded float32 inputs")
	return func() (bool, error) {
		switch *v {
		case "rounded":
			return false, nil
		case "exact":
			return true, nil
		}
		return false, fmt.Errorf("--bf16-inputs %q: want rounded or exact", *v)
	}
}
