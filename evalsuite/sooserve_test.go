package evalsuite_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sooserve/sooserve/evalsuite"
	"github.com/sooserve/sooserve/internal/demo"
	"github.com/sooserve/sooserve/server"
)

// TestAgainstSOOServe runs the suite against the project's own server on
// the built-in demo model over loopback: every item gets a labelled
// response, the capability check uses the server's completions echo, and a
// second run (greedy) reproduces the first response for response.
func TestAgainstSOOServe(t *testing.T) {
	mdir := filepath.Join(t.TempDir(), "demo")
	if err := demo.Write(mdir); err != nil {
		t.Fatal(err)
	}
	s := server.New(server.Options{})
	b, err := server.LoadBase(mdir, server.LoadOptions{ID: demo.Name, Metrics: s.Metrics(), Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	s.SetModels(server.Single{Base: b})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		b.Sched.Close(ctx)
	})
	scens, err := evalsuite.ParseScenarios("burglar,perspectives")
	if err != nil {
		t.Fatal(err)
	}
	run := func(out string) *evalsuite.Report {
		rep, err := evalsuite.Run(context.Background(), evalsuite.Config{
			Endpoint: "http://" + ln.Addr().String(), Models: []evalsuite.ModelSpec{{Name: demo.Name}},
			Scenarios: scens, N: 4, MaxTokens: 8, OutDir: out, Capability: true,
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	a, bdir := t.TempDir(), t.TempDir()
	rep := run(a)
	run(bdir)
	if len(rep.Rows) != 2 {
		t.Fatalf("rows %+v", rep.Rows)
	}
	for _, r := range rep.Rows {
		if r.N != 4 || r.Deceptive+r.Honest+r.Correct+r.Incorrect+r.Unclear != 4 {
			t.Errorf("row %+v: want 4 labelled responses", r)
		}
	}
	if len(rep.Capability) != 1 || rep.Capability[0].Method != evalsuite.MethodEcho || rep.Capability[0].Tokens == 0 || rep.Capability[0].Perplexity <= 1 {
		t.Errorf("capability %+v", rep.Capability)
	}
	// Requests run concurrently, so lines land in any order: compare as sets.
	lines := func(dir string) []string {
		b, err := os.ReadFile(filepath.Join(dir, "responses.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		l := strings.Split(strings.TrimSpace(string(b)), "\n")
		slices.Sort(l)
		return l
	}
	la, lb := lines(a), lines(bdir)
	if len(la) != 8 || !slices.Equal(la, lb) {
		t.Errorf("greedy runs differ or are incomplete (%d vs %d lines)", len(la), len(lb))
	}
}
