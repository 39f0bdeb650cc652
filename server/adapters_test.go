package server

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/adapters/adapterstest"
	"github.com/sooserve/sooserve/internal/demo"
)

type adapterServer struct {
	URL  string
	base *Base
	reg  *adapters.Registry
}

// startAdapters serves the demo model with an adapter registry over store.
func startAdapters(t *testing.T, store adapters.Store, lim adapters.Limits) *adapterServer {
	t.Helper()
	s := New(Options{})
	s.MountAdapters()
	b, err := LoadBase(demoModel(t), LoadOptions{ID: demo.Name, Metrics: s.Metrics(), Threads: 2, MaxBatch: 8})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := adapters.Open(context.Background(), adapters.Options{Base: b.Config, BaseID: b.ID, Store: store,
		MaxResident: 8, Limits: lim, Registerer: s.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	s.SetModels(&AdapterModels{Base: b, Registry: reg})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		b.Sched.Close(ctx)
		reg.Close()
	})
	return &adapterServer{URL: "http://" + ln.Addr().String(), base: b, reg: reg}
}

func diskStore(t *testing.T) adapters.Store {
	st, err := adapters.OpenDisk(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (as *adapterServer) do(t *testing.T, method, path string, body []byte, ctype string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, as.URL+path, bytes.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (as *adapterServer) upload(t *testing.T, name string, f adapters.Files, query string) (int, []byte) {
	t.Helper()
	body, ct := adapterstest.Multipart(name, f)
	return as.do(t, http.MethodPost, "/v1/adapters"+query, body, ct)
}

func (as *adapterServer) listed(t *testing.T) string {
	t.Helper()
	code, b := as.do(t, http.MethodGet, "/v1/adapters", nil, "")
	if code != 200 {
		t.Fatalf("list: %d %s", code, b)
	}
	var l struct{ Data []adapters.Record }
	json.Unmarshal(b, &l)
	var out []string
	for _, r := range l.Data {
		out = append(out, r.Name+"@"+r.SHA256)
	}
	return strings.Join(out, ",")
}

// complete runs a greedy completion and returns its text (streamed or not)
// and the HTTP status.
func (as *adapterServer) complete(t *testing.T, model string, maxTokens int, stream bool) (string, int) {
	body, _ := json.Marshal(map[string]any{"model": model, "prompt": "The quick brown fox", "max_tokens": maxTokens, "temperature": 0, "stream": stream})
	resp, err := http.Post(as.URL+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Error(err)
		return "", 0
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return string(b), resp.StatusCode
	}
	if !stream {
		var r struct{ Choices []struct{ Text string } }
		json.NewDecoder(resp.Body).Decode(&r)
		return r.Choices[0].Text, 200
	}
	var sb strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || line == "[DONE]" {
			continue
		}
		var ch struct{ Choices []struct{ Text string } }
		if err := json.Unmarshal([]byte(line), &ch); err != nil {
			t.Errorf("bad chunk %q", line)
		}
		for _, c := range ch.Choices {
			sb.WriteString(c.Text)
		}
	}
	return sb.String(), 200
}

func errCode(b []byte) string {
	var e struct {
		Error struct{ Code *string }
	}
	json.Unmarshal(b, &e)
	if e.Error.Code == nil {
		return ""
	}
	return *e.Error.Code
}

var strongModules = []string{"q_proj", "v_proj", "o_proj", "down_proj"}

func TestAdapterRoutes(t *testing.T) {
	as := startAdapters(t, diskStore(t), adapters.Limits{MaxRank: 16, MaxBytes: 4 << 20})
	cfg := as.base.Config
	v1 := adapterstest.Random(cfg, 8, strongModules, 1, 0.2)
	v2 := adapterstest.Random(cfg, 4, []string{"q_proj"}, 2, 0.2)

	code, b := as.upload(t, "honest-1", v1, "")
	var rec adapters.Record
	json.Unmarshal(b, &rec)
	if code != 201 || rec.Name != "honest-1" || rec.Rank != 8 || rec.SHA256 != adapters.Sum(v1.Weights) || rec.Base != demo.Name || len(rec.Modules) != 4 {
		t.Fatalf("upload: %d %s", code, b)
	}
	if code, b := as.upload(t, "honest-1", v2, ""); code != 409 || errCode(b) != "adapter_exists" {
		t.Errorf("duplicate upload: %d %s", code, b)
	}
	code, b = as.do(t, http.MethodGet, "/v1/adapters/honest-1", nil, "")
	if code != 200 || !strings.Contains(string(b), `"sha256":"`+rec.SHA256) {
		t.Errorf("get: %d %s", code, b)
	}
	if code, _ := as.do(t, http.MethodGet, "/v1/adapters/nope", nil, ""); code != 404 {
		t.Errorf("get unknown: %d", code)
	}
	// /v1/models lists the adapter with the base as parent.
	code, b = as.do(t, http.MethodGet, "/v1/models", nil, "")
	if code != 200 || !strings.Contains(string(b), `"id":"honest-1"`) || !strings.Contains(string(b), `"parent":"`+demo.Name+`"`) {
		t.Errorf("models: %s", b)
	}
	baseOut, _ := as.complete(t, demo.Name, 12, false)
	adOut, code := as.complete(t, "honest-1", 12, false)
	if code != 200 || adOut == baseOut {
		t.Errorf("adapter output %q (%d) vs base %q", adOut, code, baseOut)
	}
	if out, code := as.complete(t, "honest-2", 12, false); code != 404 || errCode([]byte(out)) != "model_not_found" {
		t.Errorf("unknown model: %d %s", code, out)
	}

	// Every validation failure leaves the list as it was.
	before := as.listed(t)
	dora := v2
	dora.Config = []byte(`{"peft_type":"LORA","r":4,"lora_alpha":4,"target_modules":["q_proj"],"use_dora":true}`)
	for _, tc := range []struct {
		name   string
		body   func() ([]byte, string)
		status int
		want   string
	}{
		{"dora", func() ([]byte, string) { return adapterstest.Multipart("x", dora) }, 400, "DoRA"},
		{"bad name", func() ([]byte, string) { return adapterstest.Multipart("a/b", v2) }, 400, "adapter name"},
		{"rank", func() ([]byte, string) {
			return adapterstest.Multipart("x", adapterstest.Random(cfg, 32, []string{"q_proj"}, 3, 0.1))
		}, 400, "limit of 16"},
		{"too large", func() ([]byte, string) {
			return adapterstest.Multipart("x", adapters.Files{Config: v2.Config, Weights: make([]byte, 5<<20)})
		}, 413, "limit"},
		{"wrong base", func() ([]byte, string) {
			other := *cfg
			other.Hidden = 64
			return adapterstest.Multipart("x", adapterstest.Random(&other, 4, []string{"q_proj"}, 3, 0.1))
		}, 400, "shape"},
		{"missing part", func() ([]byte, string) {
			return adapterstest.Multipart("x", adapters.Files{Config: v2.Config})
		}, 400, "" /* an empty weights part is present but not a safetensors file */},
		{"not multipart", func() ([]byte, string) { return []byte(`{"name":"x"}`), "application/json" }, 400, "multipart"},
		{"replace with garbage", func() ([]byte, string) {
			return adapterstest.Multipart("honest-1", adapters.Files{Config: v2.Config, Weights: []byte("junk")})
		}, 400, "safetensors"},
	} {
		body, ct := tc.body()
		path := "/v1/adapters"
		if strings.HasPrefix(tc.name, "replace") {
			path += "?replace=true"
		}
		code, b := as.do(t, http.MethodPost, path, body, ct)
		if code != tc.status || !strings.Contains(string(b), tc.want) || !strings.Contains(string(b), `"error"`) {
			t.Errorf("%s: %d %s", tc.name, code, b)
		}
		if got := as.listed(t); got != before {
			t.Errorf("%s changed the list: %s -> %s", tc.name, before, got)
		}
	}

	// Replacement in place.
	code, b = as.upload(t, "honest-1", v2, "?replace=true")
	if code != 200 || !strings.Contains(string(b), adapters.Sum(v2.Weights)) {
		t.Errorf("replace: %d %s", code, b)
	}
	// Download returns the files as uploaded (loadable by PEFT).
	resp, err := http.Get(as.URL + "/v1/adapters/honest-1/download")
	if err != nil {
		t.Fatal(err)
	}
	files := untarBody(t, resp.Body)
	resp.Body.Close()
	if resp.Header.Get("Content-Type") != "application/x-tar" || !bytes.Equal(files[adapters.WeightsFile], v2.Weights) || !bytes.Equal(files[adapters.ConfigFile], v2.Config) {
		t.Errorf("download: %s, %d files", resp.Header.Get("Content-Type"), len(files))
	}

	// vLLM routes: load from a directory, conflict, in place, unload.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, adapters.ConfigFile), v1.Config, 0o644)
	os.WriteFile(filepath.Join(dir, adapters.WeightsFile), v1.Weights, 0o644)
	load := func(body string) (int, []byte) {
		return as.do(t, http.MethodPost, "/v1/load_lora_adapter", []byte(body), "application/json")
	}
	if code, b := load(fmt.Sprintf(`{"lora_name":"vllm","lora_path":%q}`, dir)); code != 200 || !strings.Contains(string(b), `"name":"vllm"`) {
		t.Errorf("load: %d %s", code, b)
	}
	if code, _ := load(fmt.Sprintf(`{"lora_name":"vllm","lora_path":%q}`, dir)); code != 409 {
		t.Errorf("load again: %d", code)
	}
	if code, _ := load(fmt.Sprintf(`{"lora_name":"vllm","lora_path":%q,"load_inplace":true}`, dir)); code != 200 {
		t.Errorf("load in place: %d", code)
	}
	if code, b := load(`{"lora_name":"v2","lora_path":"/nonexistent"}`); code != 400 {
		t.Errorf("load missing dir: %d %s", code, b)
	}
	if out, _ := as.complete(t, "vllm", 12, false); out != adOut {
		t.Errorf("vllm-loaded adapter gives %q, the same files uploaded gave %q", out, adOut)
	}
	unload := func() int {
		code, _ := as.do(t, http.MethodPost, "/v1/unload_lora_adapter", []byte(`{"lora_name":"vllm"}`), "application/json")
		return code
	}
	if c1, c2 := unload(), unload(); c1 != 200 || c2 != 404 {
		t.Errorf("unload: %d then %d", c1, c2)
	}
	// Delete.
	if code, _ := as.do(t, http.MethodDelete, "/v1/adapters/honest-1", nil, ""); code != 200 {
		t.Errorf("delete: %d", code)
	}
	if code, _ := as.do(t, http.MethodDelete, "/v1/adapters/honest-1", nil, ""); code != 404 {
		t.Errorf("delete again: %d", code)
	}
	if _, code := as.complete(t, "honest-1", 4, false); code != 404 {
		t.Errorf("deleted adapter still served: %d", code)
	}
	if got := as.listed(t); got != "" {
		t.Errorf("list after deletes: %s", got)
	}
}

// TestMixedAdapterBatch: requests for four adapters and the base, running
// together in one batch, give the tokens each gives alone.
func TestMixedAdapterBatch(t *testing.T) {
	as := startAdapters(t, diskStore(t), adapters.Limits{})
	models := []string{demo.Name}
	for i := range 4 {
		name := fmt.Sprintf("ad%d", i)
		if code, b := as.upload(t, name, adapterstest.Random(as.base.Config, 8, strongModules, uint64(10+i), 0.2), ""); code != 201 {
			t.Fatalf("upload: %d %s", code, b)
		}
		models = append(models, name)
	}
	alone := map[string]string{}
	distinct := map[string]bool{}
	for _, m := range models {
		out, code := as.complete(t, m, 16, false)
		if code != 200 {
			t.Fatalf("%s: %d %s", m, code, out)
		}
		alone[m] = out
		distinct[out] = true
	}
	if len(distinct) < 4 {
		t.Fatalf("adapters do not change the output enough to tell them apart: %q", alone)
	}
	var wg sync.WaitGroup
	for round := range 2 {
		for i := range 2 * len(models) {
			m := models[i%len(models)]
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, code := as.complete(t, m, 16, round == 1)
				if code != 200 || out != alone[m] {
					t.Errorf("%s in a mixed batch: %q (%d), alone %q", m, out, code, alone[m])
				}
			}()
		}
		wg.Wait()
	}
}

// TestReplaceUnderLoad replaces an adapter back and forth while streaming
// requests run: every response is one version's full output, and a request
// started after a replacement's reply gets the new version.
func TestReplaceUnderLoad(t *testing.T) {
	as := startAdapters(t, diskStore(t), adapters.Limits{})
	v := []adapters.Files{
		adapterstest.Random(as.base.Config, 8, strongModules, 10, 0.2),
		adapterstest.Random(as.base.Config, 8, strongModules, 11, 0.2),
	}
	const tokens = 24
	var outs [2]string
	for i := range v {
		if code, b := as.upload(t, "live", v[i], "?replace=true"); code/100 != 2 {
			t.Fatalf("upload: %d %s", code, b)
		}
		outs[i], _ = as.complete(t, "live", tokens, false)
	}
	if outs[0] == outs[1] {
		t.Fatalf("the two versions give the same output %q", outs[0])
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]int{}
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				out, code := as.complete(t, "live", tokens, true)
				if code != 200 || (out != outs[0] && out != outs[1]) {
					t.Errorf("response mixes versions or failed (%d): %q\nv1 %q\nv2 %q", code, out, outs[0], outs[1])
					return
				}
				mu.Lock()
				seen[out]++
				mu.Unlock()
			}
		}()
	}
	for i := range 12 {
		time.Sleep(60 * time.Millisecond)
		cur := i % 2
		if code, b := as.upload(t, "live", v[cur], "?replace=true"); code != 200 {
			t.Fatalf("replace: %d %s", code, b)
		}
		if out, _ := as.complete(t, "live", tokens, false); out != outs[cur] {
			t.Errorf("a request after replacement %d got the old version", i)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("responses per version: %d / %d", seen[outs[0]], seen[outs[1]])
	if seen[outs[0]] == 0 || seen[outs[1]] == 0 {
		t.Errorf("the load did not see both versions: %v", seen)
	}
}

// TestRedisReplicaServers: two servers with separate registries on one real
// Redis see each other's uploads, replacements and deletes within a second.
func TestRedisReplicaServers(t *testing.T) {
	url := adapterstest.StartRedis(t)
	ctx := context.Background()
	open := func() *adapterServer {
		st, err := adapters.OpenRedis(ctx, url, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return startAdapters(t, st, adapters.Limits{})
	}
	s1, s2 := open(), open()
	within := func(what string, cond func() bool) {
		t.Helper()
		start := time.Now()
		if !adapterstest.Eventually(ctx, time.Second, cond) {
			t.Fatalf("%s: not seen within a second", what)
		}
		t.Logf("%s seen by the other replica after %v", what, time.Since(start).Round(time.Millisecond))
	}
	v1 := adapterstest.Random(s1.base.Config, 8, strongModules, 31, 0.2)
	v2 := adapterstest.Random(s1.base.Config, 8, strongModules, 32, 0.2)
	if code, b := s1.upload(t, "shared", v1, ""); code != 201 {
		t.Fatalf("upload: %d %s", code, b)
	}
	want1, _ := s1.complete(t, "shared", 12, false)
	within("upload", func() bool { return strings.Contains(s2.listed(t), "shared@"+adapters.Sum(v1.Weights)) })
	if out, code := s2.complete(t, "shared", 12, false); code != 200 || out != want1 {
		t.Errorf("replica 2 serves %q (%d), replica 1 %q", out, code, want1)
	}
	if code, b := s2.upload(t, "shared", v2, "?replace=true"); code != 200 {
		t.Fatalf("replace: %d %s", code, b)
	}
	want2, _ := s2.complete(t, "shared", 12, false)
	within("replacement", func() bool {
		out, _ := s1.complete(t, "shared", 12, false)
		return out == want2 && strings.Contains(s1.listed(t), adapters.Sum(v2.Weights))
	})
	if code, _ := s1.do(t, http.MethodDelete, "/v1/adapters/shared", nil, ""); code != 200 {
		t.Fatalf("delete: %d", code)
	}
	within("delete", func() bool {
		_, code := s2.complete(t, "shared", 4, false)
		return code == 404 && s2.listed(t) == ""
	})
}

func untarBody(t *testing.T, r io.Reader) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name], _ = io.ReadAll(tr)
	}
}
