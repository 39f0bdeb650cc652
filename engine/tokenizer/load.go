package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// Load reads the tokenizer of a Hugging Face model directory: tokenizer.json
// if present, else the SentencePiece tokenizer.model, plus
// tokenizer_config.json, special_tokens_map.json and generation_config.json
// when present.
func Load(dir string) (*Tokenizer, error) {
	var t *Tokenizer
	data, err := os.ReadFile(filepath.Join(dir, "tokenizer.json"))
	switch {
	case err == nil:
		if t, err = parseHFJSON(data); err != nil {
			return nil, fmt.Errorf("tokenizer: %s: %w", filepath.Join(dir, "tokenizer.json"), err)
		}
	case errors.Is(err, fs.ErrNotExist):
		path := filepath.Join(dir, "tokenizer.model")
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("tokenizer: no tokenizer.json or tokenizer.model in %s: %w", dir, err)
		}
		if t, err = ParseSentencePiece(data); err != nil {
			return nil, fmt.Errorf("tokenizer: %s: %w", path, err)
		}
	default:
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if err := t.applyConfigs(dir); err != nil {
		return nil, err
	}
	return t, nil
}

// ParseSentencePiece builds a tokenizer from the bytes of a SentencePiece
// tokenizer.model (BPE model type).
func ParseSentencePiece(data []byte) (*Tokenizer, error) {
	m, err := parseSPMModel(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: sentencepiece model: %w", err)
	}
	t, err := newSPM(m)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: sentencepiece model: %w", err)
	}
	t.indexAdded()
	return t, nil
}

// ParseTokenizerJSON builds a tokenizer from the bytes of a Hugging Face
// tokenizer.json.
func ParseTokenizerJSON(data []byte) (*Tokenizer, error) {
	t, err := parseHFJSON(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: tokenizer.json: %w", err)
	}
	t.defaultEOS()
	t.indexAdded()
	return t, nil
}

// tokenRef is a token given either as a string or as {"content": ...}.
type tokenRef string

func (r *tokenRef) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*r = tokenRef(s)
		return nil
	}
	var o struct {
		Content string `json:"content"`
	}
	if err := json.Unmarshal(b, &o); err != nil {
		return err
	}
	*r = tokenRef(o.Content)
	return nil
}

// idList is an id given as a number or a list of numbers.
type idList []int32

func (l *idList) UnmarshalJSON(b []byte) error {
	var one int32
	if err := json.Unmarshal(b, &one); err == nil {
		*l = idList{one}
		return nil
	}
	var many []int32
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*l = many
	return nil
}

type tokenizerConfig struct {
	AddedTokensDecoder map[string]hfAddedToken `json:"added_tokens_decoder"`
	BOSToken           *tokenRef               `json:"bos_token"`
	EOSToken           *tokenRef               `json:"eos_token"`
	AddBOSToken        *bool                   `json:"add_bos_token"`
	AddEOSToken        *bool                   `json:"add_eos_token"`
}

type generationConfig struct {
	BOSTokenID *idList `json:"bos_token_id"`
	EOSTokenID *idList `json:"eos_token_id"`
}

// readOptionalJSON decodes dir/name into v; a missing file is not an error.
func readOptionalJSON(dir, name string, v any) (bool, error) {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("tokenizer: %w", err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("tokenizer: %s: %w", filepath.Join(dir, name), err)
	}
	return true, nil
}

func (t *Tokenizer) applyConfigs(dir string) error {
	var cfg tokenizerConfig
	if _, err := readOptionalJSON(dir, "tokenizer_config.json", &cfg); err != nil {
		return err
	}
	var stm tokenizerConfig
	if _, err := readOptionalJSON(dir, "special_tokens_map.json", &stm); err != nil {
		return err
	}
	var gen generationConfig
	if _, err := readOptionalJSON(dir, "generation_config.json", &gen); err != nil {
		return err
	}
	for k, a := range cfg.AddedTokensDecoder {
		id, err := strconv.ParseInt(k, 10, 32)
		if err != nil {
			return fmt.Errorf("tokenizer: tokenizer_config.json: bad added_tokens_decoder key %q", k)
		}
		if err := t.addAdded(a.Content, int32(id), a.Special); err != nil {
			return fmt.Errorf("tokenizer: tokenizer_config.json: %w", err)
		}
	}
	if cfg.BOSToken == nil {
		cfg.BOSToken = stm.BOSToken
	}
	if cfg.EOSToken == nil {
		cfg.EOSToken = stm.EOSToken
	}
	if cfg.BOSToken != nil {
		if id, ok := t.TokenID(string(*cfg.BOSToken)); ok {
			t.bos = id
		}
	}
	if gen.BOSTokenID != nil && len(*gen.BOSTokenID) == 1 && t.bos < 0 {
		if id := (*gen.BOSTokenID)[0]; id >= 0 && int(id) < len(t.pieces) {
			t.bos = id
		}
	}
	var eos []int32
	if cfg.EOSToken != nil {
		if id, ok := t.TokenID(string(*cfg.EOSToken)); ok {
			eos = append(eos, id)
		}
	}
	if gen.EOSTokenID != nil {
		eos = append(eos, *gen.EOSTokenID...)
	}
	if len(eos) > 0 {
		t.eos = nil
		for _, id := range eos {
			t.addEOSID(id)
		}
	}
	if cfg.AddBOSToken != nil {
		t.addBOS = *cfg.AddBOSToken
	}
	if cfg.AddEOSToken != nil {
		t.addEOS = *cfg.AddEOSToken
	}
	for _, id := range append([]int32{t.bos}, t.eos...) {
		if id >= 0 && int(id) < len(t.attrs) && t.attrs[id]&attrAdded != 0 {
			t.attrs[id] |= attrSpecial
		}
	}
	t.defaultEOS()
	t.indexAdded()
	return nil
}

func (t *Tokenizer) addEOSID(id int32) {
	if id < 0 || int(id) >= len(t.pieces) {
		return
	}
	for _, e := range t.eos {
		if e == id {
			return
		}
	}
	t.eos = append(t.eos, id)
}

// defaultEOS picks a well-known end-of-sequence token when no configuration
// named one.
func (t *Tokenizer) defaultEOS() {
	if len(t.eos) > 0 {
		return
	}
	for _, name := range []string{"<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "</s>", "<eos>", "<end_of_turn>"} {
		for _, a := range t.added {
			if a.content == name && a.special {
				t.addEOSID(a.id)
			}
		}
	}
}
