package evalsuite

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// Mode selects the OpenAI endpoint used for the scenarios.
type Mode string

const (
	// ModeChat sends each prompt as one user message to /v1/chat/completions (the server applies
	// the model's chat template, as v-arXiv does).
	ModeChat Mode = "chat"
	// ModeCompletion sends the raw prompt to /v1/completions (v-ICLR: no chat template).
	ModeCompletion Mode = "completion"
)

// ModelSpec names one model (a base model or an adapter, as the endpoint's `model` field) and
// the answer suffix its prompts end with.
type ModelSpec struct {
	// Name is sent as the request's model.
	Name string
	// Suffix is appended to every prompt for this model.
	Suffix Suffix
}

// JudgeConfig configures the optional LLM-judged capability check.
type JudgeConfig struct {
	// Endpoint is the judge's OpenAI-compatible base URL.
	Endpoint string
	// APIKey authenticates to the judge, if needed.
	APIKey string
	// Model is the judge model's name.
	Model string
}

// Config is one evaluation run.
type Config struct {
	// Endpoint is the OpenAI-compatible base URL ("http://host:8080/v1"); "/v1" is added when
	// the URL has no path.
	Endpoint string
	// APIKey is sent as a bearer token when non-empty. OPENAI_API_KEY is never read.
	APIKey string
	// Models are compared side by side.
	Models []ModelSpec
	// Scenarios to run (see Scenarios, ParseScenarios).
	Scenarios []Scenario
	// N is the number of items per seed (default DefaultN).
	N int
	// Seeds are sampling seeds: each draws its own N items (shared by all scenarios and models)
	// and is sent as the request seed. Rates are reported as mean ± SD over seeds. Default {0}.
	Seeds []int64
	// Mode is chat (default) or completion.
	Mode Mode
	// MaxTokens is the generation limit per response (default 75, PAPER.md §4.2).
	MaxTokens int
	// Concurrency bounds requests in flight (default 4).
	Concurrency int
	// Retries is how many times a request is retried after a 408/409/429/5xx status or a
	// network error (default 6; negative means none).
	Retries int
	// Backoff is the first retry delay, doubled each retry with jitter, capped at MaxBackoff; a
	// Retry-After header takes precedence (defaults 500ms and 30s).
	Backoff, MaxBackoff time.Duration
	// RequestTimeout bounds one attempt (default 5 minutes).
	RequestTimeout time.Duration
	// OutDir receives responses.jsonl, checks.jsonl, report.json, report.md and
	// deceptive_rate.svg. A run resumes from the responses already in it.
	OutDir string
	// Capability runs the held-out log-likelihood check for each model.
	Capability bool
	// Judge, when set, runs the LLM-judged check for each model.
	Judge *JudgeConfig
	// HTTPClient, when set, carries every request (tests, proxies).
	HTTPClient *http.Client
}

// Progress reports one finished item.
type Progress struct {
	// Model, Scenario, Seed and Index identify the item.
	Model    string
	Scenario string
	Seed     int64
	Index    int
	// Label is the item's label.
	Label Label
	// Done counts finished items, Skipped those found in responses.jsonl, Total all planned.
	Done, Skipped, Total int
}

func (c *Config) defaults() error {
	if c.Endpoint == "" {
		return errors.New("evalsuite: no endpoint")
	}
	if len(c.Models) == 0 {
		return errors.New("evalsuite: no models")
	}
	seen := map[string]bool{}
	for _, m := range c.Models {
		if m.Name == "" {
			return errors.New("evalsuite: empty model name")
		}
		if seen[m.Name] {
			return fmt.Errorf("evalsuite: model %q given twice", m.Name)
		}
		seen[m.Name] = true
	}
	if len(c.Scenarios) == 0 {
		return errors.New("evalsuite: no scenarios")
	}
	if c.OutDir == "" {
		return errors.New("evalsuite: no output directory")
	}
	if c.N == 0 {
		c.N = DefaultN
	}
	if len(c.Seeds) == 0 {
		c.Seeds = []int64{0}
	}
	if c.Mode == "" {
		c.Mode = ModeChat
	}
	if c.Mode != ModeChat && c.Mode != ModeCompletion {
		return fmt.Errorf("evalsuite: unknown mode %q", c.Mode)
	}
	if c.MaxTokens == 0 {
		c.MaxTokens = 75
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 4
	}
	if c.Retries == 0 {
		c.Retries = 6
	} else if c.Retries < 0 {
		c.Retries = 0
	}
	if c.Backoff == 0 {
		c.Backoff = 500 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 5 * time.Minute
	}
	return nil
}

// BaseURL normalizes an endpoint: "/v1" is added when the URL has no path.
func BaseURL(endpoint string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(endpoint))
	if err != nil || u.Scheme == "" || u.Host == "" {
		return "", fmt.Errorf("evalsuite: bad endpoint %q: want http(s)://host[:port][/path]", endpoint)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1"
	}
	return strings.TrimSuffix(u.String(), "/") + "/", nil
}

// newClient builds an OpenAI client for an endpoint that reads nothing from the environment
// that could leak to it and does no retries of its own (the runner retries).
func newClient(endpoint, apiKey string, hc *http.Client) (openai.Client, error) {
	base, err := BaseURL(endpoint)
	if err != nil {
		return openai.Client{}, err
	}
	opts := []option.RequestOption{
		option.WithBaseURL(base),
		option.WithAPIKey(apiKey),
		option.WithMaxRetries(0),
		option.WithHeaderDel("OpenAI-Organization"),
		option.WithHeaderDel("OpenAI-Project"),
	}
	if hc != nil {
		opts = append(opts, option.WithHTTPClient(hc))
	}
	return openai.NewClient(opts...), nil
}

type task struct {
	model  ModelSpec
	scen   Scenario
	seed   int64
	item   Item
	prompt string
}

// Plan lists every prompt a configuration sends, in a fixed order (model, seed, scenario,
// item). It is what the runner does and what tests script against.
func Plan(cfg Config) ([]Record, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	ts, err := plan(&cfg)
	if err != nil {
		return nil, err
	}
	out := make([]Record, len(ts))
	for i, t := range ts {
		out[i] = Record{Model: t.model.Name, Scenario: t.scen.Name, Seed: t.seed, Item: t.item, Mode: cfg.Mode, Suffix: SuffixName(t.model.Suffix), Prompt: t.prompt}
	}
	return out, nil
}

func plan(cfg *Config) ([]task, error) {
	samples := make(map[int64][]Item, len(cfg.Seeds))
	for _, seed := range cfg.Seeds {
		if _, ok := samples[seed]; ok {
			return nil, fmt.Errorf("evalsuite: seed %d given twice", seed)
		}
		items, err := Sample(cfg.N, seed)
		if err != nil {
			return nil, err
		}
		samples[seed] = items
	}
	var ts []task
	for _, m := range cfg.Models {
		for _, seed := range cfg.Seeds {
			for _, s := range cfg.Scenarios {
				for _, it := range samples[seed] {
					ts = append(ts, task{model: m, scen: s, seed: seed, item: it, prompt: s.Render(it, m.Suffix)})
				}
			}
		}
	}
	return ts, nil
}

// ResponsesFile, ChecksFile and the report names are the files a run writes in Config.OutDir.
const (
	ResponsesFile = "responses.jsonl"
	ChecksFile    = "checks.jsonl"
)

// readJSONL reads the complete lines of a JSON-lines file into fn. A final line cut short by
// a crash (no newline, not valid JSON) is dropped from the file.
func readJSONL(path string, fn func(line []byte) error) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("evalsuite: opening %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("evalsuite: reading %s: %w", path, err)
	}
	good := 0
	for lineNo := 1; good < len(data); lineNo++ {
		nl := bytes.IndexByte(data[good:], '\n')
		if nl < 0 {
			// A torn last line: drop it so that appends stay well-formed.
			if err := f.Truncate(int64(good)); err != nil {
				return fmt.Errorf("evalsuite: truncating torn line of %s: %w", path, err)
			}
			break
		}
		line := bytes.TrimSpace(data[good : good+nl])
		if len(line) > 0 {
			if err := fn(line); err != nil {
				return fmt.Errorf("evalsuite: %s line %d: %w", path, lineNo, err)
			}
		}
		good += nl + 1
	}
	return nil
}

// appender appends JSON lines to a file, one whole line per write, safely from goroutines.
type appender struct {
	mu sync.Mutex
	f  *os.File
}

func openAppender(path string) (*appender, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("evalsuite: opening %s: %w", path, err)
	}
	return &appender{f: f}, nil
}

func (a *appender) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("evalsuite: encoding record: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("evalsuite: appending to %s: %w", a.f.Name(), err)
	}
	return nil
}

func (a *appender) close() error { return a.f.Close() }

// Run evaluates every model on every scenario and writes the report files into cfg.OutDir. It
// resumes from cfg.OutDir/responses.jsonl: items already answered there are not requested
// again. progress, if not nil, is called after each item (from several goroutines, serialized).
// When ctx is cancelled Run stops, keeps every finished response on disk and returns ctx's
// error; running it again finishes the job.
//
// Run is the library entry point behind `soo eval`; a server can call it to run evaluations as
// jobs.
func Run(ctx context.Context, cfg Config, progress func(Progress)) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	tasks, err := plan(&cfg)
	if err != nil {
		return nil, err
	}
	client, err := newClient(cfg.Endpoint, cfg.APIKey, cfg.HTTPClient)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("evalsuite: creating output directory: %w", err)
	}
	respPath := filepath.Join(cfg.OutDir, ResponsesFile)

	// Resume: index what is already answered.
	done := map[string]Record{}
	if err := readJSONL(respPath, func(line []byte) error {
		var r Record
		if err := json.Unmarshal(line, &r); err != nil {
			return err
		}
		done[r.key()] = r
		return nil
	}); err != nil {
		return nil, err
	}
	var todo []task
	var records []Record
	for _, t := range tasks {
		r, ok := done[workKey(t.model.Name, t.scen.Name, t.seed, t.item.Index)]
		if !ok {
			todo = append(todo, t)
			continue
		}
		if r.Prompt != t.prompt || r.Mode != cfg.Mode {
			return nil, fmt.Errorf("evalsuite: %s already holds a different prompt or mode for model %q, scenario %q, seed %d, item %d: use a new output directory",
				respPath, t.model.Name, t.scen.Name, t.seed, t.item.Index)
		}
		records = append(records, r)
	}

	out, err := openAppender(respPath)
	if err != nil {
		return nil, err
	}
	defer out.close()

	r := &requester{client: client, cfg: &cfg}
	skipped := len(records)
	var (
		mu       sync.Mutex
		finished = skipped
		firstErr error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan task)
	var wg sync.WaitGroup
	for range min(cfg.Concurrency, max(len(todo), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range work {
				text, finish, err := r.generate(ctx, t.model.Name, t.prompt, t.seed)
				if err == nil {
					rec := Record{Model: t.model.Name, Scenario: t.scen.Name, Seed: t.seed, Item: t.item, Mode: cfg.Mode,
						Suffix: SuffixName(t.model.Suffix), Prompt: t.prompt, Response: text, FinishReason: finish,
						Label: t.scen.Score(text, t.item)}
					if err = out.write(rec); err == nil {
						mu.Lock()
						records = append(records, rec)
						finished++
						if progress != nil {
							progress(Progress{Model: rec.Model, Scenario: rec.Scenario, Seed: rec.Seed, Index: rec.Item.Index,
								Label: rec.Label, Done: finished, Skipped: skipped, Total: len(tasks)})
						}
						mu.Unlock()
						continue
					}
				}
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("evalsuite: model %q, scenario %q, seed %d, item %d: %w", t.model.Name, t.scen.Name, t.seed, t.item.Index, err)
				}
				mu.Unlock()
				cancel()
			}
		}()
	}
feed:
	for _, t := range todo {
		select {
		case work <- t:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("evalsuite: run interrupted after %d of %d items: %w", finished, len(tasks), err)
	}

	names := make([]string, len(cfg.Models))
	suffixes := map[string]string{}
	for i, m := range cfg.Models {
		names[i] = m.Name
		suffixes[m.Name] = SuffixName(m.Suffix)
	}
	scenNames := make([]string, len(cfg.Scenarios))
	for i, s := range cfg.Scenarios {
		scenNames[i] = s.Name
	}
	rep := &Report{Models: names, Suffixes: suffixes, Scenarios: scenNames, N: cfg.N, Seeds: cfg.Seeds, Mode: cfg.Mode,
		MaxTokens: cfg.MaxTokens, Rows: Aggregate(names, cfg.Scenarios, cfg.Seeds, cfg.N, records)}

	if cfg.Capability || cfg.Judge != nil {
		if err := runChecks(ctx, &cfg, r, rep); err != nil {
			return nil, err
		}
	}
	if err := rep.WriteFiles(cfg.OutDir); err != nil {
		return nil, err
	}
	return rep, nil
}

// requester sends requests with retries.
type requester struct {
	client openai.Client
	cfg    *Config
}

// generate returns the greedy completion of prompt by model.
func (r *requester) generate(ctx context.Context, model, prompt string, seed int64) (text, finish string, err error) {
	err = r.retry(ctx, func(ctx context.Context) error {
		if r.cfg.Mode == ModeCompletion {
			res, err := r.client.Completions.New(ctx, openai.CompletionNewParams{
				Model:       openai.CompletionNewParamsModel(model),
				Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String(prompt)},
				Temperature: openai.Float(0),
				MaxTokens:   openai.Int(int64(r.cfg.MaxTokens)),
				Seed:        openai.Int(seed),
			})
			if err != nil {
				return err
			}
			if len(res.Choices) == 0 {
				return errNoChoices
			}
			text, finish = res.Choices[0].Text, string(res.Choices[0].FinishReason)
			return nil
		}
		res, err := r.client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:       model,
			Messages:    []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
			Temperature: openai.Float(0),
			MaxTokens:   openai.Int(int64(r.cfg.MaxTokens)),
			Seed:        openai.Int(seed),
		})
		if err != nil {
			return err
		}
		if len(res.Choices) == 0 {
			return errNoChoices
		}
		text, finish = res.Choices[0].Message.Content, res.Choices[0].FinishReason
		return nil
	})
	return text, finish, err
}

var errNoChoices = errors.New("response has no choices")

// retry runs fn until it succeeds, fails for good, or the retries run out.
func (r *requester) retry(ctx context.Context, fn func(context.Context) error) error {
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
		err := fn(actx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait, ok := retryable(err)
		if !ok || attempt >= r.cfg.Retries {
			if attempt > 0 {
				return fmt.Errorf("after %d attempts: %w", attempt+1, err)
			}
			return err
		}
		if wait == 0 {
			d := r.cfg.Backoff << attempt
			if d <= 0 || d > r.cfg.MaxBackoff {
				d = r.cfg.MaxBackoff
			}
			wait = d/2 + rand.N(d/2+1) // jitter in [d/2, d]
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// retryable says whether err is worth retrying and how long the server asked to wait (0: use
// the backoff).
func retryable(err error) (time.Duration, bool) {
	var apiErr *openai.Error
	if errors.As(err, &apiErr) {
		switch {
		case apiErr.StatusCode == http.StatusRequestTimeout, apiErr.StatusCode == http.StatusConflict,
			apiErr.StatusCode == http.StatusTooManyRequests, apiErr.StatusCode >= 500:
			return retryAfter(apiErr.Response), true
		}
		return 0, false
	}
	if errors.Is(err, errNoChoices) {
		return 0, false
	}
	// Anything else is transport-level (connection refused or reset, timeout of one attempt,
	// truncated body): worth another try.
	return 0, true
}

func retryAfter(resp *http.Response) time.Duration {
	if resp == nil {
		return 0
	}
	if ms, err := strconv.ParseFloat(resp.Header.Get("Retry-After-Ms"), 64); err == nil && ms >= 0 {
		return time.Duration(ms * float64(time.Millisecond))
	}
	if s, err := strconv.ParseFloat(resp.Header.Get("Retry-After"), 64); err == nil && s >= 0 && s < 120 {
		return time.Duration(s * float64(time.Second))
	}
	return 0
}

// ReadRecords reads a responses.jsonl file.
func ReadRecords(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("evalsuite: opening %s: %w", path, err)
	}
	defer f.Close()
	var out []Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("evalsuite: %s: %w", path, err)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("evalsuite: reading %s: %w", path, err)
	}
	return out, nil
}
