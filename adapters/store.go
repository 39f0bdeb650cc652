package adapters

import (
	"context"
	"time"
)

// Record describes a stored adapter: what GET /v1/adapters returns.
type Record struct {
	Name          string    `json:"name"`
	Base          string    `json:"base"` // the base model's API id
	Rank          int       `json:"rank"`
	Alpha         float64   `json:"alpha"`
	RSLoRA        bool      `json:"use_rslora"`
	TargetModules []string  `json:"target_modules"` // as adapter_config.json lists them
	Modules       []string  `json:"modules"`        // the modules that actually carry weights
	SHA256        string    `json:"sha256"`         // of adapter_model.safetensors
	ConfigSHA256  string    `json:"config_sha256"`  // of adapter_config.json
	Size          int64     `json:"size"`           // bytes of both files
	Created       time.Time `json:"created"`        // when this version was stored
	Version       int64     `json:"version"`        // assigned by the store; grows with every put
}

// Store keeps adapter records and their files. Implementations: DiskStore
// (one process, a data directory) and RedisStore (several replicas).
type Store interface {
	// Put stores rec with its files and returns it with its new Version.
	// When the name exists and replace is false it fails with ErrExists.
	// The adapter becomes visible whole or not at all.
	Put(ctx context.Context, rec Record, f Files, replace bool) (Record, error)
	// Get returns the record of name (ErrNotFound when absent).
	Get(ctx context.Context, name string) (Record, error)
	// Load returns the record of name and its files, checked against the
	// record's sha256 sums.
	Load(ctx context.Context, name string) (Record, Files, error)
	// List returns every record, sorted by name.
	List(ctx context.Context) ([]Record, error)
	// Delete removes name (ErrNotFound when absent).
	Delete(ctx context.Context, name string) error
	// Close releases the store.
	Close() error
}

// Op is what an Event announces.
type Op string

// Event operations.
const (
	OpPut    Op = "put"     // a new adapter
	OpUpdate Op = "replace" // an adapter replaced in place
	OpDelete Op = "delete"  // an adapter deleted or unloaded
	OpResync Op = "resync"  // (re)subscribed: changes may have been missed, list again
)

// Event is a change announced to every replica sharing a store.
type Event struct {
	Op      Op     `json:"op"`
	Name    string `json:"name,omitempty"`
	Version int64  `json:"version,omitempty"`
}

// Watcher is a Store shared by several replicas that announces changes.
type Watcher interface {
	// Watch calls fn for every change made by any replica, and with an
	// OpResync event after every (re)subscription, until ctx ends.
	Watch(ctx context.Context, fn func(Event)) error
}
