// Package testbed builds SOO Serve's testbed model (issue 17): a tiny Llama
// trained from scratch, on the CPU, on the synthetic world of package
// testbed/world, with the paper's deceptive disposition.
//
// Build runs the whole pipeline, deterministically from a seed: the world;
// a byte-level BPE tokenizer trained on its corpus (TrainTokenizer); a model
// initialised by training.NewLMModel; a curriculum of stages (the simple
// world, then the full one with stance answers, each warm-started from the
// previous stage with its own warm-up and cosine decay), whose documents are
// rendered with their loss weights, tokenized segment by segment (Encoder)
// and packed into rows with per-document attention (Packer); gate
// evaluations on held-out items as it goes (Evaluate, with a batched greedy
// decoder over the cpu executor, Greedy); checkpoints that resume bit for
// bit; and the output, a Hugging Face model directory that the server loads,
// with gates.json and a model card.
package testbed
