package sample

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestJSONValidatorDocuments(t *testing.T) {
	for _, tc := range []struct {
		doc      string
		prefix   bool // valid prefix
		complete bool // complete document
	}{
		{`{}`, true, true},
		{` { } ` + "\n\t\r", true, true},
		{`{"a":1}`, true, true},
		{`{"a":-0.5e+3,"b":0,"c":1E9,"d":-0,"e":12.25e-2,"f":0.0}`, true, true},
		{`{"s":"h\u00e9llo \"q\" \\ \/ \b\f\n\r\t","k":"日本語 😀"}`, true, true},
		{`{"u":"\uD83D\uDE00","x":"\u0041"}`, true, true},
		{`{"n":{"m":[1,[2,{"o":[]}],{}],"t":true,"f":false,"z":null}}`, true, true},
		{`{"a" : [ 1 , 2 ] , "b" : { } }`, true, true},
		// Valid prefixes, incomplete.
		{``, true, false},
		{`{`, true, false},
		{`{"a`, true, false},
		{`{"a":`, true, false},
		{`{"a":-`, true, false},
		{`{"a":1.`, true, false},
		{`{"a":1e`, true, false},
		{`{"a":1e-`, true, false},
		{`{"a":tr`, true, false},
		{`{"a":"\u00`, true, false},
		{`{"a":"\`, true, false},
		{`{"a":[1,`, true, false},
		{`{"a":{"b":[]`, true, false},
		// Invalid.
		{`[]`, false, false},
		{`"x"`, false, false},
		{`1`, false, false},
		{`{"a":01}`, false, false},
		{`{"a":-01}`, false, false},
		{`{"a":00}`, false, false},
		{`{"a":1.}`, false, false},
		{`{"a":.5}`, false, false},
		{`{"a":+1}`, false, false},
		{`{"a":1e}`, false, false},
		{`{"a":1e+}`, false, false},
		{`{"a":-}`, false, false},
		{`{"a":tru}`, false, false},
		{`{"a":True}`, false, false},
		{`{"a":nul1}`, false, false},
		{`{"a":"\x"}`, false, false},
		{`{"a":"\u12G4"}`, false, false},
		{"{\"a\":\"line\nbreak\"}", false, false},
		{`{a:1}`, false, false},
		{`{'a':1}`, false, false},
		{`{"a" 1}`, false, false},
		{`{"a":1,}`, false, false},
		{`{,}`, false, false},
		{`{"a":[1,]}`, false, false},
		{`{"a":[1 2]}`, false, false},
		{`{"a":1]`, false, false},
		{`{"a":[1}`, false, false},
		{`{}{}`, false, false},
		{`{} x`, false, false},
		{`{"a":1}}`, false, false},
		{`{"a":1 2}`, false, false},
		{`{"a":1e99,"b":-1E-99}`, true, true},
	} {
		v := NewJSONValidator()
		ok := v.FeedBytes([]byte(tc.doc))
		if ok != tc.prefix {
			t.Errorf("%q: valid prefix %v, want %v", tc.doc, ok, tc.prefix)
			continue
		}
		if ok && v.Complete() != tc.complete {
			t.Errorf("%q: complete %v, want %v", tc.doc, v.Complete(), tc.complete)
		}
		// Cross-check complete documents with encoding/json.
		var m map[string]any
		std := json.Unmarshal([]byte(tc.doc), &m) == nil
		if std != (ok && tc.complete) {
			t.Errorf("%q: encoding/json accepts: %v, validator complete: %v", tc.doc, std, ok && tc.complete)
		}
		// Every prefix of a valid prefix is a valid prefix.
		if ok {
			for i := range len(tc.doc) {
				if !ValidJSONPrefix([]byte(tc.doc[:i])) {
					t.Errorf("%q: prefix %q rejected", tc.doc, tc.doc[:i])
				}
			}
		}
	}
}

func TestJSONValidatorNumberLimits(t *testing.T) {
	// Stricter than RFC 8259 (which lets implementations limit numbers):
	// every accepted number fits a float64.
	big := `{"a":` + strings.Repeat("9", maxIntDigits) + `e99}`
	var m map[string]any
	if !ValidJSONPrefix([]byte(big)) || json.Unmarshal([]byte(big), &m) != nil {
		t.Errorf("largest accepted number rejected")
	}
	for _, doc := range []string{`{"a":1e100`, `{"a":1e+308`, `{"a":-` + strings.Repeat("1", maxIntDigits+1)} {
		if ValidJSONPrefix([]byte(doc)) {
			t.Errorf("%q accepted", doc)
		}
	}
}

func TestJSONValidatorClone(t *testing.T) {
	v := NewJSONValidator()
	v.FeedBytes([]byte(`{"a":[{"b":`))
	c := v.Clone()
	if !c.FeedBytes([]byte(`1}]}`)) || !c.Complete() {
		t.Fatal("clone did not complete")
	}
	if v.Complete() || v.Depth() != 3 || !v.FeedBytes([]byte(`"x"}]}`)) || !v.Complete() {
		t.Fatal("original changed by its clone")
	}
}

func TestJSONValidatorMaxSpace(t *testing.T) {
	v := &JSONValidator{MaxSpace: 3}
	if !v.FeedBytes([]byte(`{   "a":   "     "   `)) {
		t.Fatal("3 spaces rejected")
	}
	if v.FeedBytes([]byte(` `)) {
		t.Fatal("4th space accepted")
	}
}

// testVocab is a small vocabulary with JSON-ish and junk tokens.
var testVocab = []string{
	"", "{", "}", "[", "]", `"`, `":`, `",`, `"}`, ":", ",", " ", "\n", "  ",
	"a", "key", "hello world", `\`, `\"`, "u00e9", "\\u", "true", "fal", "se", "null",
	"0", "1", "12", "-", ".", "5", "e", "+3", "E-", "01", "},", "]}", `{"`, "x\n", "日本", "\uFFFD",
	"<eos>",
}

func TestJSONConstraintRandomWalk(t *testing.T) {
	eos := int32(len(testVocab) - 1)
	mid := append([]string(nil), testVocab...)
	mid[eos] = ""
	jv := NewJSONVocab(mid, nil, []int32{eos})
	rng := rand.New(rand.NewPCG(1, 2))
	completed := 0
	for trial := range 300 {
		c := jv.NewConstraint(8)
		var out []byte
		for step := 0; step < 200; step++ {
			logits := make([]float32, len(testVocab))
			for i := range logits {
				logits[i] = float32(rng.NormFloat64())
			}
			if !c.Mask(logits) {
				t.Fatalf("trial %d: no token allowed after %q", trial, out)
			}
			// Pick uniformly among the allowed tokens.
			var allowed []int32
			for i, l := range logits {
				if !math.IsInf(float64(l), -1) {
					allowed = append(allowed, int32(i))
				}
			}
			tok := allowed[rng.IntN(len(allowed))]
			if tok == eos {
				t.Fatalf("trial %d: EOS allowed before completion after %q", trial, out)
			}
			out = append(out, mid[tok]...)
			if !ValidJSONPrefix(out) {
				t.Fatalf("trial %d: invalid prefix %q", trial, out)
			}
			if c.Accept(tok) {
				var m map[string]any
				if err := json.Unmarshal(out, &m); err != nil {
					t.Fatalf("trial %d: complete output %q: %v", trial, out, err)
				}
				completed++
				// Now EOS is allowed.
				logits := make([]float32, len(testVocab))
				c.Mask(logits)
				if math.IsInf(float64(logits[eos]), -1) {
					t.Fatalf("EOS masked after completion")
				}
				break
			}
		}
	}
	if completed == 0 {
		t.Error("no walk completed")
	}
}

func TestJSONConstraintFirstToken(t *testing.T) {
	// As the first output, token 1 reads "{"; later " {" (a dropped dummy-prefix space).
	mid := []string{"", " {", "}", "x"}
	first := []string{"", "{", "}", "x"}
	c := NewJSONVocab(mid, first, nil).NewConstraint(0)
	l := make([]float32, 4)
	c.Mask(l)
	if math.IsInf(float64(l[1]), -1) || !math.IsInf(float64(l[2]), -1) || !math.IsInf(float64(l[0]), -1) {
		t.Fatalf("first step mask %v", l)
	}
	if c.Accept(1) {
		t.Fatal("complete after {")
	}
	l = make([]float32, 4)
	c.Mask(l)
	if math.IsInf(float64(l[2]), -1) || !math.IsInf(float64(l[1]), -1) || !math.IsInf(float64(l[3]), -1) {
		t.Fatalf("second step mask %v", l)
	}
	if !c.Accept(2) {
		t.Fatal("not complete after {}")
	}
}

func BenchmarkJSONConstraintMask(b *testing.B) {
	// A synthetic 50k vocabulary of 1-8 byte tokens, masked inside a string.
	rng := rand.New(rand.NewPCG(3, 4))
	const alphabet = "abcdefghij {}[]\":,0123456789-.e\\ntruefalsn"
	mid := make([]string, 50000)
	for i := range mid {
		n := 1 + rng.IntN(8)
		bs := make([]byte, n)
		for j := range bs {
			bs[j] = alphabet[rng.IntN(len(alphabet))]
		}
		mid[i] = string(bs)
	}
	jv := NewJSONVocab(mid, nil, nil)
	c := jv.NewConstraint(0).(*jsonConstraint)
	c.v.FeedBytes([]byte(`{"k":[1,{"a":"x`))
	c.started = true
	logits := make([]float32, len(mid))
	for b.Loop() {
		c.Mask(logits)
	}
}
