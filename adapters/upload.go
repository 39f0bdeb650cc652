package adapters

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
)

// Files are the two files of a PEFT adapter, as uploaded and as stored.
type Files struct {
	Config  []byte // adapter_config.json
	Weights []byte // adapter_model.safetensors
}

// Size returns the files' total size in bytes.
func (f Files) Size() int64 { return int64(len(f.Config) + len(f.Weights)) }

// Default limits.
const (
	DefaultMaxRank  = 256
	DefaultMaxBytes = 512 << 20
	// MaxConfigBytes bounds adapter_config.json.
	MaxConfigBytes = 1 << 20
)

// Limits bound what an adapter may be.
type Limits struct {
	MaxRank  int   // largest r; default DefaultMaxRank
	MaxBytes int64 // largest total size of the two files; default DefaultMaxBytes
}

func (l Limits) withDefaults() Limits {
	if l.MaxRank <= 0 {
		l.MaxRank = DefaultMaxRank
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	return l
}

// Validate checks an adapter's files against the base model and the limits
// and binds it: the name, the size, adapter_config.json (LoRA only; DoRA,
// modules_to_save, embedding LoRA, bias and unknown target modules are
// rejected by name), the rank limit, the safetensors container, every
// tensor's dtype (F32, F16, BF16), name and shape ([r, in] for lora_A,
// [out, r] for lora_B), that every value is finite and that the weights'
// magnitudes are within MaxFactorNorm and MaxUpdateNorm (lora_alpha within
// (0, MaxAlpha] is a check of the configuration). Every error wraps
// ErrInvalid or ErrTooLarge. The adapter's weights are copies of f's.
func Validate(name string, f Files, base *model.Config, lim Limits) (*lora.Adapter, *Config, error) {
	p, err := prepare(name, f, base, lim)
	if err != nil {
		return nil, nil, err
	}
	a, err := p.bind(false)
	if err != nil {
		return nil, nil, err
	}
	return a, p.cfg, nil
}

// prepare runs every check of Validate but the tensors' values (see
// plan.bind): the cheap part, after which the adapter's record is known.
func prepare(name string, f Files, base *model.Config, lim Limits) (*plan, error) {
	cfg, err := precheck(name, f, lim)
	if err != nil {
		return nil, err
	}
	return planTensors(name, cfg, f, base)
}

// precheck checks what costs next to nothing: the name, the sizes and
// adapter_config.json (with the rank limit).
func precheck(name string, f Files, lim Limits) (*Config, error) {
	lim = lim.withDefaults()
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if f.Size() > lim.MaxBytes {
		return nil, typed(ErrTooLarge, nil, "adapters: %q is %d bytes, more than the limit of %d", name, f.Size(), lim.MaxBytes)
	}
	if len(f.Config) > MaxConfigBytes {
		return nil, typed(ErrTooLarge, nil, "adapters: %s is %d bytes, more than the limit of %d", ConfigFile, len(f.Config), MaxConfigBytes)
	}
	cfg, err := ParseConfig(f.Config)
	if err != nil {
		return nil, err
	}
	if cfg.R > lim.MaxRank {
		return nil, invalid("adapters: %s: rank r=%d exceeds this server's limit of %d", ConfigFile, cfg.R, lim.MaxRank)
	}
	return cfg, nil
}

// planTensors parses the safetensors container and checks its tensors'
// names, dtypes and shapes (see checkTensors).
func planTensors(name string, cfg *Config, f Files, base *model.Config) (*plan, error) {
	st, err := safetensors.Parse(f.Weights)
	if err != nil {
		return nil, typed(ErrInvalid, err, "adapters: %s is not a valid safetensors file", WeightsFile)
	}
	return checkTensors(name, cfg, st, st.Names(), base)
}

// Sum returns the hex sha256 of b.
func Sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// NewRecord describes a validated adapter (the store assigns Version).
func NewRecord(name, baseID string, a *lora.Adapter, cfg *Config, f Files) Record {
	targets, _ := cfg.Targets()
	var applied []string
	for _, m := range a.Modules {
		applied = append(applied, m.String())
	}
	return Record{Name: name, Base: baseID, Rank: cfg.R, Alpha: cfg.LoRAAlpha, RSLoRA: cfg.UseRSLoRA,
		TargetModules: targets, Modules: applied, SHA256: Sum(f.Weights), ConfigSHA256: Sum(f.Config),
		Size: f.Size(), Created: time.Now().UTC()}
}

// ReadDir reads the two PEFT files of dir (errors wrap ErrInvalid when a
// file is missing, ErrTooLarge when it is over the limits).
func ReadDir(dir string, lim Limits) (Files, error) {
	lim = lim.withDefaults()
	var f Files
	for _, p := range []struct {
		name string
		dst  *[]byte
		max  int64
	}{{ConfigFile, &f.Config, MaxConfigBytes}, {WeightsFile, &f.Weights, lim.MaxBytes}} {
		fi, err := os.Stat(filepath.Join(dir, p.name))
		if err != nil {
			return Files{}, typed(ErrInvalid, err, "adapters: no %s in %s", p.name, dir)
		}
		if fi.Size() > p.max {
			return Files{}, typed(ErrTooLarge, nil, "adapters: %s is %d bytes, more than the limit of %d", p.name, fi.Size(), p.max)
		}
		b, err := os.ReadFile(filepath.Join(dir, p.name))
		if err != nil {
			return Files{}, fmt.Errorf("adapters: read %s: %w", p.name, err)
		}
		*p.dst = b
	}
	return f, nil
}

// Upload is a parsed POST /v1/adapters body.
type Upload struct {
	Name  string
	Files Files
}

// Form field and part names of an upload.
const (
	FieldName = "name"
)

// ReadUpload parses a multipart/form-data upload: a field "name" and two
// file parts named adapter_config.json and adapter_model.safetensors (by
// form name, or by file name). It only parses: Validate checks the contents.
// Errors wrap ErrInvalid (malformed body, missing, duplicate or unknown
// parts) or ErrTooLarge (a part over the limits).
func ReadUpload(body io.Reader, boundary string, lim Limits) (Upload, error) {
	lim = lim.withDefaults()
	if boundary == "" {
		return Upload{}, invalid("adapters: the upload must be multipart/form-data with a boundary")
	}
	// An in-memory body (the server's) tells its length: the weights part,
	// the only large one, is then read into one buffer of about its size
	// instead of one grown by doubling (each growth a fresh allocation and
	// copy, which on a loaded machine costs milliseconds per megabyte).
	hint := 0
	if l, ok := body.(interface{ Len() int }); ok {
		hint = l.Len()
	}
	mr := multipart.NewReader(body, boundary)
	var u Upload
	var haveName, haveCfg, haveW bool
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Upload{}, typed(ErrInvalid, err, "adapters: malformed multipart body")
		}
		field := p.FormName()
		if field != FieldName && field != ConfigFile && field != WeightsFile {
			if fn := p.FileName(); fn == ConfigFile || fn == WeightsFile {
				field = fn
			}
		}
		var limit int64
		var dst *[]byte
		var seen *bool
		var name []byte
		switch field {
		case FieldName:
			limit, dst, seen = 256, &name, &haveName
		case ConfigFile:
			limit, dst, seen = MaxConfigBytes, &u.Files.Config, &haveCfg
		case WeightsFile:
			limit, dst, seen = lim.MaxBytes, &u.Files.Weights, &haveW
		default:
			p.Close()
			return Upload{}, invalid("adapters: unexpected part %q (want %q, %q and %q)", clip(field), FieldName, ConfigFile, WeightsFile)
		}
		if *seen {
			p.Close()
			return Upload{}, invalid("adapters: part %q appears twice", field)
		}
		*seen = true
		size := 0
		if field == WeightsFile {
			size = hint
		}
		data, err := readPart(p, limit, size)
		p.Close()
		if err != nil {
			return Upload{}, typed(ErrInvalid, err, "adapters: reading part %q", field)
		}
		if int64(len(data)) > limit {
			if field == FieldName {
				return Upload{}, invalid("adapters: the name is longer than 64 characters")
			}
			return Upload{}, typed(ErrTooLarge, nil, "adapters: part %q is larger than the limit of %d bytes", field, limit)
		}
		*dst = data
		if field == FieldName {
			u.Name = string(name)
		}
	}
	var missing []string
	if !haveName {
		missing = append(missing, FieldName)
	}
	if !haveCfg {
		missing = append(missing, ConfigFile)
	}
	if !haveW {
		missing = append(missing, WeightsFile)
	}
	if len(missing) > 0 {
		return Upload{}, invalid("adapters: the upload lacks %v", missing)
	}
	if u.Files.Size() > lim.MaxBytes {
		return Upload{}, typed(ErrTooLarge, nil, "adapters: the upload is %d bytes, more than the limit of %d", u.Files.Size(), lim.MaxBytes)
	}
	return u, nil
}

// readPart reads r to its end or to limit+1 bytes (more than limit means
// too large). size is an upper bound of the part's length when known (0
// otherwise): the buffer is then allocated once. The result's capacity is
// its length, so appending to it never writes into shared memory, and when
// size overestimated much it is trimmed, not to hold spare memory for as
// long as the adapter lives.
func readPart(r io.Reader, limit int64, size int) ([]byte, error) {
	c := int64(512)
	if size > 0 {
		c = min(int64(size)+1, limit+1)
	}
	buf := make([]byte, 0, c)
	r = io.LimitReader(r, limit+1)
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, len(buf)) // doubles
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if spare := cap(buf) - len(buf); spare > 64<<10 && spare > len(buf)/16 {
		return bytes.Clone(buf), nil
	}
	return buf[:len(buf):len(buf)], nil
}

// clip shortens a client-supplied string for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// WriteTar writes the adapter's PEFT files as a tar archive (the two files
// at the archive's root), loadable by Hugging Face PEFT once extracted.
func WriteTar(w io.Writer, rec Record, f Files) error {
	tw := tar.NewWriter(w)
	for _, p := range []struct {
		name string
		data []byte
	}{{ConfigFile, f.Config}, {WeightsFile, f.Weights}} {
		hdr := &tar.Header{Name: p.name, Mode: 0o644, Size: int64(len(p.data)), ModTime: rec.Created, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("adapters: tar %s: %w", p.name, err)
		}
		if _, err := tw.Write(p.data); err != nil {
			return fmt.Errorf("adapters: tar %s: %w", p.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("adapters: tar: %w", err)
	}
	return nil
}
