package cpu

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWorkerPool checks that every index runs exactly once, with helpers
// spinning, parked (after an idle spell longer than spinFor) and busy with
// another caller's loop.
func TestWorkerPool(t *testing.T) {
	for _, threads := range []int{1, 2, 4} {
		p := newWorkerPool(threads)
		check := func(n, grain int) {
			t.Helper()
			hits := make([]atomic.Int32, n)
			p.run(n, grain, func(lo, hi int) {
				for i := lo; i < hi; i++ {
					hits[i].Add(1)
				}
			})
			for i := range hits {
				if h := hits[i].Load(); h != 1 {
					t.Fatalf("threads %d, n %d, grain %d: index %d ran %d times", threads, n, grain, i, h)
				}
			}
		}
		for _, c := range [][2]int{{0, 4}, {1, 4}, {100, 7}, {1000, 1}, {10, 3}} {
			check(c[0], c[1])
		}
		time.Sleep(3 * spinFor) // helpers park
		check(1000, 3)
		var wg sync.WaitGroup
		for range 4 { // concurrent callers: one uses the helpers, the others run alone
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 50 {
					check(257, 2)
				}
			}()
		}
		wg.Wait()
		p.stop()
	}
}

// TestWorkerPoolUsesHelpers checks that a helper takes part in a loop: a
// chunk that waits for another chunk to start can only finish if two
// goroutines run them at once.
func TestWorkerPoolUsesHelpers(t *testing.T) {
	p := newWorkerPool(2)
	defer p.stop()
	for round := range 20 {
		if round%2 == 1 {
			time.Sleep(2 * spinFor) // from parked, too
		}
		var started atomic.Int32
		ok := true
		p.run(2, 1, func(lo, hi int) {
			started.Add(1)
			deadline := time.Now().Add(5 * time.Second)
			for started.Load() < 2 {
				if time.Now().After(deadline) {
					ok = false
					return
				}
				time.Sleep(10 * time.Microsecond)
			}
		})
		if !ok {
			t.Fatalf("round %d: the two chunks never ran at the same time", round)
		}
	}
}
