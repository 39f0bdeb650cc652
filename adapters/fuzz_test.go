package adapters_test

import (
	"bytes"
	"errors"
	"mime"
	"testing"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/adapters/adapterstest"
)

// FuzzUpload feeds the upload parser and the validator random multipart
// bodies, config JSON and safetensors bytes: they never panic, and every
// error is typed (ErrInvalid or ErrTooLarge).
func FuzzUpload(f *testing.F) {
	base := tinyLlama(f)
	good := testFiles(f, "tiny-llama-lora-qv")
	small := adapterstest.Random(base, 2, []string{"q_proj"}, 3, 0.1)
	body, ct := adapterstest.Multipart("x", small)
	_, params, _ := mime.ParseMediaType(ct)
	f.Add(body, params["boundary"], "x", small.Config, small.Weights)
	f.Add([]byte("--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nx\r\n--b--\r\n"), "b", "n", good.Config, good.Weights[:100])
	f.Add([]byte{}, "", "", []byte(`{"peft_type":"LORA","r":1,"target_modules":"all-linear"}`), []byte{8, 0, 0, 0, 0, 0, 0, 0, '{', '}'})
	f.Add([]byte("--b\r\n\r\n--b--"), "b", "a.b", []byte(`{"peft_type":"LORA","r":2,"use_dora":true}`), small.Weights[:len(small.Weights)/2])
	lim := adapters.Limits{MaxRank: 64, MaxBytes: 1 << 20}
	check := func(t *testing.T, what string, err error) {
		if err != nil && !errors.Is(err, adapters.ErrInvalid) && !errors.Is(err, adapters.ErrTooLarge) {
			t.Fatalf("%s: untyped error %v", what, err)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, boundary, name string, cfg, weights []byte) {
		u, err := adapters.ReadUpload(bytes.NewReader(body), boundary, lim)
		check(t, "ReadUpload", err)
		if err == nil {
			_, _, err = adapters.Validate(u.Name, u.Files, base, lim)
			check(t, "Validate(parsed body)", err)
		}
		// The same files through a well-formed body.
		mb, mct := adapterstest.Multipart(name, adapters.Files{Config: cfg, Weights: weights})
		_, params, _ := mime.ParseMediaType(mct)
		u, err = adapters.ReadUpload(bytes.NewReader(mb), params["boundary"], lim)
		check(t, "ReadUpload(built body)", err)
		if err == nil {
			_, _, err = adapters.Validate(u.Name, u.Files, base, lim)
			check(t, "Validate", err)
		}
		// Fuzzed config with a valid tensor file, and the other way round.
		_, _, err = adapters.Validate("x", adapters.Files{Config: cfg, Weights: small.Weights}, base, lim)
		check(t, "Validate(config)", err)
		_, _, err = adapters.Validate("x", adapters.Files{Config: small.Config, Weights: weights}, base, lim)
		check(t, "Validate(weights)", err)
	})
}
