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
// [out, r] for lora_B). Every error wraps ErrInvalid or ErrTooLarge.
func Validate(name string, f Files, base *model.Config, lim Limits) (*lora.Adapter, *Config, error) {
	lim = lim.withDefaults()
	if err := ValidateName(name); err != nil {
		return nil, nil, err
	}
	if f.Size() > lim.MaxBytes {
		return nil, nil, typed(ErrTooLarge, nil, "adapters: %q is %d bytes, more than the limit of %d", name, f.Size(), lim.MaxBytes)
	}
	if len(f.Config) > MaxConfigBytes {
		return nil, nil, typed(ErrTooLarge, nil, "adapters: %s is %d bytes, more than the limit of %d", ConfigFile, len(f.Config), MaxConfigBytes)
	}
	cfg, err := ParseConfig(f.Config)
	if err != nil {
		return nil, nil, err
	}
	if cfg.R > lim.MaxRank {
		return nil, nil, invalid("adapters: %s: rank r=%d exceeds this server's limit of %d", ConfigFile, cfg.R, lim.MaxRank)
	}
	st, err := safetensors.Parse(f.Weights)
	if err != nil {
		return nil, nil, typed(ErrInvalid, err, "adapters: %s is not a valid safetensors file", WeightsFile)
	}
	a, err := Bind(name, cfg, st, st.Names(), base)
	if err != nil {
		return nil, nil, err
	}
	return a, cfg, nil
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
		var buf bytes.Buffer
		n, err := io.Copy(&buf, io.LimitReader(p, limit+1))
		p.Close()
		if err != nil {
			return Upload{}, typed(ErrInvalid, err, "adapters: reading part %q", field)
		}
		if n > limit {
			if field == FieldName {
				return Upload{}, invalid("adapters: the name is longer than 64 characters")
			}
			return Upload{}, typed(ErrTooLarge, nil, "adapters: part %q is larger than the limit of %d bytes", field, limit)
		}
		*dst = buf.Bytes()
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
