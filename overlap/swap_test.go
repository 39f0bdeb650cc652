package overlap_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/overlap"
)

func TestSwap(t *testing.T) {
	def := overlap.DefaultSwap()
	for _, tc := range []struct {
		table map[string]string
		in    string
		want  string
		n     int
	}{
		// Verbs are not conjugated: only listed words change.
		{def, "You want to steal the vase. If you had to recommend one room to yourself",
			"Bob want to steal the vase. If Bob had to recommend one room to Bob", 3},
		{def, "Is this your car?", "Is this Bob's car?", 1},
		{def, "Your car. YOUR car. your car.", "Bob's car. BOB'S car. Bob's car.", 3},
		{def, "YOU and you and You and yOu", "BOB and Bob and Bob and Bob", 4},
		{def, "yourself, yours, youth, you're, you'll", "Bob, yours, youth, you're, you'll", 1},
		{def, "'you' \"you\" (you) you.", "'Bob' \"Bob\" (Bob) Bob.", 4},
		{def, "you’re not you", "you’re not Bob", 1},
		{def, "bayou you_ 2you you2", "bayou you_ 2you you2", 0},
		{def, "nothing here", "nothing here", 0},
		{def, "", "", 0},
		{def, "Über you, naïve you", "Über Bob, naïve Bob", 2},
		// Multi-word keys win over their prefixes; spaces match one space.
		{map[string]string{"you are": "Bob is", "you": "Bob", "are": "is"}, "You are here; you  are there",
			"Bob is here; Bob  is there", 3},
		// Lower-case replacements are re-cased; an apostrophe key; deleting.
		{map[string]string{"i": "he", "me": "him", "i'm": "he's", "really": ""}, "I think I'm right, trust me. I REALLY do.",
			"He think He's right, trust him. He  do.", 5},
		{map[string]string{"me": "him"}, "ME, Me, mE", "HIM, Him, him", 3},
		// Keys are not rescanned: a swap that feeds another key applies once.
		{map[string]string{"you": "me", "me": "you"}, "you and me", "me and you", 2},
	} {
		sw, err := overlap.NewSwap(tc.table)
		if err != nil {
			t.Fatal(err)
		}
		got, n := sw.Apply(tc.in)
		if got != tc.want || n != tc.n {
			t.Errorf("Apply(%q) = %q, %d; want %q, %d", tc.in, got, n, tc.want, tc.n)
		}
	}
}

func TestSwapErrors(t *testing.T) {
	for _, tc := range []map[string]string{
		nil,
		{"": "Bob"},
		{" you": "Bob"},
		{"you'": "Bob"},
		{"You": "Bob", "you": "Bob"},
	} {
		if _, err := overlap.NewSwap(tc); !errors.Is(err, overlap.ErrInvalid) {
			t.Errorf("NewSwap(%q): err = %v, want ErrInvalid", tc, err)
		} else if ie := (*overlap.InputError)(nil); !errors.As(err, &ie) || ie.Param != "swap" {
			t.Errorf("NewSwap(%q): %v lacks param swap", tc, err)
		}
	}
}

// FuzzSwap checks that Apply never panics, changes nothing when it reports
// no replacement, and is the identity for an identity table.
func FuzzSwap(f *testing.F) {
	for _, s := range []string{"You and your yourself", "you're YOUR", "\xff you \xfe", "’you’", ""} {
		f.Add(s)
	}
	sw, _ := overlap.NewSwap(overlap.DefaultSwap())
	id, _ := overlap.NewSwap(map[string]string{"you": "you", "bob": "bob"})
	f.Fuzz(func(t *testing.T, s string) {
		out, n := sw.Apply(s)
		if n == 0 && out != s {
			t.Errorf("no replacement but %q -> %q", s, out)
		}
		if strings.Contains(strings.ToLower(out), "you") && n == 0 && strings.Contains(" "+strings.ToLower(s)+" ", " you ") {
			t.Errorf("%q: a spaced 'you' was not replaced", s)
		}
		if got, _ := id.Apply(strings.ToLower(s)); got != strings.ToLower(s) {
			t.Errorf("identity table changed %q to %q", strings.ToLower(s), got)
		}
	})
}
