package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"testing"
	"time"

	"github.com/sooserve/sooserve/internal/demo"
	"github.com/sooserve/sooserve/server"
)

func TestLoadAgainstDemoServer(t *testing.T) {
	dir := t.TempDir()
	if err := demo.Write(dir); err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Options{APIKey: "k"})
	b, err := server.LoadBase(dir, server.LoadOptions{ID: demo.Name, Threads: 2, MaxBatch: 4})
	if err != nil {
		t.Fatal(err)
	}
	srv.SetModels(server.Single{Base: b})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		b.Sched.Close(ctx)
	}()
	var out bytes.Buffer
	err = runLoad([]string{"--url", "http://" + ln.Addr().String(), "--api-key", "k", "--clients", "3",
		"--duration", "1500ms", "--max-tokens", "6", "--max-requests", "40", "--json"}, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var rep loadReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if rep.Requests == 0 || rep.Errors != 0 || rep.CompletionTokens == 0 || rep.TokensPerSecond <= 0 || rep.TTFTP50ms <= 0 || rep.TTFTP99ms < rep.TTFTP50ms {
		t.Errorf("report %+v", rep)
	}
	if rep.Requests > 40 {
		t.Errorf("%d requests beyond --max-requests", rep.Requests)
	}
}

func TestLoadRefusesRemote(t *testing.T) {
	for _, u := range []string{"http://10.0.0.1:8080", "http://example.com", "ftp://127.0.0.1"} {
		if err := runLoad([]string{"--url", u, "--duration", "1s"}, io.Discard, io.Discard); err == nil {
			t.Errorf("%s accepted", u)
		}
	}
}
