package main

import (
	"context"
	"io"

	"github.com/sooserve/sooserve/rl/cli"
)

// runRL runs `soo rl train|soo-finetune|eval` (the RL experiment of PAPER.md §8).
func runRL(args []string, stdout, stderr io.Writer) error {
	return cli.Main(context.Background(), args, stdout, stderr)
}
