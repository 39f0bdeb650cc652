// Package hub downloads model repositories from a Hugging Face compatible
// hub: the files a model directory needs (config.json, tokenizer files,
// *.safetensors and their index), once, with atomic writes, into a local
// directory that then loads like any other model directory.
package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// DefaultEndpoint is the public hub.
const DefaultEndpoint = "https://huggingface.co"

// completeMarker is written last: its presence means every file is in place.
const completeMarker = ".soo-download-complete"

var repoRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$`)

// wanted reports whether a repository file belongs in a model directory.
func wanted(name string) bool {
	if strings.Contains(name, "/") {
		return false // subfolders (onnx/, original/ ...) are not needed
	}
	switch name {
	case "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model",
		"tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
		"model.safetensors.index.json":
		return true
	}
	return strings.HasSuffix(name, ".safetensors")
}

// Options configures Download.
type Options struct {
	Endpoint string       // default DefaultEndpoint
	Revision string       // default "main"
	Token    string       // optional bearer token for gated repositories
	Client   *http.Client // default http.DefaultClient
	Logger   *slog.Logger
}

// Download fetches repo ("ORG/NAME") into dir unless a complete download is
// already there. Each file is written to a temporary name and renamed into
// place; an interrupted download resumes file by file on the next call.
func Download(ctx context.Context, repo, dir string, opts Options) error {
	if !repoRE.MatchString(repo) || strings.Contains(repo, "..") {
		return fmt.Errorf("hub: invalid repository %q (want ORG/NAME)", repo)
	}
	if _, err := os.Stat(filepath.Join(dir, completeMarker)); err == nil {
		return nil
	}
	if opts.Endpoint == "" {
		opts.Endpoint = DefaultEndpoint
	}
	opts.Endpoint = strings.TrimRight(opts.Endpoint, "/")
	if opts.Revision == "" {
		opts.Revision = "main"
	}
	if opts.Client == nil {
		opts.Client = http.DefaultClient
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	files, err := listFiles(ctx, repo, opts)
	if err != nil {
		return err
	}
	hasConfig, hasWeights := false, false
	for _, f := range files {
		hasConfig = hasConfig || f == "config.json"
		hasWeights = hasWeights || strings.HasSuffix(f, ".safetensors")
	}
	if !hasConfig || !hasWeights {
		return fmt.Errorf("hub: %s has no config.json and *.safetensors weights", repo)
	}
	for _, f := range files {
		dst := filepath.Join(dir, f)
		if _, err := os.Stat(dst); err == nil {
			continue // finished by an earlier, interrupted run
		}
		opts.Logger.Info("downloading", "repo", repo, "file", f)
		if err := fetch(ctx, repo, f, dst, opts); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, completeMarker), []byte(repo+"\n"), 0o644); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	return nil
}

func (o Options) get(ctx context.Context, u string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	if o.Token != "" {
		req.Header.Set("Authorization", "Bearer "+o.Token)
	}
	resp, err := o.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("hub: GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("hub: GET %s: %s", u, resp.Status)
	}
	return resp, nil
}

// listFiles asks the hub's model API for the repository's files.
func listFiles(ctx context.Context, repo string, o Options) ([]string, error) {
	u := fmt.Sprintf("%s/api/models/%s/revision/%s", o.Endpoint, repo, url.PathEscape(o.Revision))
	resp, err := o.get(ctx, u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var info struct {
		Siblings []struct {
			Name string `json:"rfilename"`
		} `json:"siblings"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&info); err != nil {
		return nil, fmt.Errorf("hub: %s: file list: %w", repo, err)
	}
	var files []string
	for _, s := range info.Siblings {
		if wanted(s.Name) && path.Clean(s.Name) == s.Name && fs.ValidPath(s.Name) {
			files = append(files, s.Name)
		}
	}
	return files, nil
}

// fetch downloads one file to dst through a temporary file.
func fetch(ctx context.Context, repo, name, dst string, o Options) error {
	u := fmt.Sprintf("%s/%s/resolve/%s/%s", o.Endpoint, repo, url.PathEscape(o.Revision), url.PathEscape(name))
	resp, err := o.get(ctx, u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".part*")
	if err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, resp.Body)
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("got %d of %d bytes", n, resp.ContentLength)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("hub: download %s/%s: %w", repo, name, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	return nil
}

// ErrNotHub is returned by ParseRef for a model reference without the hf: prefix.
var ErrNotHub = errors.New("hub: not an hf: reference")

// ParseRef splits "hf:ORG/NAME" into the repository; other strings give ErrNotHub.
func ParseRef(ref string) (string, error) {
	repo, ok := strings.CutPrefix(ref, "hf:")
	if !ok {
		return "", ErrNotHub
	}
	if !repoRE.MatchString(repo) || strings.Contains(repo, "..") {
		return "", fmt.Errorf("hub: invalid repository %q (want hf:ORG/NAME)", repo)
	}
	return repo, nil
}
