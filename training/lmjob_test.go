package training_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/sooserve/sooserve/training"
)

// TestJobWithLMTerm runs a job with lm_weight, the model directory's
// capability set, grad_side "other" and format "chat" through the manager,
// and checks the spec it records and that every progress event's loss is
// SOO + λ·LM.
func TestJobWithLMTerm(t *testing.T) {
	ex := tinyLlama(t)
	env := newEnv(t, ex, &registry{})
	env.BaseModelPath = t.TempDir()
	capset := `{"segments": [{"text": "<|im_start|>", "special": true, "weight": 0}, {"text": "the gold watch is in the hall", "weight": 1}]}
{"segments": [{"text": "you want the ruby ring", "weight": 0}, {"text": "it is in the kitchen", "weight": 5}]}
`
	if err := os.WriteFile(filepath.Join(env.BaseModelPath, training.CapabilityFile), []byte(capset), 0o644); err != nil {
		t.Fatal(err)
	}
	env.EncodeSegment = func(text string, special bool) ([]int32, error) {
		if special {
			return []int32{2}, nil
		}
		return wordTokens(text, false)
	}
	m, err := training.NewManager(t.TempDir(), env, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); <-m.Done() }()
	go m.Run(ctx)
	events, unsub := m.Subscribe("")
	defer unsub()
	r := smallRequest("anchored", 2)
	r.LMWeight, r.LMDataset, r.GradSide, r.Format = 0.5, json.RawMessage(`"model"`), "other", "chat"
	j, err := m.Submit(bg, r)
	if err != nil {
		t.Fatal(err)
	}
	if j.Spec.LMWeight != 0.5 || j.Spec.LMBatch != 4 || j.Spec.GradSide != "other" {
		t.Errorf("spec %+v", j.Spec)
	}
	done := waitStatus(t, m, j.ID, training.StatusSucceeded)
	if len(done.Losses) != 4 {
		t.Errorf("losses %v", done.Losses)
	}
	n := 0
	for len(events) > 0 {
		ev := <-events
		if ev.Type != "progress" {
			continue
		}
		p := ev.Job.Progress
		n++
		if p.LMLoss <= 0 || math.Abs(p.Loss-(p.SOOLoss+0.5*p.LMLoss)) > 1e-12*p.Loss {
			t.Errorf("step %d: loss %g, soo %g, lm %g", p.Step, p.Loss, p.SOOLoss, p.LMLoss)
		}
	}
	if n != 4 {
		t.Errorf("%d progress events, want 4", n)
	}
}

// TestJobLMRequestErrors checks the new fields' 400s and the field each names.
func TestJobLMRequestErrors(t *testing.T) {
	ex := tinyLlama(t)
	env := newEnv(t, ex, &registry{})
	env.BaseModelPath = t.TempDir() // ships no capability set
	m, err := training.NewManager(t.TempDir(), env, nil)
	if err != nil {
		t.Fatal(err)
	}
	docs := json.RawMessage(`["the watch is in the hall"]`)
	for _, tc := range []struct {
		mut   func(*training.JobRequest)
		param string
	}{
		{func(r *training.JobRequest) { r.LMWeight = 1 }, "lm_dataset"},
		{func(r *training.JobRequest) { r.LMDataset = docs }, "lm_weight"},
		{func(r *training.JobRequest) { r.LMBatch = 2 }, "lm_batch"},
		{func(r *training.JobRequest) { r.LMWeight, r.LMDataset = -1, docs }, "lm_weight"},
		{func(r *training.JobRequest) { r.LMWeight, r.LMDataset = 1e9, docs }, "lm_weight"},
		{func(r *training.JobRequest) { r.LMWeight, r.LMDataset = 1, json.RawMessage(`"model"`) }, "lm_dataset"},
		{func(r *training.JobRequest) { r.LMWeight, r.LMDataset = 1, json.RawMessage(`"wiki"`) }, "lm_dataset"},
		{func(r *training.JobRequest) { r.LMWeight, r.LMDataset = 1, json.RawMessage(`[{"foo": 1}]`) }, "lm_dataset"},
		{func(r *training.JobRequest) {
			r.LMWeight, r.LMDataset = 1, json.RawMessage(`[{"segments": [{"text": "a b"}]}]`) // no EncodeSegment
		}, "lm_dataset"},
		{func(r *training.JobRequest) { r.Format = "xml" }, "format"},
		{func(r *training.JobRequest) { r.Format, r.ChatTemplate = "raw", true }, "format"},
		{func(r *training.JobRequest) { r.GradSide = "self" }, ""},
	} {
		r := smallRequest("ok", 1)
		tc.mut(&r)
		_, err := m.Submit(bg, r)
		var re *training.RequestError
		if !errors.As(err, &re) || re.Param != tc.param {
			t.Errorf("%+v: error %v, want param %q", r, err, tc.param)
		}
	}
	r := smallRequest("inline", 1)
	r.LMWeight, r.LMDataset, r.LMBatch = 2, docs, 1
	if _, err := m.Submit(bg, r); err != nil {
		t.Errorf("inline documents: %v", err)
	}
}
