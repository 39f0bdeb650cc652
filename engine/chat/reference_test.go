package chat

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The files under testdata/chat/expected and testdata/chat/features.json are
// written by scripts/reference/render_chat_fixtures.py, which renders the
// same templates with Python Jinja2 configured like transformers'
// apply_chat_template. These tests compare gonja's output against them.

const testdataDir = "../../testdata/chat"

type refCase struct {
	Name                string                     `json:"name"`
	Messages            []Message                  `json:"messages"`
	AddGenerationPrompt bool                       `json:"add_generation_prompt"`
	Extra               map[string]json.RawMessage `json:"extra"`
	Expected            *string                    `json:"expected"`
	Error               *string                    `json:"error"`
}

type refFile struct {
	Model string    `json:"model"`
	Now   time.Time `json:"now"`
	Cases []refCase `json:"cases"`
}

func extraVars(raw map[string]json.RawMessage) map[string]any {
	if len(raw) == 0 {
		return nil
	}
	out := make(map[string]any, len(raw))
	for k, v := range raw {
		out[k] = v
	}
	return out
}

func TestReferenceModels(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(testdataDir, "expected", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no reference files: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var ref refFile
		if err := json.Unmarshal(b, &ref); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		t.Run(ref.Model, func(t *testing.T) {
			tpl, err := LoadTemplate(filepath.Join(testdataDir, "models", ref.Model))
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range ref.Cases {
				t.Run(c.Name, func(t *testing.T) {
					got, err := tpl.Render(context.Background(), c.Messages, RenderOptions{
						AddGenerationPrompt: c.AddGenerationPrompt,
						Extra:               extraVars(c.Extra),
						Now:                 func() time.Time { return ref.Now },
					})
					checkResult(t, got, err, c.Expected, c.Error)
				})
			}
		})
	}
}

func checkResult(t *testing.T, got string, err error, want, wantErr *string) {
	t.Helper()
	if wantErr != nil {
		var te *TemplateError
		if !errors.As(err, &te) {
			t.Fatalf("want raise_exception error %q, got output %q, err %v", *wantErr, got, err)
		}
		if te.Message != *wantErr {
			t.Fatalf("error message = %q, want %q", te.Message, *wantErr)
		}
		return
	}
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
	if got != *want {
		t.Errorf("output mismatch\n got: %q\nwant: %q", got, *want)
	}
}

// unsupportedFeatures lists features.json cases where gonja v2 is known to
// differ from Jinja2; they are documented in README.md.
var unsupportedFeatures = map[string]string{
	"none-rendering": "gonja prints none as an empty string, Jinja2 as \"None\"",
}

func TestReferenceFeatures(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(testdataDir, "features.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ref struct {
		Now      time.Time `json:"now"`
		Messages []Message `json:"messages"`
		Cases    []struct {
			Name     string                     `json:"name"`
			Template string                     `json:"template"`
			Vars     map[string]json.RawMessage `json:"vars"`
			Expected *string                    `json:"expected"`
			Error    *string                    `json:"error"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatal(err)
	}
	for _, c := range ref.Cases {
		t.Run(c.Name, func(t *testing.T) {
			if why, ok := unsupportedFeatures[c.Name]; ok {
				t.Skip("known gonja difference: " + why)
			}
			tpl, err := New(c.Template, "<s>", "</s>")
			if err != nil {
				t.Fatal(err)
			}
			msgs := ref.Messages
			if raw, ok := c.Vars["messages"]; ok {
				msgs = nil
				if err := json.Unmarshal(raw, &msgs); err != nil {
					t.Fatal(err)
				}
			}
			extra := map[string]any{}
			for k, v := range c.Vars {
				if k != "messages" {
					extra[k] = v
				}
			}
			got, err := tpl.Render(context.Background(), msgs, RenderOptions{
				Extra: extra,
				Now:   func() time.Time { return ref.Now },
			})
			checkResult(t, got, err, c.Expected, c.Error)
		})
	}
}
