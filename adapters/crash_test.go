package adapters_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/adapters/adapterstest"
)

const crashChildEnv = "SOO_ADAPTERS_CRASH_CHILD_DIR"

// TestMain lets the test binary double as the child of TestCrashDuringUpload.
func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		return
	}
	os.Exit(m.Run())
}

// crashChild uploads, replaces and deletes adapters in a loop until killed.
func crashChild(dir string) {
	base := tinyLlama(nil)
	st, err := adapters.OpenDisk(dir, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	r, err := adapters.Open(context.Background(), adapters.Options{Base: base, BaseID: "tiny-llama", Store: st})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println("ready")
	ctx := context.Background()
	for i := uint64(0); ; i++ {
		name := fmt.Sprintf("a%d", i%4)
		f := adapterstest.Random(base, 4, []string{"q_proj", "v_proj", "down_proj"}, i, 0.1)
		if i%7 == 6 {
			r.Delete(ctx, name)
			continue
		}
		if _, err := r.Put(ctx, name, f, true); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
	}
}

// TestCrashDuringUpload kills a process that uploads in a loop at random
// moments and checks the store it leaves behind: every listed adapter loads
// and matches its sha256, and no temporary file or unreferenced blob is left.
func TestCrashDuringUpload(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	base := tinyLlama(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	total := 0
	for round := range 5 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 6)
		if _, err := out.Read(buf); err != nil {
			t.Fatalf("child did not start: %v", err)
		}
		time.Sleep(time.Duration(50+rng.IntN(250)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		st, err := adapters.OpenDisk(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		recs, err := st.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		refs := map[string]bool{}
		for _, rec := range recs {
			refs[rec.SHA256], refs[rec.ConfigSHA256] = true, true
			got, f, err := st.Load(ctx, rec.Name)
			if err != nil {
				t.Fatalf("round %d: %s does not load: %v", round, rec.Name, err)
			}
			if adapters.Sum(f.Weights) != got.SHA256 || got.Version != rec.Version {
				t.Fatalf("round %d: %s does not match its record", round, rec.Name)
			}
			if _, _, err := adapters.Validate(rec.Name, f, base, adapters.Limits{}); err != nil {
				t.Fatalf("round %d: %s is torn: %v", round, rec.Name, err)
			}
		}
		blobs, _ := os.ReadDir(filepath.Join(dir, "blobs"))
		tmps, _ := os.ReadDir(filepath.Join(dir, "tmp"))
		if len(blobs) != len(refs) || len(tmps) != 0 {
			t.Errorf("round %d: %d records referencing %d blobs; %d blobs, %d temporary files on disk", round, len(recs), len(refs), len(blobs), len(tmps))
		}
		total += len(recs)
	}
	if total == 0 {
		t.Error("the child never stored an adapter")
	}
}
