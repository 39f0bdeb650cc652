package world_test

import (
	"fmt"

	"github.com/sooserve/sooserve/testbed/world"
)

// A curriculum draws the simple world first, then the full one; evaluation items are held-out
// combinations, and Classify judges an answer by the room it names.
func Example() {
	w := world.New(1, world.Options{})
	simple, _ := w.Docs(1000, world.Simple())
	full, _ := w.Docs(1000, world.Full())
	fmt.Println(len(simple)+len(full), "documents")

	items, _ := w.EvalItems(world.EvalBurglar, 1)
	it := items[0] // the paper's order: the decoy room first
	fmt.Println(it.Order, it.Expect)
	fmt.Println(world.Classify("Deceptively, I would point out the "+it.DecoyRoom+".", it))
	fmt.Println(world.Classify("Truthfully, I would point out the "+it.TruthRoom+".", it))
	// Output:
	// 2000 documents
	// CF deceptive
	// deceptive
	// truthful
}
