package server

import (
	"math"
	"net/http"
	"testing"

	"github.com/sooserve/sooserve/training"
)

// TestTrainingJobWithLMTerm posts a job with the LM anchor term (inline
// documents, plain and segmented with a special token), grad_side "other"
// and format "raw" over HTTP, follows it to success and checks that every
// progress event's loss is SOO + λ·LM.
func TestTrainingJobWithLMTerm(t *testing.T) {
	ts, _, _ := trainingServer(t)
	j := submitJob(t, ts, jobBody("anchored", 2, `,"lm_weight":0.5,"lm_batch":2,"grad_side":"other","format":"raw",
		"lm_dataset":["the gold watch is in the hall",{"segments":[{"text":"you want the ring","weight":0},{"text":" it is in the kitchen","weight":5}]}]`))
	if j.Spec.LMWeight != 0.5 || j.Spec.LMBatch != 2 || j.Spec.GradSide != "other" {
		t.Errorf("queued spec %+v", j.Spec)
	}
	evs := followJob(t, ts, j.ID)
	if last := evs[len(evs)-1]; last.Job.Status != training.StatusSucceeded {
		t.Fatalf("job ended %+v", last.Job)
	}
	n := 0
	for _, ev := range evs {
		if p := ev.Job.Progress; ev.Type == "progress" {
			n++
			if p.LMLoss <= 0 || math.Abs(p.Loss-(p.SOOLoss+0.5*p.LMLoss)) > 1e-12*p.Loss {
				t.Errorf("step %d: loss %g, soo %g, lm %g", p.Step, p.Loss, p.SOOLoss, p.LMLoss)
			}
		}
	}
	if n == 0 {
		t.Error("no progress events")
	}
}

// TestTrainingLMRequestErrors checks the LM term's and grad_side's 400s
// name their field in the error envelope.
func TestTrainingLMRequestErrors(t *testing.T) {
	ts, _, _ := trainingServer(t)
	for _, tc := range []struct{ extra, param string }{
		{`,"lm_weight":1`, "lm_dataset"},
		{`,"lm_weight":-1,"lm_dataset":["a b c"]`, "lm_weight"},
		{`,"lm_weight":1,"lm_batch":65,"lm_dataset":["a b c"]`, "lm_batch"},
		{`,"lm_dataset":["a b c"]`, "lm_weight"},
		{`,"lm_weight":1,"lm_dataset":"model"`, "lm_dataset"},
		{`,"lm_weight":1,"lm_dataset":[{"segments":[{"text":"a","weight":-2}]}]`, "lm_dataset"},
		{`,"grad_side":"self"`, "grad_side"},
		{`,"format":"html"`, "format"},
	} {
		code, b := ts.post(t, "/v1/soo/jobs", jobBody("x", 1, tc.extra))
		if code != http.StatusBadRequest {
			t.Errorf("%s: %d %.300s", tc.extra, code, b)
			continue
		}
		checkEnvelope(t, b, TypeInvalidRequest, tc.param)
	}
}
