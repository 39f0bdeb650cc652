package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/sched"
	"github.com/sooserve/sooserve/engine/tokenizer"
)

// ErrModelNotFound is returned (wrapped) by Models.Resolve for an unknown name.
var ErrModelNotFound = errors.New("model not found")

// Base is a loaded base model ready to serve: its tokenizer, chat template
// and the scheduler that runs its executor.
type Base struct {
	ID        string // the API id
	Dir       string // the model directory
	Created   time.Time
	Config    *model.Config
	Tokenizer *tokenizer.Tokenizer
	Template  *chat.Template // nil when the model has none (chat routes then fail with 400)
	Sched     *sched.Scheduler
	Bytes     int64  // weight bytes
	DType     string // weight dtype as served
	Digest    string // sha256 of config.json, hex

	trainer *cpu.Executor // SOO training's executor when Sched runs another (nil: Sched's own)
	closeEx func() error  // frees the serving executor's device memory (nil: nothing to free)

	tokBytes atomic.Int64 // Tokenizer.MaxTokenBytes()+1 once computed (promptBound)
}

// Context returns the longest prompt plus generation this base serves.
func (b *Base) Context() int { return b.Sched.MaxContext() }

// Close stops the base's scheduler (waiting for running requests until ctx
// ends) and then frees its executor's device memory, if it has any.
func (b *Base) Close(ctx context.Context) error {
	err := b.Sched.Close(ctx)
	if b.closeEx != nil {
		if cerr := b.closeEx(); cerr != nil && err == nil {
			err = fmt.Errorf("close executor: %w", cerr)
		}
	}
	return err
}

// Target is what a request's "model" names: a base model, possibly with an
// adapter applied.
type Target struct {
	ID      string        // the name as the API shows it
	Base    *Base         // the base model
	Adapter *lora.Adapter // nil for the base itself
}

// ModelInfo is one entry of GET /v1/models.
type ModelInfo struct {
	ID      string
	Parent  string // "" for a base model; the base id for an adapter
	Created time.Time
	Base    *Base
}

// Models resolves the "model" of requests. The adapter registry implements
// it to add adapters beside the base; Single serves a base model alone.
type Models interface {
	// Resolve maps a request's model name to a target; an unknown name is
	// an error wrapping ErrModelNotFound.
	Resolve(ctx context.Context, name string) (Target, error)
	// List returns the servable models: bases first, then adapters.
	List(ctx context.Context) []ModelInfo
}

// Single serves one base model.
type Single struct{ Base *Base }

// Resolve returns the base for its id; any other name is not found.
func (s Single) Resolve(_ context.Context, name string) (Target, error) {
	if name == s.Base.ID {
		return Target{ID: name, Base: s.Base}, nil
	}
	return Target{}, fmt.Errorf("%w: %q", ErrModelNotFound, clip(name))
}

// List returns the base.
func (s Single) List(context.Context) []ModelInfo {
	return []ModelInfo{{ID: s.Base.ID, Created: s.Base.Created, Base: s.Base}}
}

// resolve maps a request's model name to a target, as an API error.
func (s *Server) resolve(ctx context.Context, name string) (Target, error) {
	ms := s.models.Load()
	if ms == nil || !s.ready.Load() {
		return Target{}, Unavailable("model_loading", "the model is still loading")
	}
	if name == "" {
		return Target{}, Invalid("model", "you must provide a model parameter")
	}
	t, err := (*ms).Resolve(ctx, name)
	if errors.Is(err, ErrModelNotFound) {
		return Target{}, &Error{Status: http.StatusNotFound, Type: TypeNotFound, Param: "model", Code: "model_not_found",
			Message: fmt.Sprintf("the model %q does not exist", clip(name)), Err: err}
	}
	if err != nil {
		return Target{}, fmt.Errorf("resolve model %q: %w", clip(name), err)
	}
	return t, nil
}
