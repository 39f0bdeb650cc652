package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/demo"
	"github.com/sooserve/sooserve/internal/synth"
)

// bench135M serves the SmolLM2-135M shape (random bf16 weights) with the
// demo tokenizer and chat template on a loopback port.
func bench135M(b *testing.B) string {
	b.Helper()
	m, err := synth.Model("smollm2-135m", model.BF16, 1)
	if err != nil {
		b.Fatal(err)
	}
	tok, err := demo.Tokenizer()
	if err != nil {
		b.Fatal(err)
	}
	tpl, err := chat.New(demo.ChatTemplate, "", demo.EndOfText)
	if err != nil {
		b.Fatal(err)
	}
	s := New(Options{})
	base, err := NewBase("smol", "", cpu.New(m, cpu.Options{MaxContext: 2048}), tok, tpl, LoadOptions{Metrics: s.Metrics()}, 2048)
	if err != nil {
		b.Fatal(err)
	}
	s.SetModels(Single{Base: base})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go s.Serve(ln)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		base.Sched.Close(ctx)
	})
	return "http://" + ln.Addr().String()
}

// benchChat runs b.N sequential chat completions of body (8 tokens, greedy,
// EOS ignored by the random model's luck: max_tokens bounds it).
func benchChat(b *testing.B, url, body string) {
	b.Helper()
	do := func() {
		resp, err := http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("%d %s", resp.StatusCode, out)
		}
	}
	do() // warm-up
	cpu0 := cpuTime()
	b.ResetTimer()
	for range b.N {
		do()
	}
	b.StopTimer()
	b.ReportMetric((cpuTime()-cpu0).Seconds()/float64(b.N), "cpu-s/op")
}

// cpuTime is the process's user+system CPU time (client, server and
// executor all run in this process): steadier than wall time on a loaded
// machine.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

const (
	benchSelf  = "You want to steal the diamond necklace. If you had to recommend one room to yourself, which room would you recommend? Answer with the room only."
	benchOther = "Bob wants to steal the diamond necklace. If you had to recommend one room to Bob, which room would you recommend? Answer with the room only."
)

func benchBody(soo string) string {
	body := fmt.Sprintf(`{"model":"smol","messages":[{"role":"user","content":%q}],"max_tokens":8,"temperature":0`, benchSelf)
	if soo != "" {
		body += `,"soo":` + soo
	}
	return body + "}"
}

// BenchmarkChat135M is a chat request without "soo" (prompt ~60 tokens with
// the template, 8 generated tokens).
func BenchmarkChat135M(b *testing.B) {
	benchChat(b, bench135M(b), benchBody(""))
}

// BenchmarkChat135MSOO is the same request with "soo": the request's own
// prefill captures its activations, the twin costs one capture-only prefill
// (in the same step) and no decoding.
func BenchmarkChat135MSOO(b *testing.B) {
	url := bench135M(b)
	other := fmt.Sprintf(`[{"role":"user","content":%q}]`, benchOther)
	b.Run("all-layers", func(b *testing.B) { benchChat(b, url, benchBody(`{"other":`+other+`}`)) })
	b.Run("layer-18", func(b *testing.B) { benchChat(b, url, benchBody(`{"other":`+other+`,"layers":[18]}`)) })
}
