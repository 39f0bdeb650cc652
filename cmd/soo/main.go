// Command soo is the SOO Serve command-line tool.
//
// Usage:
//
//	soo bench [flags]   benchmark the native executor (see soo bench -h)
//	soo overlap [flags] latent self/other overlap by layer (see soo overlap -h)
//	soo train [flags]   SOO fine-tuning of a LoRA adapter (see soo train -h)
package main

import (
	"fmt"
	"io"
	"os"
	"sort"
)

// command is one subcommand: run gets the arguments after its name.
type command struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

var commands = map[string]command{
	"bench":   {"benchmark decode and prefill on a synthetic or real model", runBench},
	"eval":    {"deception benchmark (PAPER §4-7) against any OpenAI-compatible endpoint", runEval},
	"load":    {"load test: concurrent streaming clients against a local server (tokens/s, TTFT, inter-token latency)", runLoad},
	"overlap": {"latent self/other overlap (PAPER §7 probe) by layer, for a model and its adapters", runOverlap},
	"probe":   {"decision-site analysis: per layer and site, a conflict-vs-self probe and its alignment with the SOO pairs", runProbe},
	"rl":      {"RL experiment (PAPER §8): train, soo-finetune, eval MADDPG agents", runRL},
	"train":   {"SOO fine-tuning: train a LoRA adapter on self/other pairs (PAPER §1-3)", runTrain},
	"testbed": {"testbed build: train the deceptive testbed model from scratch on the synthetic world (issue 17)", runTestbed},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches to a subcommand and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "soo: unknown command %q\n", args[0])
		usage(stderr)
		return 2
	}
	if err := c.run(args[1:], stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "soo %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: soo <command> [flags]\n\ncommands:\n")
	var names []string
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, commands[n].summary)
	}
}
