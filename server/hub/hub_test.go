package hub

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// fakeHub serves one repository over loopback, counting file downloads.
func fakeHub(t *testing.T, files map[string]string) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var downloads atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/api/models/org/tiny/revision/main", func(w http.ResponseWriter, r *http.Request) {
		var sib []map[string]string
		for name := range files {
			sib = append(sib, map[string]string{"rfilename": name})
		}
		sib = append(sib, map[string]string{"rfilename": "README.md"}, map[string]string{"rfilename": "onnx/model.onnx"})
		json.NewEncoder(w).Encode(map[string]any{"id": "org/tiny", "siblings": sib})
	})
	mux.HandleFunc("/org/tiny/resolve/main/", func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, "/org/tiny/resolve/main/")
		body, ok := files[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		downloads.Add(1)
		w.Write([]byte(body))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, &downloads
}

func TestDownload(t *testing.T) {
	files := map[string]string{
		"config.json":           `{"model_type":"llama"}`,
		"model.safetensors":     "weights",
		"tokenizer.json":        "{}",
		"tokenizer_config.json": "{}",
	}
	srv, n := fakeHub(t, files)
	dir := filepath.Join(t.TempDir(), "models", "tiny")
	ctx := context.Background()
	if err := Download(ctx, "org/tiny", dir, Options{Endpoint: srv.URL}); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != body {
			t.Errorf("%s: %q %v", name, got, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "README.md")); err == nil {
		t.Error("README.md downloaded")
	}
	if n.Load() != int32(len(files)) {
		t.Errorf("%d downloads", n.Load())
	}
	if err := Download(ctx, "org/tiny", dir, Options{Endpoint: srv.URL}); err != nil {
		t.Fatal(err)
	}
	if n.Load() != int32(len(files)) {
		t.Errorf("second call downloaded again (%d)", n.Load())
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".part") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}

func TestDownloadErrors(t *testing.T) {
	srv, _ := fakeHub(t, map[string]string{"config.json": "{}"})
	ctx := context.Background()
	if err := Download(ctx, "org/tiny", t.TempDir(), Options{Endpoint: srv.URL}); err == nil {
		t.Error("repository without weights accepted")
	}
	if err := Download(ctx, "org/missing", t.TempDir(), Options{Endpoint: srv.URL}); err == nil {
		t.Error("missing repository accepted")
	}
	for _, bad := range []string{"noslash", "../etc/x", "a/b/c", "org/.."} {
		if err := Download(ctx, bad, t.TempDir(), Options{Endpoint: srv.URL}); err == nil {
			t.Errorf("repo %q accepted", bad)
		}
	}
	if r, err := ParseRef("hf:HuggingFaceTB/SmolLM2-135M-Instruct"); err != nil || r != "HuggingFaceTB/SmolLM2-135M-Instruct" {
		t.Errorf("ParseRef: %q %v", r, err)
	}
	if _, err := ParseRef("/models/x"); err != ErrNotHub {
		t.Errorf("ParseRef dir: %v", err)
	}
}
