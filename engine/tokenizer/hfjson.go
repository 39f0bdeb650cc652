package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

type hfAddedToken struct {
	ID      int32  `json:"id"`
	Content string `json:"content"`
	Special bool   `json:"special"`
}

type hfFile struct {
	AddedTokens   []hfAddedToken  `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Model         struct {
		Type         string           `json:"type"`
		Vocab        map[string]int32 `json:"vocab"`
		Merges       json.RawMessage  `json:"merges"`
		ByteFallback bool             `json:"byte_fallback"`
		IgnoreMerges bool             `json:"ignore_merges"`
		UnkToken     *string          `json:"unk_token"`
	} `json:"model"`
}

// hfNode is a generic normalizer / pre-tokenizer / processor object.
type hfNode struct {
	Type             string          `json:"type"`
	Normalizers      []hfNode        `json:"normalizers"`
	PreTokenizers    []hfNode        `json:"pretokenizers"`
	Pattern          json.RawMessage `json:"pattern"`
	Content          string          `json:"content"`
	Prepend          string          `json:"prepend"`
	Replacement      string          `json:"replacement"`
	PrependScheme    string          `json:"prepend_scheme"`
	AddPrefixSpace   *bool           `json:"add_prefix_space"`
	UseRegex         *bool           `json:"use_regex"`
	IndividualDigits bool            `json:"individual_digits"`
	Split            *bool           `json:"split"`
	Behavior         string          `json:"behavior"`
	Invert           bool            `json:"invert"`
	Single           []struct {
		SpecialToken *struct {
			ID string `json:"id"`
		} `json:"SpecialToken"`
	} `json:"single"`
	SpecialTokens map[string]struct {
		IDs []int32 `json:"ids"`
	} `json:"special_tokens"`
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || bytes.Equal(raw, []byte("null"))
}

func compactJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	s := b.String()
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// parseMerges accepts both ["a b", ...] and [["a","b"], ...].
func parseMerges(raw json.RawMessage) ([]mergePair, error) {
	if isNull(raw) {
		return nil, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Errorf("merges: %w", err)
	}
	out := make([]mergePair, 0, len(items))
	for i, it := range items {
		var s string
		if err := json.Unmarshal(it, &s); err == nil {
			a, b, ok := strings.Cut(s, " ")
			if !ok {
				return nil, fmt.Errorf("merge %d %q: no space", i, s)
			}
			out = append(out, mergePair{a, b})
			continue
		}
		var pair []string
		if err := json.Unmarshal(it, &pair); err != nil || len(pair) != 2 {
			return nil, fmt.Errorf("merge %d: want \"a b\" or [\"a\", \"b\"]", i)
		}
		out = append(out, mergePair{pair[0], pair[1]})
	}
	return out, nil
}

// splitRegex extracts the Regex of a Split pre-tokenizer.
func splitRegex(n hfNode) (string, bool) {
	var p struct {
		Regex *string `json:"Regex"`
	}
	if err := json.Unmarshal(n.Pattern, &p); err != nil || p.Regex == nil {
		return "", false
	}
	return *p.Regex, true
}

// recognizePreTokenizer maps a byte-level pre_tokenizer to a Pattern.
func recognizePreTokenizer(raw json.RawMessage) (p Pattern, addPrefixSpace bool, err error) {
	var n hfNode
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, false, fmt.Errorf("pre_tokenizer: %w", err)
	}
	unknown := fmt.Errorf("unsupported pre_tokenizer %s", compactJSON(raw))
	regexOn := func(b hfNode) bool { return b.UseRegex == nil || *b.UseRegex }
	switch n.Type {
	case "ByteLevel":
		if !regexOn(n) {
			return 0, false, unknown
		}
		return PatternGPT2, n.AddPrefixSpace != nil && *n.AddPrefixSpace, nil
	case "Sequence":
		if len(n.PreTokenizers) != 2 || n.PreTokenizers[1].Type != "ByteLevel" {
			return 0, false, unknown
		}
		first, bl := n.PreTokenizers[0], n.PreTokenizers[1]
		if bl.AddPrefixSpace != nil && *bl.AddPrefixSpace {
			return 0, false, unknown
		}
		switch first.Type {
		case "Digits":
			if first.IndividualDigits && regexOn(bl) {
				return PatternSmolLM, false, nil
			}
		case "Split":
			re, ok := splitRegex(first)
			if !ok || regexOn(bl) || first.Invert || (first.Behavior != "" && first.Behavior != "Isolated") {
				return 0, false, unknown
			}
			switch re {
			case regexLlama3:
				return PatternLlama3, false, nil
			case regexQwen2:
				return PatternQwen2, false, nil
			case regexGPT2:
				return PatternGPT2, false, nil
			}
		}
	}
	return 0, false, unknown
}

// isByteLevel reports whether a pre_tokenizer contains a ByteLevel step.
func isByteLevel(raw json.RawMessage) bool {
	if isNull(raw) {
		return false
	}
	var n hfNode
	if json.Unmarshal(raw, &n) != nil {
		return false
	}
	if n.Type == "ByteLevel" {
		return true
	}
	for _, c := range n.PreTokenizers {
		if c.Type == "ByteLevel" {
			return true
		}
	}
	return false
}

// parseHFJSON builds a Tokenizer from tokenizer.json contents.
func parseHFJSON(data []byte) (*Tokenizer, error) {
	var f hfFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, err
	}
	if f.Model.Type != "" && f.Model.Type != "BPE" {
		return nil, fmt.Errorf("unsupported model type %q (only BPE)", f.Model.Type)
	}
	merges, err := parseMerges(f.Model.Merges)
	if err != nil {
		return nil, err
	}
	t, err := newByteLevel(f.Model.Vocab, merges, false)
	if err != nil {
		return nil, err
	}
	t.ignoreMerges = f.Model.IgnoreMerges
	if f.Model.UnkToken != nil {
		if id, ok := t.vocab[*f.Model.UnkToken]; ok {
			t.unkID = id
			t.attrs[id] |= attrUnknown
		}
	}
	if isByteLevel(f.PreTokenizer) {
		t.pattern, t.addPrefixSpace, err = recognizePreTokenizer(f.PreTokenizer)
		if err != nil {
			return nil, err
		}
		if t.normalizer, err = byteLevelNormalizer(f.Normalizer); err != nil {
			return nil, err
		}
	} else {
		if !f.Model.ByteFallback {
			return nil, fmt.Errorf("unsupported tokenizer.json: pre_tokenizer %s without byte_fallback", compactJSON(f.PreTokenizer))
		}
		if err := t.configureHFSPM(f.Normalizer, f.PreTokenizer); err != nil {
			return nil, err
		}
	}
	for _, a := range f.AddedTokens {
		if err := t.addAdded(a.Content, a.ID, a.Special); err != nil {
			return nil, err
		}
	}
	if !isNull(f.PostProcessor) {
		t.readPostProcessor(f.PostProcessor)
	}
	return t, nil
}

func byteLevelNormalizer(raw json.RawMessage) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var n hfNode
	if err := json.Unmarshal(raw, &n); err != nil {
		return "", fmt.Errorf("normalizer: %w", err)
	}
	switch n.Type {
	case "NFC", "NFKC":
		return n.Type, nil
	case "Sequence":
		if len(n.Normalizers) == 0 {
			return "", nil
		}
		if len(n.Normalizers) == 1 && (n.Normalizers[0].Type == "NFC" || n.Normalizers[0].Type == "NFKC") {
			return n.Normalizers[0].Type, nil
		}
	}
	return "", fmt.Errorf("unsupported normalizer %s", compactJSON(raw))
}

// stringPattern returns the String of a {"String": ...} pattern, or "".
func stringPattern(raw json.RawMessage) string {
	var p struct {
		String string `json:"String"`
	}
	if json.Unmarshal(raw, &p) != nil {
		return ""
	}
	return p.String
}

// configureHFSPM accepts the two tokenizer.json forms of Llama-2 style BPE:
// normalizer Sequence[Prepend("▁"), Replace(" ", "▁")] with no
// pre-tokenizer, or a Metaspace pre-tokenizer (replacement "▁", no split).
func (t *Tokenizer) configureHFSPM(normRaw, preRaw json.RawMessage) error {
	t.kind = kindHFSPM
	t.byteFallback = true
	t.escapeSpace = true
	if t.unkID >= 0 {
		t.unkSurface = t.pieces[t.unkID]
	}
	for i, p := range t.pieces {
		if b, ok := parseBytePiece(p); ok {
			t.bytes[b] = int32(i)
			t.attrs[i] |= attrByte
		}
	}
	if !isNull(preRaw) {
		var n hfNode
		if err := json.Unmarshal(preRaw, &n); err != nil {
			return fmt.Errorf("pre_tokenizer: %w", err)
		}
		if n.Type != "Metaspace" || n.Replacement != spaceSymbol || (n.Split != nil && *n.Split) || !isNull(normRaw) {
			return fmt.Errorf("unsupported pre_tokenizer %s", compactJSON(preRaw))
		}
		t.addDummyPrefix = n.PrependScheme == "first" || n.PrependScheme == "always" ||
			(n.PrependScheme == "" && (n.AddPrefixSpace == nil || *n.AddPrefixSpace))
		return nil
	}
	var n hfNode
	if err := json.Unmarshal(normRaw, &n); err != nil {
		return fmt.Errorf("normalizer: %w", err)
	}
	steps := []hfNode{n}
	if n.Type == "Sequence" {
		steps = n.Normalizers
	}
	sawReplace := false
	for _, s := range steps {
		switch {
		case s.Type == "Prepend" && s.Prepend == spaceSymbol:
			t.addDummyPrefix = true
		case s.Type == "Replace" && s.Content == spaceSymbol && stringPattern(s.Pattern) == " ":
			sawReplace = true
		default:
			return fmt.Errorf("unsupported normalizer %s", compactJSON(normRaw))
		}
	}
	if !sawReplace {
		return fmt.Errorf("unsupported normalizer %s", compactJSON(normRaw))
	}
	return nil
}

// readPostProcessor picks up BOS/EOS insertion from a TemplateProcessing
// post-processor (possibly inside a Sequence).
func (t *Tokenizer) readPostProcessor(raw json.RawMessage) {
	var n hfNode
	if json.Unmarshal(raw, &n) != nil {
		return
	}
	procs := []json.RawMessage{raw}
	if n.Type == "Sequence" {
		var seq struct {
			Processors []json.RawMessage `json:"processors"`
		}
		if json.Unmarshal(raw, &seq) != nil {
			return
		}
		procs = seq.Processors
	}
	for _, pr := range procs {
		var p hfNode
		if json.Unmarshal(pr, &p) != nil || p.Type != "TemplateProcessing" || len(p.Single) == 0 {
			continue
		}
		idOf := func(name string) (int32, bool) {
			if st, ok := p.SpecialTokens[name]; ok && len(st.IDs) == 1 {
				return st.IDs[0], true
			}
			return t.TokenID(name)
		}
		if st := p.Single[0].SpecialToken; st != nil {
			if id, ok := idOf(st.ID); ok {
				t.bos, t.addBOS = id, true
			}
		}
		if st := p.Single[len(p.Single)-1].SpecialToken; len(p.Single) > 1 && st != nil {
			if id, ok := idOf(st.ID); ok {
				t.eos, t.addEOS = append([]int32{id}, t.eos...), true
			}
		}
	}
}

// MarshalTokenizerJSON writes a Hugging Face tokenizer.json for a byte-level
// BPE tokenizer (as built by NewByteLevelBPE or loaded from such a file).
func (t *Tokenizer) MarshalTokenizerJSON() ([]byte, error) {
	if t.kind != kindByteLevel {
		return nil, errors.New("tokenizer: MarshalTokenizerJSON supports byte-level BPE only")
	}
	var b bytes.Buffer
	w := func(v any) {
		enc, _ := json.Marshal(v)
		b.Write(enc)
	}
	b.WriteString("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [")
	added := append([]addedToken(nil), t.added...)
	sort.Slice(added, func(i, j int) bool { return added[i].id < added[j].id })
	for i, a := range added {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "\n    {\"id\": %d, \"content\": ", a.id)
		w(a.content)
		fmt.Fprintf(&b, ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": %t}", a.special)
	}
	b.WriteString("\n  ],\n  \"normalizer\": ")
	if t.normalizer != "" {
		fmt.Fprintf(&b, "{\"type\": %q}", t.normalizer)
	} else {
		b.WriteString("null")
	}
	b.WriteString(",\n  \"pre_tokenizer\": ")
	bl := func(regex bool) string {
		return fmt.Sprintf(`{"type": "ByteLevel", "add_prefix_space": %t, "trim_offsets": true, "use_regex": %t}`, t.addPrefixSpace, regex)
	}
	split := func(re string) string {
		enc, _ := json.Marshal(re)
		return fmt.Sprintf(`{"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": %s}, "behavior": "Isolated", "invert": false}, %s]}`, enc, bl(false))
	}
	switch t.pattern {
	case PatternGPT2:
		b.WriteString(bl(true))
	case PatternSmolLM:
		fmt.Fprintf(&b, `{"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, %s]}`, bl(true))
	case PatternLlama3:
		b.WriteString(split(regexLlama3))
	case PatternQwen2:
		b.WriteString(split(regexQwen2))
	default:
		return nil, fmt.Errorf("tokenizer: unknown pattern %d", int(t.pattern))
	}
	b.WriteString(",\n  \"post_processor\": ")
	if t.addBOS && t.bos >= 0 {
		name := t.pieces[t.bos]
		enc, _ := json.Marshal(name)
		fmt.Fprintf(&b, `{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": %s, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"SpecialToken": {"id": %s, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": %s, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}], "special_tokens": {%s: {"id": %s, "ids": [%d], "tokens": [%s]}}}`,
			enc, enc, enc, enc, enc, t.bos, enc)
	} else {
		b.WriteString(`{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}`)
	}
	b.WriteString(",\n  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true},\n")
	fmt.Fprintf(&b, "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n    \"ignore_merges\": %t,\n    \"vocab\": {", t.ignoreMerges)
	first := true
	for id, p := range t.pieces {
		if p == "" {
			continue
		}
		if vid, ok := t.vocab[p]; !ok || vid != int32(id) {
			continue
		}
		if !first {
			b.WriteString(",")
		}
		first = false
		b.WriteString("\n      ")
		w(p)
		fmt.Fprintf(&b, ": %d", id)
	}
	b.WriteString("\n    },\n    \"merges\": [")
	for i, m := range t.mergeList {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("\n      [")
		w(m.a)
		b.WriteString(", ")
		w(m.b)
		b.WriteString("]")
	}
	b.WriteString("\n    ]\n  }\n}\n")
	return b.Bytes(), nil
}

// MarshalTokenizerConfigJSON writes a tokenizer_config.json carrying the
// BOS/EOS tokens, add_bos_token/add_eos_token and added_tokens_decoder, to sit
// beside MarshalTokenizerJSON's output.
func (t *Tokenizer) MarshalTokenizerConfigJSON() ([]byte, error) {
	type dec struct {
		Content    string `json:"content"`
		Lstrip     bool   `json:"lstrip"`
		Normalized bool   `json:"normalized"`
		Rstrip     bool   `json:"rstrip"`
		SingleWord bool   `json:"single_word"`
		Special    bool   `json:"special"`
	}
	cfg := map[string]any{
		"add_bos_token": t.addBOS,
		"add_eos_token": t.addEOS,
	}
	decs := map[string]dec{}
	for _, a := range t.added {
		decs[fmt.Sprint(a.id)] = dec{Content: a.content, Special: a.special}
	}
	cfg["added_tokens_decoder"] = decs
	if t.bos >= 0 {
		cfg["bos_token"] = t.pieces[t.bos]
	}
	if len(t.eos) > 0 {
		cfg["eos_token"] = t.pieces[t.eos[0]]
	}
	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return append(out, '\n'), nil
}
