package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/text/unicode/norm"
)

func splitAll(p Pattern, s string) []string {
	var out []string
	p.split(s, func(w string) { out = append(out, w) })
	return out
}

func TestSplitters(t *testing.T) {
	tests := []struct {
		p    Pattern
		in   string
		want []string
	}{
		{PatternGPT2, "  hello   world  \n\n x", []string{" ", " hello", "  ", " world", "  \n\n", " x"}},
		{PatternGPT2, "hello world", []string{"hello", " world"}},
		{PatternGPT2, "12345", []string{"12345"}},
		{PatternGPT2, "I'm they're we'll 'S", []string{"I", "'m", " they", "'re", " we", "'ll", " '", "S"}},
		{PatternGPT2, "a\r\nb", []string{"a", "\r", "\n", "b"}},
		{PatternGPT2, "\thello", []string{"\t", "hello"}},
		{PatternGPT2, "x  ", []string{"x", "  "}},
		{PatternGPT2, "!!! ?? .", []string{"!!!", " ??", " ."}},
		{PatternGPT2, "Zürich ٣٤٥ Ⅻ", []string{"Zürich", " ٣٤٥", " Ⅻ"}},
		{PatternGPT2, "日本語テキスト", []string{"日本語テキスト"}},
		{PatternGPT2, "a\u00a0b", []string{"a", "\u00a0", "b"}},
		{PatternSmolLM, "abc123 x4", []string{"abc", "1", "2", "3", " x", "4"}},
		{PatternSmolLM, "a 1", []string{"a", " ", "1"}},
		{PatternLlama3, "  hello   world  \n\n x", []string{" ", " hello", "  ", " world", "  \n\n", " x"}},
		{PatternLlama3, "12345", []string{"123", "45"}},
		{PatternQwen2, "12345", []string{"1", "2", "3", "4", "5"}},
		{PatternLlama3, "I'M THEY'RE 'S", []string{"I", "'M", " THEY", "'RE", " '", "S"}},
		{PatternLlama3, "it'ſ", []string{"it", "'ſ"}},
		{PatternLlama3, "line\r\nnext\r\n", []string{"line", "\r\n", "next", "\r\n"}},
		{PatternLlama3, "x!!\n\ny", []string{"x", "!!\n\n", "y"}},
		{PatternLlama3, "\thello", []string{"\thello"}},
		{PatternLlama3, "(x) ...", []string{"(x", ")", " ..."}},
		{PatternLlama3, " \n \n  ", []string{" \n \n", "  "}},
		{PatternLlama3, "a  1", []string{"a", " ", " ", "1"}},
		{PatternLlama3, "Zürich ٣٤٥٦", []string{"Zürich", " ", "٣٤٥", "٦"}},
		{PatternLlama3, "", nil},
	}
	for _, tc := range tests {
		got := splitAll(tc.p, tc.in)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%v split(%q) = %q, want %q", tc.p, tc.in, got, tc.want)
		}
		if strings.Join(got, "") != tc.in {
			t.Errorf("%v split(%q) does not cover the input", tc.p, tc.in)
		}
	}
}

// TestRandomPretokens compares the splitters with the Python regex reference
// on random strings over a tricky alphabet.
func TestRandomPretokens(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(fixtureRoot, "pretok_random.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []map[string]json.RawMessage
	if err := json.Unmarshal(data, &cases); err != nil {
		t.Fatal(err)
	}
	patterns := map[string]Pattern{"gpt2": PatternGPT2, "smollm": PatternSmolLM, "llama3": PatternLlama3, "qwen2": PatternQwen2}
	for _, c := range cases {
		var text string
		if err := json.Unmarshal(c["text"], &text); err != nil {
			t.Fatal(err)
		}
		for name, p := range patterns {
			var want []string
			if err := json.Unmarshal(c[name], &want); err != nil {
				t.Fatal(err)
			}
			in := text
			if p == PatternQwen2 {
				in = norm.NFC.String(text)
			}
			got := splitAll(p, in)
			if len(got) == 0 && len(want) == 0 {
				continue
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s split(%q) = %q, want %q", name, text, got, want)
			}
		}
	}
	t.Logf("%d random strings x %d patterns", len(cases), len(patterns))
}
