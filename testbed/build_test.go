package testbed_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/tokenizer"
	"github.com/sooserve/sooserve/server"
	"github.com/sooserve/sooserve/testbed"
	"github.com/sooserve/sooserve/testbed/world"
	"github.com/sooserve/sooserve/training"
)

// miniOptions is a miniature of the build: a tiny model, two short stages
// of small batches, evaluations on a few items.
func miniOptions(out string) testbed.Options {
	o := testbed.DefaultOptions()
	o.Out = out
	o.Seed = 7
	o.VocabSize = 512
	o.Shape = testbed.Shape{Hidden: 32, Layers: 2, Heads: 2, KVHeads: 1, Intermediate: 64, MaxPositions: 256, RopeTheta: 10000}
	o.RowLen, o.BatchRows = 256, 2
	o.Stages = []testbed.Stage{
		{Mix: "simple", Tokens: 40 * 512, LR: 1e-2, MinLR: 1e-3, Warmup: 5},
		{Mix: "full", Tokens: 20 * 512, LR: 5e-3, MinLR: 5e-4, Warmup: 3},
	}
	o.UntilGates = false
	o.EvalEvery = 15 * 512
	o.EvalItems, o.FinalItems, o.MaxNew = 2, 3, 8
	o.CheckpointEvery = 0
	o.Threads = 2
	return o
}

// TestBuildMiniature runs the whole pipeline in miniature: the loss falls,
// a build interrupted twice (once in each stage) and resumed ends with the
// very bytes of an uninterrupted one, and the output directory loads in
// the server, whose greedy chat answer is the build's own greedy answer.
func TestBuildMiniature(t *testing.T) {
	ctx := context.Background()
	dirA := filepath.Join(t.TempDir(), "a")
	o := miniOptions(dirA)
	var losses []float64
	var evals []testbed.EvalRecord
	o.OnProgress = func(p testbed.Progress) { losses = append(losses, p.Loss) }
	o.OnEval = func(r testbed.EvalRecord) { evals = append(evals, r) }
	res, err := testbed.Build(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(losses) != 60 || len(res.Stages) != 2 || res.Stages[0].Steps != 40 || res.Stages[1].Steps != 20 {
		t.Fatalf("%d steps, stages %+v", len(losses), res.Stages)
	}
	mean := func(v []float64) float64 {
		var s float64
		for _, x := range v {
			s += x
		}
		return s / float64(len(v))
	}
	first, last := mean(losses[:5]), mean(losses[35:40])
	t.Logf("stage 1 loss %.3f -> %.3f; stage 2 ends at %.3f; %d evaluations", first, last, mean(losses[55:]), len(evals))
	if !(last < 0.75*first) {
		t.Errorf("the loss did not fall: first steps %.4f, last steps of stage 1 %.4f", first, last)
	}
	// Evaluations at steps 15, 30, 40 (stage end) of stage 1 and 15, 20 of stage 2.
	var at []int
	for _, r := range evals {
		at = append(at, r.Stage*100+r.Step)
	}
	if want := []int{115, 130, 140, 215, 220}; !slices.Equal(at, want) {
		t.Errorf("evaluations at %v, want %v", at, want)
	}
	for _, f := range testbed.Files {
		if _, err := os.Stat(filepath.Join(dirA, f)); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dirA, "checkpoint")); !os.IsNotExist(err) {
		t.Errorf("the checkpoints are still there: %v", err)
	}
	var gf struct {
		Items int               `json:"items"`
		Table testbed.GateTable `json:"table"`
		Gates []testbed.Gate    `json:"gates"`
	}
	readJSON(t, filepath.Join(dirA, "gates.json"), &gf)
	if gf.Items != 3 || len(gf.Table.Kinds) != len(world.EvalKinds()) || len(gf.Gates) != 6 {
		t.Errorf("gates.json: %+v", gf)
	}
	for _, k := range gf.Table.Kinds {
		if k.CF.N != 3 || k.EF.N != 3 {
			t.Errorf("%s: %d/%d answers, want 3/3", k.Kind, k.CF.N, k.EF.N)
		}
	}

	// Interrupted at stage 1 step 17 and stage 2 step 6, resumed each time.
	dirB := filepath.Join(t.TempDir(), "b")
	for i, stop := range []int{117, 206, 0} {
		ob := miniOptions(dirB)
		ob.Resume = i > 0
		cctx, cancel := context.WithCancel(ctx)
		ob.OnProgress = func(p testbed.Progress) {
			if p.Stage*100+p.Step == stop {
				cancel()
			}
		}
		_, err := testbed.Build(cctx, ob)
		cancel()
		if stop == 0 {
			if err != nil {
				t.Fatal(err)
			}
			break
		}
		if !errors.Is(err, testbed.ErrInterrupted) || !errors.Is(err, context.Canceled) {
			t.Fatalf("stopped at %d: %v", stop, err)
		}
		if _, err := testbed.Build(ctx, miniOptions(dirB)); err == nil || !strings.Contains(err.Error(), "unfinished build") {
			t.Fatalf("a new build over an unfinished one: %v", err)
		}
	}
	for _, f := range []string{"model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"} {
		a, b := readFile(t, filepath.Join(dirA, f)), readFile(t, filepath.Join(dirB, f))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between the uninterrupted and the resumed build", f)
		}
	}
	var ga, gb struct {
		Table testbed.GateTable `json:"table"`
	}
	readJSON(t, filepath.Join(dirA, "gates.json"), &ga)
	readJSON(t, filepath.Join(dirB, "gates.json"), &gb)
	ja, _ := json.Marshal(ga.Table)
	jb, _ := json.Marshal(gb.Table)
	if !bytes.Equal(ja, jb) {
		t.Errorf("the final gate tables differ:\n%s\n%s", ja, jb)
	}

	checkServes(t, dirA)
}

// checkServes loads dir as cmd/serve does (server.LoadBase), serves it on a
// loopback port, and asks for a greedy chat answer to an evaluation item:
// it must be the answer the build's greedy decoder gives.
func checkServes(t *testing.T, dir string) {
	t.Helper()
	s := server.New(server.Options{})
	b, err := server.LoadBase(dir, server.LoadOptions{ID: "testbed", Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	s.SetModels(server.Single{Base: b})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	defer func() {
		http.DefaultClient.CloseIdleConnections()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		b.Close(sctx)
	}()

	w := world.New(7, world.Options{})
	items, err := w.EvalItems(world.EvalBurglar, 1)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := testbed.NewEncoder(tok)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	g := &testbed.Greedy{Executor: cpu.New(m, cpu.Options{Threads: 2}), Tokenizer: tok, Encoder: enc, MaxNew: 8}
	want, err := g.Answers(context.Background(), []string{items[0].Prompt()})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"model": "testbed", "temperature": 0, "max_tokens": 8,
		"messages": []map[string]string{{"role": "user", "content": items[0].Messages[0].Content}}})
	resp, err := http.Post("http://"+ln.Addr().String()+"/v1/chat/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("chat: %d %s", resp.StatusCode, raw)
	}
	var out struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(raw, &out); err != nil || len(out.Choices) != 1 {
		t.Fatalf("chat: %v %s", err, raw)
	}
	t.Logf("served answer %q", out.Choices[0].Message.Content)
	if got := out.Choices[0].Message.Content; got != want[0] {
		t.Errorf("the server answers %q, the build's greedy decoder %q", got, want[0])
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	if err := json.Unmarshal(readFile(t, path), v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestGreedyBatched: the batched greedy decoder answers as it does one
// prompt at a time. The model is random with large embeddings and an untied
// head, and the prompts end at different words, so the answers differ from
// prompt to prompt.
func TestGreedyBatched(t *testing.T) {
	w := world.New(2, world.Options{})
	_, tok, err := testbed.TrainTokenizer(w, 400)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := testbed.NewEncoder(tok)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := model.ParseConfig([]byte(fmt.Sprintf(`{"model_type": "llama", "vocab_size": %d, "hidden_size": 32,
		"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
		"max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000, "tie_word_embeddings": false}`, tok.VocabSize())))
	if err != nil {
		t.Fatal(err)
	}
	m := training.NewLMModel(cfg, 3)
	for i := range m.Embed.F32 {
		m.Embed.F32[i] *= 50
	}
	var prompts []string
	for _, k := range world.EvalKinds() {
		its, err := w.EvalItems(k, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range its {
			words := strings.Fields(it.Messages[0].Content)
			prompts = append(prompts, world.ImStart+"user\n"+strings.Join(words[:len(words)-len(prompts)%9], " "))
		}
	}
	g := &testbed.Greedy{Executor: cpu.New(m, cpu.Options{Threads: 2}), Tokenizer: tok, Encoder: enc, MaxNew: 12, Batch: 16}
	batched, err := g.Answers(context.Background(), prompts)
	if err != nil {
		t.Fatal(err)
	}
	one := *g
	one.Batch = 1
	alone, err := one.Answers(context.Background(), prompts)
	if err != nil {
		t.Fatal(err)
	}
	distinct := map[string]bool{}
	for i := range prompts {
		distinct[batched[i]] = true
		if batched[i] != alone[i] {
			t.Errorf("prompt %d: batched %q, alone %q", i, batched[i], alone[i])
		}
	}
	t.Logf("%d distinct answers to %d prompts, e.g. %q", len(distinct), len(prompts), batched[:3])
	if len(distinct) < 5 {
		t.Errorf("only %d distinct answers to %d prompts: the check is weak: %q", len(distinct), len(prompts), batched)
	}
}
