package cpu

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// spinFor is how long an idle worker keeps looking for the next parallel
// loop before it parks. A decode step runs about 150 products back to back
// with a few microseconds of serial work between them; a goroutine woken from
// a parked thread for each of them started late and claimed about a third of
// the work its caller did (measured on this project's 2-core machine, see
// BENCHMARKS.md). Spinning yields the processor, so it never keeps another
// goroutine from running.
const spinFor = 500 * time.Microsecond

// yieldEvery is how many polls of an atomic a spinning goroutine makes
// between calls to runtime.Gosched: yielding on every poll took the
// scheduler's lock so often that it slowed the working threads (7% of a
// batched decode step's profile in lock2/unlock2).
const yieldEvery = 128

// workerPool runs parallel loops on long-lived helper goroutines and the
// calling goroutine together. It belongs to one Executor and is stopped when
// the Executor is garbage (its helpers never refer to the Executor).
type workerPool struct {
	helpers int
	busy    sync.Mutex // held by the caller of run; a concurrent second caller runs its loop alone
	gen     atomic.Uint64
	job     atomic.Pointer[poolJob]
	parked  []atomic.Bool
	wake    []chan struct{}
	quit    chan struct{}
}

// poolJob is one parallel loop: chunks of grain items of [0, n), claimed one
// at a time.
type poolJob struct {
	n, grain, chunks int
	fn               func(lo, hi int)
	next, done       atomic.Int64
}

// newWorkerPool starts threads-1 helpers.
func newWorkerPool(threads int) *workerPool {
	h := max(threads-1, 0)
	p := &workerPool{helpers: h, parked: make([]atomic.Bool, h), wake: make([]chan struct{}, h), quit: make(chan struct{})}
	for i := range h {
		p.wake[i] = make(chan struct{}, 1)
		go p.helper(i)
	}
	return p
}

// stop ends the helpers once they are idle.
func (p *workerPool) stop() { close(p.quit) }

// run calls fn over [0, n) in contiguous chunks of grain items, claimed one
// at a time by the caller and the helpers, so a late or slow thread never
// holds the others up. It runs inline when there is a single chunk, no
// helper, or another loop is already running on the pool.
func (p *workerPool) run(n, grain int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	grain = max(grain, 1)
	chunks := (n + grain - 1) / grain
	if chunks == 1 || p.helpers == 0 || !p.busy.TryLock() {
		fn(0, n)
		return
	}
	defer p.busy.Unlock()
	j := &poolJob{n: n, grain: grain, chunks: chunks, fn: fn}
	p.job.Store(j)
	p.gen.Add(1)
	for i := range p.parked {
		if p.parked[i].Load() {
			select {
			case p.wake[i] <- struct{}{}:
			default:
			}
		}
	}
	j.work()
	for spins := 1; j.done.Load() < int64(chunks); spins++ {
		if spins%yieldEvery == 0 {
			runtime.Gosched()
		}
	}
}

// work claims and runs chunks until none is left.
func (j *poolJob) work() {
	for {
		c := int(j.next.Add(1)) - 1
		if c >= j.chunks {
			return
		}
		lo := c * j.grain
		j.fn(lo, min(lo+j.grain, j.n))
		j.done.Add(1)
	}
}

// helper is helper goroutine i: it takes every new job, spins for spinFor
// after its last one, then parks until run wakes it.
func (p *workerPool) helper(i int) {
	var seen uint64 // gen starts at 0: a job submitted before this goroutine runs is not missed
	for {
		idle := time.Now()
		for spins := 0; p.gen.Load() == seen; spins++ {
			if spins%yieldEvery != yieldEvery-1 {
				continue // a plain load of gen: cheap while no job is posted
			}
			if time.Since(idle) > spinFor {
				// Park. run stores gen before it reads parked, and this
				// goroutine stores parked before it reads gen, so one of
				// them sees the other: no job is missed.
				p.parked[i].Store(true)
				if p.gen.Load() == seen {
					select {
					case <-p.wake[i]:
					case <-p.quit:
						return
					}
				}
				p.parked[i].Store(false)
				idle = time.Now()
				continue
			}
			runtime.Gosched()
		}
		seen = p.gen.Load()
		p.job.Load().work()
	}
}
