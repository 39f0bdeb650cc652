package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"time"
)

// loadConfig is the command line of soo load.
type loadConfig struct {
	URL, Model, Prompt, APIKey string
	Clients, MaxTokens         int
	MaxRequests                int
	Duration                   time.Duration
	Temperature                float64
	JSON                       bool
	// Hostile > 0 makes the run a soak (soak.go): that fraction of the
	// requests are hostile, after a warm-up of Warmup; the server's RSS may
	// grow by at most RSSBoundMB from the end of the warm-up to the end (0:
	// no bound).
	Hostile    float64
	Warmup     time.Duration
	RSSBoundMB int
	// rss, when set, measures the server's RSS in place of its /metrics
	// (tests: after a forced GC); rssSource says how.
	rss       func(context.Context) (int64, error)
	rssSource string
}

// loadReport is what soo load measures.
type loadReport struct {
	Requests         int     `json:"requests"`
	Errors           int     `json:"errors"`
	FirstError       string  `json:"first_error,omitempty"`
	CompletionTokens int     `json:"completion_tokens"`
	Seconds          float64 `json:"seconds"`
	TokensPerSecond  float64 `json:"tokens_per_second"`
	TTFTP50ms        float64 `json:"ttft_p50_ms"`
	TTFTP99ms        float64 `json:"ttft_p99_ms"`
	ITLP50ms         float64 `json:"itl_p50_ms"`
	ITLP99ms         float64 `json:"itl_p99_ms"`
}

// runLoad is soo load: N concurrent streaming chat clients for a fixed time
// against a server on this machine, reporting throughput and latencies; with
// --hostile, a soak of valid and hostile requests (soak.go).
func runLoad(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := loadConfig{}
	fs.StringVar(&c.URL, "url", "http://127.0.0.1:8080", "server base URL (loopback only)")
	fs.StringVar(&c.Model, "model", "", "model id (default: the first of /v1/models)")
	fs.StringVar(&c.Prompt, "prompt", "Tell me a short story about a burglar and two rooms.", "user message")
	fs.StringVar(&c.APIKey, "api-key", os.Getenv("SOO_API_KEY"), "bearer key (env SOO_API_KEY)")
	fs.IntVar(&c.Clients, "clients", 4, "concurrent streaming clients")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "how long to send requests")
	fs.IntVar(&c.MaxTokens, "max-tokens", 64, "max_tokens per request")
	fs.IntVar(&c.MaxRequests, "max-requests", 10000, "stop after this many requests in all")
	fs.Float64Var(&c.Temperature, "temperature", 0.7, "sampling temperature")
	fs.BoolVar(&c.JSON, "json", false, "print the report as JSON")
	fs.Float64Var(&c.Hostile, "hostile", 0, "soak: this fraction (0 to 1) of the requests are hostile; the rest are chat, completions and Ollama chat, streamed and not")
	fs.DurationVar(&c.Warmup, "warmup", 2*time.Second, "soak: warm-up with the same mix before the server's RSS is first read")
	fs.IntVar(&c.RSSBoundMB, "rss-bound-mb", 0, "soak: fail when the server's RSS grows by more than this many MB from the warm-up to the end (0: report it only; it is read from /metrics without a forced GC, so short runs are noisy)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	switch {
	case c.Clients < 1 || c.Clients > 1024:
		return fmt.Errorf("--clients must be between 1 and 1024")
	case c.Duration <= 0 || c.Duration > time.Hour:
		return fmt.Errorf("--duration must be positive and at most 1h")
	case c.MaxTokens < 1:
		return fmt.Errorf("--max-tokens must be at least 1")
	case c.MaxRequests < 1:
		return fmt.Errorf("--max-requests must be at least 1")
	case !(c.Hostile >= 0 && c.Hostile <= 1):
		return fmt.Errorf("--hostile must be between 0 and 1")
	case c.Warmup < 0 || c.Warmup > time.Hour:
		return fmt.Errorf("--warmup must be between 0 and 1h")
	case c.RSSBoundMB < 0:
		return fmt.Errorf("--rss-bound-mb must not be negative")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if c.Hostile > 0 {
		return runSoak(ctx, c, stdout)
	}
	rep, err := loadTest(ctx, c)
	if err != nil {
		return err
	}
	if c.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprintf(stdout, "requests      %d (%d errors)\n", rep.Requests, rep.Errors)
	if rep.FirstError != "" {
		fmt.Fprintf(stdout, "first error   %s\n", rep.FirstError)
	}
	fmt.Fprintf(stdout, "tokens        %d in %.1fs: %.1f tokens/s\n", rep.CompletionTokens, rep.Seconds, rep.TokensPerSecond)
	fmt.Fprintf(stdout, "TTFT          p50 %.1f ms  p99 %.1f ms\n", rep.TTFTP50ms, rep.TTFTP99ms)
	fmt.Fprintf(stdout, "inter-token   p50 %.1f ms  p99 %.1f ms\n", rep.ITLP50ms, rep.ITLP99ms)
	return nil
}

// checkLoopback refuses targets that are not on this machine.
func checkLoopback(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--url %q: want http://HOST:PORT", raw)
	}
	host := u.Hostname()
	if host == "localhost" {
		return u, nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return u, nil
	}
	return nil, fmt.Errorf("--url %q: soo load only targets loopback addresses (127.0.0.0/8, ::1, localhost)", raw)
}

// loadTest runs the clients and aggregates their measurements.
func loadTest(ctx context.Context, c loadConfig) (*loadReport, error) {
	u, err := checkLoopback(c.URL)
	if err != nil {
		return nil, err
	}
	base := strings.TrimRight(u.String(), "/")
	client := &http.Client{Timeout: c.Duration + 5*time.Minute}
	if c.Model == "" {
		if c.Model, err = firstModel(ctx, client, base, c.APIKey); err != nil {
			return nil, err
		}
	}
	body, err := json.Marshal(map[string]any{
		"model": c.Model, "messages": []map[string]string{{"role": "user", "content": c.Prompt}},
		"max_tokens": c.MaxTokens, "temperature": c.Temperature, "stream": true,
		"stream_options": map[string]bool{"include_usage": true},
	})
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.Duration)
	defer cancel()
	var (
		mu        sync.Mutex
		rep       loadReport
		ttft, itl []float64
		sent      int
	)
	next := func() bool {
		mu.Lock()
		defer mu.Unlock()
		if sent >= c.MaxRequests || ctx.Err() != nil {
			return false
		}
		sent++
		return true
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range c.Clients {
		wg.Go(func() {
			for next() {
				r := streamOnce(ctx, client, base, c.APIKey, body)
				mu.Lock()
				if r.err != nil && ctx.Err() == nil {
					rep.Errors++
					if rep.FirstError == "" {
						rep.FirstError = r.err.Error()
					}
				} else if r.err == nil {
					rep.Requests++
					rep.CompletionTokens += r.tokens
					if r.ttft > 0 {
						ttft = append(ttft, r.ttft.Seconds()*1000)
					}
					for _, d := range r.gaps {
						itl = append(itl, d.Seconds()*1000)
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	rep.Seconds = time.Since(start).Seconds()
	if rep.Seconds > 0 {
		rep.TokensPerSecond = float64(rep.CompletionTokens) / rep.Seconds
	}
	rep.TTFTP50ms, rep.TTFTP99ms = percentile(ttft, 50), percentile(ttft, 99)
	rep.ITLP50ms, rep.ITLP99ms = percentile(itl, 50), percentile(itl, 99)
	return &rep, nil
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(p/100*float64(len(s)-1) + 0.5)
	return s[min(i, len(s)-1)]
}

func firstModel(ctx context.Context, client *http.Client, base, key string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/models", nil)
	if err != nil {
		return "", fmt.Errorf("load: %w", err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("load: list models: %w", err)
	}
	defer resp.Body.Close()
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return "", fmt.Errorf("load: list models: %s: %s", resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || len(list.Data) == 0 {
		return "", fmt.Errorf("load: list models: no model (%v)", err)
	}
	return list.Data[0].ID, nil
}

type streamResult struct {
	tokens int
	ttft   time.Duration
	gaps   []time.Duration
	err    error
}

// streamOnce sends one streaming chat request and times its chunks.
func streamOnce(ctx context.Context, client *http.Client, base, key string, body []byte) streamResult {
	var r streamResult
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		r.err = err
		return r
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		r.err = err
		return r
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		r.err = fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
		return r
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var last time.Time
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			return r
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Usage *struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			r.err = fmt.Errorf("bad chunk: %w", err)
			return r
		}
		if chunk.Error != nil {
			r.err = fmt.Errorf("stream error: %s", chunk.Error.Message)
			return r
		}
		if chunk.Usage != nil {
			r.tokens = chunk.Usage.CompletionTokens
		}
		if len(chunk.Choices) > 0 && chunk.Choices[0].Delta.Content != "" {
			now := time.Now()
			if last.IsZero() {
				r.ttft = now.Sub(t0)
			} else {
				r.gaps = append(r.gaps, now.Sub(last))
			}
			last = now
		}
	}
	if err := sc.Err(); err != nil {
		r.err = err
	} else {
		r.err = errors.New("stream ended without [DONE]")
	}
	return r
}

// runSoak runs soo load --hostile and prints its report; it fails when the
// soak found a failure, /health did not answer 200 after it, or the RSS grew
// past the bound.
func runSoak(ctx context.Context, c loadConfig, stdout io.Writer) error {
	rep, err := soakTest(ctx, c)
	if err != nil {
		return err
	}
	if c.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return fmt.Errorf("load: %w", err)
		}
	} else {
		printSoak(stdout, rep)
	}
	if !rep.OK {
		return fmt.Errorf("load: the soak failed: %d failures, /health %d after, RSS %+.1f MB since the warm-up (bound %d MB; 0: none)",
			rep.Failures, rep.HealthAfter, mb(rep.RSSAfterBytes-rep.RSSWarmBytes), c.RSSBoundMB)
	}
	return nil
}
