package adapterstest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// RedisServer is a private redis-server a test controls: it can stop it (a
// Redis that is down) or pause it with SIGSTOP (a Redis that accepts
// connections but never answers).
type RedisServer struct {
	URL    string // redis://127.0.0.1:PORT/0
	Addr   string // 127.0.0.1:PORT
	cmd    *exec.Cmd
	exited chan struct{}
}

// StartRedisServer starts a private redis-server on a free loopback port in
// a temporary directory and ends it (resuming it first if paused) when the
// test ends. The test is skipped, loudly, only when redis-server is not
// installed.
func StartRedisServer(t testing.TB) *RedisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Log("**************************************************************")
		t.Log("SKIPPING: redis-server is not installed (apt-get install redis-server; .ci/run does)")
		t.Log("**************************************************************")
		t.Skip("redis-server not installed")
	}
	dir := t.TempDir()
	for attempt := 0; attempt < 5; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				deadline = time.Time{}
				continue
			default:
			}
			if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
				c.Close()
				r := &RedisServer{URL: "redis://" + addr + "/0", Addr: addr, cmd: cmd, exited: exited}
				t.Cleanup(r.Stop)
				return r
			}
			time.Sleep(20 * time.Millisecond)
		}
		cmd.Process.Kill()
		<-exited
		t.Logf("redis-server on port %d did not start (retrying): %s", port, out.String())
	}
	t.Fatal("could not start redis-server")
	return nil
}

// Stop ends the server (resuming it first if paused) and waits for it to
// exit; stopping it again does nothing.
func (r *RedisServer) Stop() {
	select {
	case <-r.exited:
		return
	default:
	}
	r.Resume()
	r.cmd.Process.Signal(os.Interrupt)
	select {
	case <-r.exited:
	case <-time.After(5 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
	}
}
