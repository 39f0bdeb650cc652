package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sooserve/sooserve/internal/demo"
	"github.com/sooserve/sooserve/server"
)

// soakServerEnv makes TestSoakHelperServer serve (in the child process that
// TestSoakHostile starts); without it the test skips.
const soakServerEnv = "SOO_SOAK_SERVER"

// TestSoakHelperServer is the server of TestSoakHostile, run in a child
// process so that its RSS is the server's alone: the demo model behind the
// API key "k", plus GET /debug/gc (a forced GC that returns freed memory to
// the OS). It prints "ADDR host:port" and serves until its stdin closes.
func TestSoakHelperServer(t *testing.T) {
	if os.Getenv(soakServerEnv) == "" {
		t.Skip("the server process of TestSoakHostile")
	}
	dir := t.TempDir()
	if err := demo.Write(dir); err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Options{APIKey: "k"})
	b, err := server.LoadBase(dir, server.LoadOptions{ID: demo.Name, Threads: 2, MaxBatch: 8})
	if err != nil {
		t.Fatal(err)
	}
	srv.SetModels(server.Single{Base: b})
	srv.App().Get("/debug/gc", func(c *fiber.Ctx) error {
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return c.SendString(fmt.Sprintf("heap_alloc=%dMB heap_inuse=%dMB stack_inuse=%dMB sys=%dMB goroutines=%d",
			ms.HeapAlloc>>20, ms.HeapInuse>>20, ms.StackInuse>>20, ms.Sys>>20, runtime.NumGoroutine()))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Printf("ADDR %s\n", ln.Addr())
	io.Copy(io.Discard, os.Stdin) // until the parent closes it
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Error(err)
	}
	if err := b.Sched.Close(ctx); err != nil {
		t.Error(err)
	}
	if err := <-served; err != nil {
		t.Error(err)
	}
}

// startSoakServer starts TestSoakHelperServer in a child process and
// returns its address and process; the cleanup closes its stdin and
// expects a clean exit.
func startSoakServer(t *testing.T) (string, *os.Process) {
	t.Helper()
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("the soak reads the server's RSS from /proc")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSoakHelperServer$", "-test.count=1")
	cmd.Env = append(os.Environ(), soakServerEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	var out bytes.Buffer
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
				addr <- a
			} else {
				out.WriteString(sc.Text() + "\n")
			}
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { <-copied; done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("the server process: %v\n%s%s", err, out.String(), stderr.String())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Errorf("the server process did not exit after its stdin closed")
		}
	})
	select {
	case a := <-addr:
		return a, cmd.Process
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("the server process printed no address")
	}
	return "", nil
}

// vmRSS returns VmRSS of process pid in bytes.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// TestSoakHostile is the soak of issue 16: 64 clients, half of their
// requests hostile (every class of soakClasses), for a 2 s warm-up and an
// 8 s soak against the demo model in a child process on loopback. Every
// request must get its designed answer (429 allowed), so no 5xx and no
// dropped connection but the truncated body's; every error body must be the
// envelope with the class's code; the server must still answer /health and
// exit cleanly; and its RSS after a forced GC may grow by at most 100 MB
// from the end of the warm-up, and from the idle server, to the end of the
// soak. Before fiber's ReduceMemoryUsage was set, each keep-alive
// connection kept the largest body buffer it had used (a decoded gzip bomb:
// 8 MiB and more): 200 to 350 MB more after the soak than after the warm-up.
func TestSoakHostile(t *testing.T) {
	if testing.Short() {
		t.Skip("a 10 s soak")
	}
	addr, proc := startSoakServer(t)
	base := "http://" + addr
	gcRSS := func(ctx context.Context) (int64, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/debug/gc", nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer k")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		stats, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("/debug/gc: %s", resp.Status)
		}
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", proc.Pid))
		var rss []string
		for l := range strings.Lines(string(st)) {
			if strings.HasPrefix(l, "RssAnon") || strings.HasPrefix(l, "VmRSS") || strings.HasPrefix(l, "VmHWM") {
				rss = append(rss, strings.Join(strings.Fields(l), " "))
			}
		}
		t.Logf("server after GC: %s; %s", stats, strings.Join(rss, ", "))
		return vmRSS(proc.Pid)
	}
	c := loadConfig{URL: base, APIKey: "k", Clients: 64, Hostile: 0.5, Warmup: 2 * time.Second, Duration: 8 * time.Second,
		MaxTokens: 4, Temperature: 0.7, MaxRequests: 1_000_000, RSSBoundMB: 100,
		rss: gcRSS, rssSource: "VmRSS of the server process after runtime.GC and debug.FreeOSMemory"}
	rep, err := soakTest(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	var summary bytes.Buffer
	printSoak(&summary, rep)
	t.Logf("soak report:\n%s", summary.String())

	valid, hostile := soakClasses()
	if len(rep.Classes) != len(valid)+len(hostile) {
		t.Fatalf("%d classes in the report, want %d", len(rep.Classes), len(valid)+len(hostile))
	}
	// The envelope code each hostile class must get (besides queue_full).
	wantCode := map[string]string{
		"gzip_bomb": "body_too_large", "long_model": "model_not_found", "unknown_method": "unknown_method",
		"conflicting_length": "bad_framing", "text_plain": "unsupported_content_type", "foreign_origin": "invalid_api_key",
		"multipart_json": "unsupported_content_type", "prompt_too_long": "prompt_too_long",
		"huge_max_tokens": "invalid_request_error[max_tokens]", "n_beyond_limit": "invalid_request_error[n]",
		"malformed_json": "invalid_request_error", "truncated_body": "invalid_request_error",
	}
	for _, cr := range rep.Classes {
		if cr.Count == 0 {
			t.Errorf("%s: never sent", cr.Class)
		}
		if cr.Failures != 0 {
			t.Errorf("%s: %d failures, first: %s", cr.Class, cr.Failures, cr.FirstFailure)
		}
		for st := range cr.Statuses {
			if n, err := strconv.Atoi(st); err == nil && n >= 500 {
				t.Errorf("%s: %d responses with status %s", cr.Class, cr.Statuses[st], st)
			}
		}
		if want, ok := wantCode[cr.Class]; ok {
			if cr.Codes[want] == 0 {
				t.Errorf("%s: never got code %q: codes %v", cr.Class, want, cr.Codes)
			}
			for code := range cr.Codes {
				if code != want && code != "queue_full" {
					t.Errorf("%s: code %q (%d times), want %q", cr.Class, code, cr.Codes[code], want)
				}
			}
		}
	}
	if rep.HostileRequests == 0 || rep.HostileRequests*3 < rep.Requests || rep.HostileRequests*3 > rep.Requests*2 {
		t.Errorf("%d hostile of %d requests, want about half", rep.HostileRequests, rep.Requests)
	}
	if rep.Failures != 0 || rep.Transport != 0 || rep.Unexpected5xx != 0 || rep.NonEnvelope != 0 || rep.BadStream != 0 {
		t.Errorf("failures: %+v", rep)
	}
	if rep.HealthAfter != http.StatusOK {
		t.Errorf("/health after the soak: %d", rep.HealthAfter)
	}
	if err := proc.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the server process is gone: %v", err)
	}
	if rep.RSSError != "" || rep.RSSWarmBytes <= 0 || rep.RSSAfterBytes <= 0 {
		t.Errorf("RSS not measured: %q", rep.RSSError)
	}
	if g := rep.RSSAfterBytes - rep.RSSWarmBytes; g > 100<<20 {
		t.Errorf("the server's RSS grew by %.1f MB during the soak (bound 100 MB)", mb(g))
	}
	// Memory a warm-up already retains (buffers kept per connection, say)
	// is not growth during the soak: hold the end to the idle server too.
	if g := rep.RSSAfterBytes - rep.RSSStartBytes; rep.RSSStartBytes <= 0 || g > 100<<20 {
		t.Errorf("the server's RSS is %.1f MB above the idle server's after the soak (bound 100 MB)", mb(g))
	}
	if !rep.OK {
		t.Errorf("the soak's verdict is not ok")
	}

	// The command line prints the same summary, its RSS from /metrics. That
	// RSS is read without a forced GC, so it counts garbage and pages the
	// runtime has not returned yet (up to hundreds of MB during this mix):
	// by default it is reported, not judged; the check above is the one
	// after a GC.
	var out, errOut bytes.Buffer
	err = runLoad([]string{"--url", base, "--api-key", "k", "--hostile", "0.5", "--clients", "8", "--warmup", "300ms",
		"--duration", "1s", "--max-tokens", "2"}, &out, &errOut)
	if err != nil {
		t.Fatalf("soo load --hostile: %v\n%s%s", err, out.String(), errOut.String())
	}
	text := out.String()
	t.Logf("soo load --hostile:\n%s", text)
	for _, want := range []string{"gzip_bomb *", "chat_stream", "process_resident_memory_bytes", "(no bound)", "health after  200", "verdict       ok"} {
		if !strings.Contains(text, want) {
			t.Errorf("soo load --hostile output lacks %q:\n%s", want, text)
		}
	}
	if slices.ContainsFunc(strings.Split(text, "\n"), func(l string) bool { return strings.Contains(l, "failures, first") }) {
		t.Errorf("soo load --hostile reported failures:\n%s", text)
	}
}

func TestSoakFlags(t *testing.T) {
	for _, args := range [][]string{{"--hostile", "1.5"}, {"--hostile", "-0.1"}, {"--hostile", "NaN"}, {"--hostile", "0.5", "--warmup", "-1s"},
		{"--hostile", "0.5", "--rss-bound-mb", "-1"}, {"--hostile", "0.5", "--url", "http://10.0.0.1:8080"}} {
		if err := runLoad(append([]string{"--duration", "1s"}, args...), io.Discard, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
