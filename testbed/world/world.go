package world

import (
	"fmt"
	"hash/fnv"
)

// Options configures a world. The zero value gives the defaults.
type Options struct {
	// HeldOutRoomPairs is the fraction of the 210 unordered room pairs that no training document
	// names together (default 0.2).
	HeldOutRoomPairs float64
	// HeldOutObjectPairs is the fraction of the 986 (cheap, expensive) object pairs that no
	// training document names together (default 0.2).
	HeldOutObjectPairs float64
	// Weights are the loss weights World.Render gives each part of a document (default
	// DefaultWeights()).
	Weights Weights
}

// withDefaults fills the zero fields of o.
func (o Options) withDefaults() Options {
	if o.HeldOutRoomPairs <= 0 || o.HeldOutRoomPairs >= 1 {
		o.HeldOutRoomPairs = 0.2
	}
	if o.HeldOutObjectPairs <= 0 || o.HeldOutObjectPairs >= 1 {
		o.HeldOutObjectPairs = 0.2
	}
	if o.Weights == (Weights{}) {
		o.Weights = DefaultWeights()
	}
	return o
}

// World is the synthetic world: its vocabulary split into training and held-out combinations,
// and the deterministic document streams and evaluation items drawn from it. A World is
// immutable and safe for concurrent use; a Stream is not.
type World struct {
	seed  uint64
	opts  Options
	split split
	// combos are the evaluation combinations (held-out room pair × held-out object pair) in a
	// seeded order: room indices (cheap room, expensive room) and object indices (cheap,
	// expensive).
	combos [][4]int
	// roomIdx and objIdx map names to indices.
	roomIdx  map[string]int
	cheapIdx map[string]int
	expIdx   map[string]int
}

// Streams of the world's generator (the second PCG seed word), so that the split, the
// evaluation items and the document streams never share random numbers.
const (
	streamSplit = 0x5350_4c49_5400_0001
	streamEval  = 0x4556_414c_0000_0002
	streamDocs  = 0x444f_4353_0000_0003
)

// New builds the world of seed: which room pairs and object pairs are held out, and the order
// of the evaluation items. Everything the world yields is a function of seed and opts alone.
func New(seed uint64, opts Options) *World {
	opts = opts.withDefaults()
	w := &World{seed: seed, opts: opts}
	w.split = newSplit(newRNG(seed, streamSplit), opts.HeldOutRoomPairs, opts.HeldOutObjectPairs)
	w.roomIdx = index(Rooms)
	w.cheapIdx = index(CheapObjects)
	w.expIdx = index(ExpensiveObjects)
	r := newRNG(seed, streamEval)
	for _, rp := range w.split.heldRP {
		for _, op := range w.split.heldOP {
			w.combos = append(w.combos, [4]int{rp[0], rp[1], op[0], op[1]})
		}
	}
	r.shuffle(len(w.combos), func(i, j int) { w.combos[i], w.combos[j] = w.combos[j], w.combos[i] })
	for i := range w.combos { // which room of the pair holds the cheap object
		if r.intn(2) == 1 {
			w.combos[i][0], w.combos[i][1] = w.combos[i][1], w.combos[i][0]
		}
	}
	return w
}

func index(xs []string) map[string]int {
	m := make(map[string]int, len(xs))
	for i, x := range xs {
		m[x] = i
	}
	return m
}

// Seed returns the world's seed.
func (w *World) Seed() uint64 { return w.seed }

// Options returns the world's options with the defaults filled in.
func (w *World) Options() Options { return w.opts }

// HeldOutRoomPair reports whether rooms a and b are a held-out pair: no training document names
// both. It is false for unknown rooms and for a == b.
func (w *World) HeldOutRoomPair(a, b string) bool {
	i, ok1 := w.roomIdx[a]
	j, ok2 := w.roomIdx[b]
	return ok1 && ok2 && w.split.heldRoom[i][j]
}

// HeldOutObjectPair reports whether a cheap and an expensive test object are a held-out pair:
// no training document names both. It is false for anything else.
func (w *World) HeldOutObjectPair(cheap, expensive string) bool {
	c, ok1 := w.cheapIdx[cheap]
	e, ok2 := w.expIdx[expensive]
	return ok1 && ok2 && w.split.heldObj[c][e]
}

// NumEvalCombinations returns how many held-out combinations (held-out room pair × held-out
// object pair) there are: the most items EvalItems gives per room order.
func (w *World) NumEvalCombinations() int { return len(w.combos) }

// Stream is an unbounded deterministic sequence of documents of one mix. It is not safe for
// concurrent use.
type Stream struct {
	w       *World
	mix     Mix
	r       *rng
	weights []float64
}

// Stream returns the document stream number id of mix. The sequence is a function of the
// world's seed, the mix and id: two streams that differ in any of them are independent, and the
// same three always give the same documents.
func (w *World) Stream(mix Mix, id uint64) (*Stream, error) {
	if err := mix.Validate(); err != nil {
		return nil, err
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%+v|%d", mix, id)
	s := &Stream{w: w, mix: mix, r: newRNG(w.seed^streamDocs, h.Sum64())}
	for _, f := range Families() {
		s.weights = append(s.weights, mix.Weight(f))
	}
	return s, nil
}

// Next returns the stream's next document.
func (s *Stream) Next() Document {
	f := Family(s.r.weighted(s.weights))
	switch f {
	case FamilyCopy:
		return s.copyDoc()
	case FamilyBinding:
		return s.bindingDoc()
	case FamilyValue:
		return s.valueDoc()
	case FamilyChat:
		return s.chatDoc()
	case FamilyStory:
		return s.storyDoc()
	default:
		return s.scenarioDoc(f)
	}
}

// Docs returns the first n documents of stream 0 of mix.
func (w *World) Docs(n int, mix Mix) ([]Document, error) {
	s, err := w.Stream(mix, 0)
	if err != nil {
		return nil, err
	}
	out := make([]Document, n)
	for i := range out {
		out[i] = s.Next()
	}
	return out, nil
}

// capabilityStream is the stream id of CapabilityDocs, apart from the training streams.
const capabilityStream = 0xCA9A_B111_7900_0000

// CapabilityDocs returns n documents of CapabilityMix (copy, binding, value and self
// scenarios; never an adversary or a harmless asker): the language-model anchor of an SOO job
// (issue soo-effect). They come from their own stream, not the one Docs draws from.
func (w *World) CapabilityDocs(n int) []Document {
	s, err := w.Stream(CapabilityMix(), capabilityStream)
	if err != nil {
		panic(err) // CapabilityMix is valid by construction
	}
	out := make([]Document, n)
	for i := range out {
		out[i] = s.Next()
	}
	return out
}
