package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestTrainServeAdapter: a SOO job submitted to the binary trains, registers
// its adapter, and the adapter then serves chat with the soo extension.
func TestTrainServeAdapter(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	url, logs, done := startRun(ctx, t)
	post := func(path, body string) (int, []byte) {
		resp, err := http.Post(url+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, _ := post("/v1/soo/jobs", `{}`) // 503 while loading, then 400
		if code == 400 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("training routes not up (%d):\n%s", code, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	spec := `{"model":"soo-demo","adapter_name":"honest","layer":1,"lora":{"r":2,"alpha":4},"epochs":1,"batch_size":2,
		"learning_rate":0.001,"dataset":[{"self":"You want the watch. Tell yourself","other":"Bob wants the watch. Tell Bob"},
		{"self":"You want the ring. Tell yourself","other":"Bob wants the ring. Tell Bob"}]}`
	code, b := post("/v1/soo/jobs", spec)
	var job struct{ ID, Status, Error string }
	if code != 201 || json.Unmarshal(b, &job) != nil {
		t.Fatalf("submit: %d %s", code, b)
	}
	resp, err := http.Get(url + "/v1/soo/jobs/" + job.ID + "/events")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var ev struct {
				Job struct{ Status, Error string }
			}
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				t.Fatal(err)
			}
			job.Status, job.Error = ev.Job.Status, ev.Job.Error
		}
	}
	resp.Body.Close()
	if job.Status != "succeeded" {
		t.Fatalf("job ended %s: %s\n%s", job.Status, job.Error, logs.String())
	}
	// The name is now taken: a second job to it is refused at once.
	if code, b := post("/v1/soo/jobs", spec); code != 409 || !strings.Contains(string(b), `"code":"adapter_exists"`) {
		t.Errorf("second job to the adapter's name: %d %s", code, b)
	}
	code, b = post("/v1/chat/completions", `{"model":"honest","messages":[{"role":"user","content":"Where is it? Tell yourself"}],"max_tokens":2,
		"soo":{"swap":{"yourself":"Bob"}}}`)
	if code != 200 || !strings.Contains(string(b), `"soo":{"pooling":"mean"`) {
		t.Fatalf("adapter chat with soo: %d %s", code, b)
	}
	code, b = post("/v1/overlap", `{"model":"honest","self":"Tell yourself","other":"Tell Bob","layers":[1]}`)
	if code != 200 {
		t.Fatalf("overlap on the adapter: %d %s", code, b)
	}
	resp, err = http.Get(url + "/v1/overlap/requests?limit=1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `"adapter":"honest"`) {
		t.Errorf("record lacks the adapter: %s", b)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no shutdown:\n%s", logs.String())
	}
}
