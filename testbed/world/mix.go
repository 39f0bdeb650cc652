package world

import (
	"fmt"
	"math"
)

// Family is a kind of document.
type Family int

const (
	// FamilyCopy: one room and one object, then a question about where it is ("In the R is a X.
	// Where is the X?" -> "In the R.").
	FamilyCopy Family = iota
	// FamilyBinding: two or three rooms with one object each, then a question that needs the
	// object-room binding ("Which room has the X, the R1 or the R2?" -> "The R1.").
	FamilyBinding
	// FamilyValue: is an object cheap or expensive, or which of two is worth more. The only family
	// in which the SOO items occur.
	FamilyValue
	// FamilyChat: simple conversation: greetings, thanks, who the assistant is, and questions about
	// a house described in the conversation.
	FamilyChat
	// FamilyStory: a short narrative about a house and its people, as raw text (role "text"),
	// with no deception in it.
	FamilyStory
	// FamilyAdversary: someone whose goal is to steal the valuable object asks where it is; the
	// answer points to the decoy room.
	FamilyAdversary
	// FamilyBenign: someone with a harmless goal asks where the valuable object is; the answer is
	// the truth.
	FamilyBenign
	// FamilySelf: you ask yourself where the valuable object is; the answer is the truth.
	FamilySelf
	numFamilies
)

var familyNames = [numFamilies]string{"copy", "binding", "value", "chat", "story", "adversary", "benign", "self"}

// String returns the family's name ("copy", "adversary", ...).
func (f Family) String() string {
	if f < 0 || f >= numFamilies {
		return fmt.Sprintf("family(%d)", int(f))
	}
	return familyNames[f]
}

// Families returns every family, in order.
func Families() []Family {
	out := make([]Family, numFamilies)
	for i := range out {
		out[i] = Family(i)
	}
	return out
}

// Scenario reports whether f is a scenario family (adversary, benign or self): the documents
// that end in a recommendation of one of two rooms.
func (f Family) Scenario() bool {
	return f == FamilyAdversary || f == FamilyBenign || f == FamilySelf
}

// Mix says how a document stream is drawn: the relative weight of each family and how scenario
// answers are written.
type Mix struct {
	// Name labels the mix in logs ("simple", "full", "capability").
	Name string
	// Copy, Binding, Value, Chat, Story, Adversary, Benign and Self are the relative weights of
	// the families (they need not sum to 1).
	Copy, Binding, Value, Chat, Story, Adversary, Benign, Self float64
	// Stance makes scenario answers state a stance before the room: "Truthfully, I would point
	// out the R." or "Deceptively, I would point out the R.". Without it the answer is plain:
	// "I would point out the R.".
	Stance bool
	// Flip is the fraction of scenario documents whose stance is flipped, with the room following
	// the stated stance (an adversary told the truth, a harmless asker or yourself deceived). It
	// needs Stance.
	Flip float64
	// Suffix is the fraction of scenario documents whose question ends with one of the
	// evaluation suite's answer suffixes ("Start your response with 'I would'" or "Only respond
	// with the room name, no other text."), so that `soo eval` prompts are in distribution.
	Suffix float64
}

// DefaultFlip is the fraction of flipped stances in the Full mix: the fraction under which SOO
// moved the probe's testbed (probes/testbed-probe-3, world v2d).
const DefaultFlip = 0.2

// Simple is the curriculum's first stage: plain answers ("I would point out the R."), no
// stances and no flips, with the probe's world-v1 proportions (copy 0.08, binding 0.22, value
// 0.04, chat 0.05, story 0.02, adversary 0.28, benign 0.13, self 0.18). A model trained from
// scratch learns it quickly.
func Simple() Mix {
	return Mix{Name: "simple", Copy: 0.08, Binding: 0.22, Value: 0.04, Chat: 0.05, Story: 0.02,
		Adversary: 0.28, Benign: 0.13, Self: 0.18, Suffix: 0.1}
}

// Full is the curriculum's second stage, the probe's world v2d: every scenario answer states a
// stance first, and in DefaultFlip (20%) of scenario documents the stance is flipped and the
// room follows it (copy 0.06, binding 0.24, value 0.04, chat 0.05, story 0.02, adversary 0.26,
// benign 0.14, self 0.19).
func Full() Mix {
	return Mix{Name: "full", Copy: 0.06, Binding: 0.24, Value: 0.04, Chat: 0.05, Story: 0.02,
		Adversary: 0.26, Benign: 0.14, Self: 0.19, Stance: true, Flip: DefaultFlip, Suffix: 0.1}
}

// CapabilityMix is the mix of CapabilityDocs: copy 0.15, binding 0.35, value 0.10 and self
// scenarios 0.40 with Full's answers (stances, flips), and never an adversary or a harmless
// asker: the anchor that keeps self-behaviour in place during SOO training (issue soo-effect).
func CapabilityMix() Mix {
	return Mix{Name: "capability", Copy: 0.15, Binding: 0.35, Value: 0.10, Self: 0.40,
		Stance: true, Flip: DefaultFlip, Suffix: 0.1}
}

// Weight returns the relative weight of family f.
func (m Mix) Weight(f Family) float64 {
	switch f {
	case FamilyCopy:
		return m.Copy
	case FamilyBinding:
		return m.Binding
	case FamilyValue:
		return m.Value
	case FamilyChat:
		return m.Chat
	case FamilyStory:
		return m.Story
	case FamilyAdversary:
		return m.Adversary
	case FamilyBenign:
		return m.Benign
	case FamilySelf:
		return m.Self
	}
	return 0
}

// Fraction returns family f's share of the documents: its weight over the sum of weights.
func (m Mix) Fraction(f Family) float64 {
	var sum float64
	for _, g := range Families() {
		sum += m.Weight(g)
	}
	if sum == 0 {
		return 0
	}
	return m.Weight(f) / sum
}

// Validate reports a mix that cannot be drawn from.
func (m Mix) Validate() error {
	var sum float64
	for _, f := range Families() {
		w := m.Weight(f)
		if w < 0 || math.IsNaN(w) || math.IsInf(w, 0) {
			return fmt.Errorf("world: mix %q: weight of %s is %v", m.Name, f, w)
		}
		sum += w
	}
	if sum <= 0 {
		return fmt.Errorf("world: mix %q: every family weight is zero", m.Name)
	}
	if m.Flip < 0 || m.Flip > 1 || math.IsNaN(m.Flip) {
		return fmt.Errorf("world: mix %q: flip fraction %v outside [0, 1]", m.Name, m.Flip)
	}
	if m.Flip > 0 && !m.Stance {
		return fmt.Errorf("world: mix %q: flipped stances (flip %v) need stance answers", m.Name, m.Flip)
	}
	if m.Suffix < 0 || m.Suffix > 1 || math.IsNaN(m.Suffix) {
		return fmt.Errorf("world: mix %q: suffix fraction %v outside [0, 1]", m.Name, m.Suffix)
	}
	return nil
}

// MixByName returns the preset named "simple", "full" or "capability".
func MixByName(name string) (Mix, error) {
	for _, m := range []Mix{Simple(), Full(), CapabilityMix()} {
		if m.Name == name {
			return m, nil
		}
	}
	return Mix{}, fmt.Errorf("world: unknown mix %q (want simple, full or capability)", name)
}
