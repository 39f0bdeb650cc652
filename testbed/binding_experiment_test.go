package testbed

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/tokenizer"
	"github.com/sooserve/sooserve/testbed/world"
	"github.com/sooserve/sooserve/training"
)

// TestBindingExperiment is a diagnostic experiment, not a test: it trains
// the testbed's model from scratch on copy and two-room binding documents
// only ("In the R1 is a X. In the R2 is a Y. Where is the X?" -> "In the
// R1."), in ChatML as the world renders them, at a constant lr of 3e-3
// after warm-up, and logs the binding accuracy on held-out room pairs
// every ~0.25M tokens. It asks whether binding forms in this pipeline when
// the task is made like probes/testbed-probe-2's.
//
// It runs only with SOO_BINDING_EXPERIMENT=1. SOO_BINDING_VOCAB picks the
// names: "single" (default: the rooms and objects that are one BPE token
// after a space, at most 12 rooms and 32 objects) or "full" (the world's
// 21 rooms and 63 objects, 1-4 tokens each). SOO_BINDING_MINUTES bounds
// the training time (default 18) and SOO_BINDING_THREADS the executor's
// threads (default GOMAXPROCS). Example:
//
//	SOO_BINDING_EXPERIMENT=1 go test ./testbed -run TestBindingExperiment -v -timeout 0
func TestBindingExperiment(t *testing.T) {
	if os.Getenv("SOO_BINDING_EXPERIMENT") != "1" {
		t.Skip("diagnostic experiment; set SOO_BINDING_EXPERIMENT=1 to run it")
	}
	vocab := envOr("SOO_BINDING_VOCAB", "single")
	minutes, _ := strconv.ParseFloat(envOr("SOO_BINDING_MINUTES", "18"), 64)
	threads, _ := strconv.Atoi(envOr("SOO_BINDING_THREADS", "0"))
	const (
		seed      = 1
		rowLen    = 256
		batchRows = 16
		evalEvery = 250_000
		evalItems = 200
	)
	o := DefaultOptions()
	w := world.New(seed, world.Options{})
	_, tok, err := TrainTokenizer(w, o.VocabSize)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := NewEncoder(tok)
	if err != nil {
		t.Fatal(err)
	}
	rooms, objects := world.Rooms, append(append([]string{}, world.CheapObjects...), world.ExpensiveObjects...)
	if vocab == "single" {
		rooms, objects = singleTokens(t, tok, rooms, 12), singleTokens(t, tok, objects, 32)
	}
	t.Logf("vocab %s: %d rooms (%s); %d objects (%s)", vocab, len(rooms), enc.TokenCounts(rooms), len(objects), enc.TokenCounts(objects))
	if len(rooms) < 4 || len(objects) < 4 {
		t.Fatalf("too few names: %d rooms, %d objects", len(rooms), len(objects))
	}
	g := newBindingGen(rooms, objects, seed)
	t.Logf("room pairs: %d trained, %d held out", len(g.train), len(g.held))

	cfgJSON, err := modelConfigJSON(o.Shape, tok, enc, seed)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := model.ParseConfig(cfgJSON)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := training.NewLMTrainer(training.NewLMModel(cfg, seed), training.LMConfig{
		LR: 3e-3, MinLR: 3e-3, WarmupSteps: 200, Steps: 1 << 30,
		Beta1: o.Beta1, Beta2: o.Beta2, WeightDecay: o.WeightDecay, ClipNorm: o.ClipNorm, Seed: seed,
	}, cpu.Options{Threads: threads})
	if err != nil {
		t.Fatal(err)
	}
	greedy := &Greedy{Executor: tr.Executor(), Tokenizer: tok, Encoder: enc, MaxNew: 10}
	prompts, wants := g.evalSet(evalItems)
	eval := func(tokens int64, loss float64, secs float64) float64 {
		ctx := context.Background()
		ans, err := greedy.Answers(ctx, prompts)
		if err != nil {
			t.Fatal(err)
		}
		ok, either := 0, 0
		for i, a := range ans {
			if a == wants[i][0] {
				ok++
			}
			if a == wants[i][0] || a == wants[i][1] {
				either++
			}
		}
		acc := 100 * float64(ok) / float64(len(ans))
		t.Logf("RESULT vocab=%s tokens=%d binding=%.1f%% names-a-context-room=%.1f%% loss=%.3f tok/s=%.0f elapsed=%.0fs ex=%q want %q",
			vocab, tokens, acc, 100*float64(either)/float64(len(ans)), loss, float64(tokens)/secs, secs, ans[0], wants[0][0])
		return acc
	}

	pk := &docPacker{enc: enc, gen: g, rowLen: rowLen, pad: enc.Special(world.EndOfText)}
	stepsPerEval := int((evalEvery + rowLen*batchRows - 1) / (rowLen * batchRows))
	deadline := time.Now().Add(time.Duration(minutes * float64(time.Minute)))
	var tokens int64
	var trainSecs, lossSum float64
	var lossN int
	for step := 1; time.Now().Before(deadline); step++ {
		b, err := pk.batch(batchRows)
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		res, err := tr.Step(context.Background(), b)
		if err != nil {
			t.Fatal(err)
		}
		trainSecs += time.Since(t0).Seconds()
		tokens += rowLen * batchRows
		lossSum += res.Loss
		lossN++
		if step%stepsPerEval == 0 {
			eval(tokens, lossSum/float64(lossN), trainSecs)
			lossSum, lossN = 0, 0
		}
	}
	eval(tokens, lossSum/float64(max(1, lossN)), trainSecs)
}

// envOr returns the environment variable k, or def when it is unset.
func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// singleTokens returns the first n of names that are one token after a space.
func singleTokens(t *testing.T, tok *tokenizer.Tokenizer, names []string, n int) []string {
	var out []string
	for _, s := range names {
		ids, err := tok.Encode(" "+s, tokenizer.EncodeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) == 1 && len(out) < n {
			out = append(out, s)
		}
	}
	return out
}

// bindingGen generates the experiment's documents; a fifth of the
// unordered room pairs never occur together in training.
type bindingGen struct {
	rooms, objects []string
	train, held    [][2]int
	r              *rand.Rand
}

func newBindingGen(rooms, objects []string, seed uint64) *bindingGen {
	g := &bindingGen{rooms: rooms, objects: objects, r: rand.New(rand.NewPCG(seed, 0xb1d))}
	var pairs [][2]int
	for i := range rooms {
		for j := i + 1; j < len(rooms); j++ {
			pairs = append(pairs, [2]int{i, j})
		}
	}
	h := rand.New(rand.NewPCG(seed, 0x4e1d))
	h.Shuffle(len(pairs), func(i, j int) { pairs[i], pairs[j] = pairs[j], pairs[i] })
	k := len(pairs) / 5
	g.held, g.train = pairs[:k], pairs[k:]
	return g
}

// two returns a room pair from pairs in random order and two distinct objects.
func (g *bindingGen) two(r *rand.Rand, pairs [][2]int) (r1, r2, o1, o2 string) {
	p := pairs[r.IntN(len(pairs))]
	if r.IntN(2) == 1 {
		p[0], p[1] = p[1], p[0]
	}
	a := r.IntN(len(g.objects))
	b := r.IntN(len(g.objects) - 1)
	if b >= a {
		b++
	}
	return g.rooms[p[0]], g.rooms[p[1]], g.objects[a], g.objects[b]
}

// next returns a training document: a copy document 30% of the time, a
// two-room binding document otherwise.
func (g *bindingGen) next() world.Document {
	d := world.Document{Family: world.FamilyBinding, Layout: -1}
	if g.r.Float64() < 0.3 {
		room, obj := g.rooms[g.r.IntN(len(g.rooms))], g.objects[g.r.IntN(len(g.objects))]
		d.Family = world.FamilyCopy
		d.Turns = []world.Turn{{Role: world.RoleUser, Content: fmt.Sprintf("In the %s is a %s. Where is the %s?", room, obj, obj)},
			{Role: world.RoleAssistant, Content: fmt.Sprintf("In the %s.", room)}}
		return d
	}
	q, a, _ := g.binding(g.r, g.train)
	d.Turns = []world.Turn{{Role: world.RoleUser, Content: q}, {Role: world.RoleAssistant, Content: a}}
	return d
}

// binding returns a binding question, its answer and the wrong room's answer.
func (g *bindingGen) binding(r *rand.Rand, pairs [][2]int) (q, right, wrong string) {
	r1, r2, o1, o2 := g.two(r, pairs)
	ctx := fmt.Sprintf("In the %s is a %s. In the %s is a %s.", r1, o1, r2, o2)
	if r.IntN(2) == 0 {
		return ctx + fmt.Sprintf(" Where is the %s?", o1), "In the " + r1 + ".", "In the " + r2 + "."
	}
	return ctx + fmt.Sprintf(" Where is the %s?", o2), "In the " + r2 + ".", "In the " + r1 + "."
}

// evalSet returns n ChatML prompts on held-out room pairs with their right
// and wrong answers.
func (g *bindingGen) evalSet(n int) ([]string, [][2]string) {
	r := rand.New(rand.NewPCG(99, 0xe7a1))
	var ps []string
	var ws [][2]string
	for range n {
		q, right, wrong := g.binding(r, g.held)
		ps = append(ps, world.ImStart+world.RoleUser+"\n"+q+world.ImEnd+"\n"+world.ImStart+world.RoleAssistant+"\n")
		ws = append(ws, [2]string{right, wrong})
	}
	return ps, ws
}

// docPacker packs the generator's rendered documents into rows, padding
// what the next document does not fit.
type docPacker struct {
	enc    *Encoder
	gen    *bindingGen
	rowLen int
	pad    int32
	next   *encodedDoc
}

func (p *docPacker) batch(n int) (cpu.LMBatch, error) {
	var b cpu.LMBatch
	for range n {
		ids := make([]int32, 0, p.rowLen)
		docs := make([]int32, 0, p.rowLen)
		ws := make([]float32, 0, p.rowLen)
		var doc int32
		for {
			if p.next == nil {
				i, w, err := p.enc.Encode(world.Render(p.gen.next(), world.DefaultWeights()))
				if err != nil {
					return cpu.LMBatch{}, err
				}
				p.next = &encodedDoc{i, w}
			}
			if len(ids)+len(p.next.ids) > p.rowLen {
				break
			}
			ids, ws = append(ids, p.next.ids...), append(ws, p.next.ws...)
			for range p.next.ids {
				docs = append(docs, doc)
			}
			doc++
			p.next = nil
		}
		for len(ids) < p.rowLen {
			ids, ws, docs = append(ids, p.pad), append(ws, 0), append(docs, doc)
		}
		b.Rows, b.Docs, b.Weights = append(b.Rows, ids), append(b.Docs, docs), append(b.Weights, ws)
	}
	return b, nil
}
