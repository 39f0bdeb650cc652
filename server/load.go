package server

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/sched"
	"github.com/sooserve/sooserve/engine/tokenizer"
	"github.com/sooserve/sooserve/engine/xla"
)

// LoadOptions configures LoadBase.
type LoadOptions struct {
	ID       string       // API id; default the directory name
	DType    *model.DType // convert weights; nil keeps the stored type
	Context  int          // context length; 0 means min(model max, 4096)
	MaxBatch int          // running sequences; default 8
	MaxQueue int          // waiting requests; default 64
	Threads  int          // executor threads; 0 means GOMAXPROCS
	// Backend picks the executor that serves requests: "" or "cpu" for the
	// native cpu executor; "xla:cpu", "xla:cuda" (binaries built with -tags
	// xla, PJRT plugin installed) or "simplego" for the GoMLX executor.
	// SOO training always runs on a cpu executor over the same weights.
	Backend string
	// ExactBF16Inputs makes products with bf16 weights read their inputs
	// unrounded (cpu.Options.ExactBF16Inputs), on both executors.
	ExactBF16Inputs bool
	Metrics         *Metrics // scheduler metrics; nil for none
	Logger          *slog.Logger
}

// DefaultContext is the context length used when the model allows more and
// none was asked for.
const DefaultContext = 4096

// LoadBase loads the Hugging Face model directory dir (weights, tokenizer and
// chat template) onto the executor opts.Backend names and starts its
// scheduler. A directory without a chat template loads; its chat routes then
// answer 400.
func LoadBase(dir string, opts LoadOptions) (*Base, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := model.Load(dir, model.LoadOptions{DType: opts.DType})
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("load model %s: %w", dir, err)
	}
	if tok.VocabSize() > m.Config.VocabSize {
		m.Close()
		return nil, fmt.Errorf("load model %s: tokenizer has %d ids, model vocabulary is %d", dir, tok.VocabSize(), m.Config.VocabSize)
	}
	tpl, err := chat.LoadTemplate(dir)
	switch {
	case errors.Is(err, chat.ErrNoTemplate):
		opts.Logger.Warn("model has no chat template: chat routes will answer 400", "dir", dir)
		tpl = nil
	case err != nil:
		m.Close()
		return nil, fmt.Errorf("load model %s: %w", dir, err)
	}
	ctxLen := opts.Context
	if ctxLen <= 0 {
		ctxLen = min(m.Config.MaxPositions, DefaultContext)
	}
	if ctxLen > m.Config.MaxPositions {
		m.Close()
		return nil, fmt.Errorf("load model %s: context %d exceeds the model's maximum of %d", dir, ctxLen, m.Config.MaxPositions)
	}
	id := opts.ID
	if id == "" {
		id = filepath.Base(filepath.Clean(dir))
	}
	if n, err := m.MoveToHugePages(); err != nil {
		opts.Logger.Warn("weights stay in ordinary pages", "err", err)
	} else {
		opts.Logger.Debug("weights moved to huge pages", "bytes", n)
	}
	cex := cpu.New(m, cpu.Options{Threads: opts.Threads, MaxContext: ctxLen, ExactBF16Inputs: opts.ExactBF16Inputs})
	var ex engine.Executor = cex
	var trainer *cpu.Executor // training's executor when requests run on another
	var closeEx func() error
	switch opts.Backend {
	case "", "cpu":
	default:
		xe, err := xla.New(m, xla.Options{Backend: opts.Backend, ExactBF16Inputs: opts.ExactBF16Inputs})
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("load model %s: backend %s: %w", dir, opts.Backend, err)
		}
		ex, trainer, closeEx = xe, cex, xe.Close
		opts.Logger.Info("executor", "backend", xe.Backend(), "note", "no KV cache: each step recomputes the sequence; training runs on the cpu executor")
	}
	b, err := NewBase(id, dir, ex, tok, tpl, opts, ctxLen)
	if err != nil {
		if closeEx != nil {
			closeEx()
		}
		m.Close()
		return nil, err
	}
	b.Bytes = m.Bytes()
	b.trainer, b.closeEx = trainer, closeEx
	return b, nil
}

// NewBase wraps an executor, tokenizer and template (nil for none) as a
// servable base with its own scheduler.
func NewBase(id, dir string, ex engine.Executor, tok *tokenizer.Tokenizer, tpl *chat.Template, opts LoadOptions, ctxLen int) (*Base, error) {
	cfg := ex.Config()
	so := sched.Options{
		MaxBatch:   opts.MaxBatch,
		MaxQueue:   opts.MaxQueue,
		MaxContext: ctxLen,
		NewDecoder: func() sched.TextDecoder { return tok.NewStreamDecoder() },
		Logger:     opts.Logger,
	}
	if opts.Metrics != nil {
		so.Observer = opts.Metrics.Observer(id)
	}
	b := &Base{ID: id, Dir: dir, Created: time.Now(), Config: cfg, Tokenizer: tok, Template: tpl, Sched: sched.New(ex, so), DType: cfg.TorchDType}
	switch b.DType {
	case "float32", "":
		b.DType = "f32"
	case "bfloat16":
		b.DType = "bf16"
	case "float16":
		b.DType = "f16"
	}
	if opts.DType != nil {
		b.DType = opts.DType.String()
	}
	if fi, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		b.Created = fi.ModTime()
		if raw, err := os.ReadFile(filepath.Join(dir, "config.json")); err == nil {
			sum := sha256.Sum256(raw)
			b.Digest = hex.EncodeToString(sum[:])
		}
	}
	return b, nil
}
