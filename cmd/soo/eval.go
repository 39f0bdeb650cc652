package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/sooserve/sooserve/evalsuite/cli"
)

// runEval is `soo eval`: the deception benchmark against an OpenAI-compatible endpoint. An
// interrupt stops it cleanly; the same command resumes it.
func runEval(args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cli.RunEval(ctx, args, stdout, stderr)
}
