package sample

import (
	"math"
)

// JSON validation: an incremental pushdown automaton over bytes, and a
// Constraint built on it that restricts a sequence's tokens to those keeping
// the output a valid prefix of a JSON object (OpenAI's JSON mode).

// jsonState is the automaton's position within the current value.
type jsonState uint8

const (
	jsStart     jsonState = iota // before the top-level object: whitespace or '{'
	jsValue                      // expecting a value (after ':' or ',' in an array)
	jsObjFirst                   // after '{': a key or '}'
	jsArrFirst                   // after '[': a value or ']'
	jsKey                        // after ',' in an object: a key
	jsColon                      // after a key: ':'
	jsAfter                      // after a value in a container: ',' or the closer
	jsString                     // inside a string
	jsEscape                     // after '\' in a string
	jsUnicode                    // inside \uXXXX (hex digits remaining in hex)
	jsMinus                      // after '-': a digit
	jsZero                       // after a leading 0: '.', 'e' or the end
	jsInt                        // in the integer digits
	jsDot                        // after '.': a digit
	jsFrac                       // in the fraction digits
	jsExp                        // after 'e': a sign or a digit
	jsExpSign                    // after the exponent sign: a digit
	jsExpDigits                  // in the exponent digits
	jsLiteral                    // inside true, false or null
	jsDone                       // the top-level object is complete: whitespace only
)

var jsonLiterals = [...]string{"true", "false", "null"}

// Number limits: 10^200 × 10^99 is still below math.MaxFloat64.
const (
	maxIntDigits = 200
	maxExpDigits = 2
)

// JSONValidator checks a byte stream incrementally against the JSON grammar
// (RFC 8259) with the top-level value restricted to an object, as OpenAI's
// JSON mode requires. Whitespace may surround the object. Strings accept any
// byte other than '"', '\' and control characters below 0x20 (UTF-8 is not
// checked: a decoder replaces invalid bytes, which keeps the JSON valid).
// Numbers are bounded so that every complete document decodes into float64s
// (as encoding/json does): at most maxIntDigits integer digits and
// maxExpDigits exponent digits, a limit RFC 8259 permits.
// The zero value is a validator at the start of a document.
type JSONValidator struct {
	stack  []byte // open containers: '{' or '['
	state  jsonState
	key    bool  // the current string is an object key
	hex    uint8 // jsUnicode: hex digits still expected
	lit    uint8 // jsLiteral: index into jsonLiterals
	pos    uint8 // jsLiteral: bytes of the literal matched so far
	digits int   // digits in the current number's integer part or exponent
	space  int   // consecutive whitespace bytes outside strings
	// MaxSpace, when positive, rejects a run of more than MaxSpace
	// whitespace bytes outside strings (valid JSON, but a model stuck on
	// whitespace would never finish).
	MaxSpace int
}

// NewJSONValidator returns a validator at the start of a document.
func NewJSONValidator() *JSONValidator { return &JSONValidator{} }

// Clone returns an independent copy of v.
func (v *JSONValidator) Clone() *JSONValidator {
	c := &JSONValidator{}
	v.copyTo(c)
	return c
}

// copyTo makes dst a copy of v, reusing dst's stack storage.
func (v *JSONValidator) copyTo(dst *JSONValidator) {
	st := append(dst.stack[:0], v.stack...)
	*dst = *v
	dst.stack = st
}

// Complete reports whether the bytes fed so far form a complete document.
func (v *JSONValidator) Complete() bool { return v.state == jsDone }

// Depth returns the number of open objects and arrays.
func (v *JSONValidator) Depth() int { return len(v.stack) }

// inPlainString reports whether v is inside a string outside an escape, where
// every byte that is not '"', '\' or a control character keeps it there.
func (v *JSONValidator) inPlainString() bool { return v.state == jsString }

func isSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

func isHex(b byte) bool {
	return b >= '0' && b <= '9' || b >= 'a' && b <= 'f' || b >= 'A' && b <= 'F'
}

// FeedBytes feeds p byte by byte and reports whether all of it is valid; on
// failure v is left in an unspecified state (feed a Clone to probe).
func (v *JSONValidator) FeedBytes(p []byte) bool {
	for _, b := range p {
		if !v.Feed(b) {
			return false
		}
	}
	return true
}

// Feed advances v by one byte and reports whether the output so far is still
// a prefix of a valid document. After a false result v is unspecified.
func (v *JSONValidator) Feed(b byte) bool {
	switch v.state {
	case jsString:
		switch {
		case b == '"':
			v.endString()
		case b == '\\':
			v.state = jsEscape
		case b < 0x20:
			return false
		}
		return true
	case jsEscape:
		switch b {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			v.state = jsString
		case 'u':
			v.state, v.hex = jsUnicode, 4
		default:
			return false
		}
		return true
	case jsUnicode:
		if !isHex(b) {
			return false
		}
		if v.hex--; v.hex == 0 {
			v.state = jsString
		}
		return true
	case jsLiteral:
		l := jsonLiterals[v.lit]
		if b != l[v.pos] {
			return false
		}
		if v.pos++; int(v.pos) == len(l) {
			v.state = jsAfter
		}
		return true
	case jsMinus:
		switch {
		case b == '0':
			v.state = jsZero
		case b >= '1' && b <= '9':
			v.state, v.digits = jsInt, 1
		default:
			return false
		}
		return true
	case jsZero, jsInt:
		switch {
		case b >= '0' && b <= '9':
			if v.state == jsZero {
				return false // leading zeros
			}
			if v.digits++; v.digits > maxIntDigits {
				return false
			}
		case b == '.':
			v.state = jsDot
		case b == 'e' || b == 'E':
			v.state = jsExp
		default:
			v.state = jsAfter
			return v.Feed(b)
		}
		return true
	case jsDot:
		if b < '0' || b > '9' {
			return false
		}
		v.state = jsFrac
		return true
	case jsFrac:
		switch {
		case b >= '0' && b <= '9':
		case b == 'e' || b == 'E':
			v.state = jsExp
		default:
			v.state = jsAfter
			return v.Feed(b)
		}
		return true
	case jsExp:
		switch {
		case b == '+' || b == '-':
			v.state = jsExpSign
		case b >= '0' && b <= '9':
			v.state, v.digits = jsExpDigits, 1
		default:
			return false
		}
		return true
	case jsExpSign:
		if b < '0' || b > '9' {
			return false
		}
		v.state, v.digits = jsExpDigits, 1
		return true
	case jsExpDigits:
		if b >= '0' && b <= '9' {
			v.digits++
			return v.digits <= maxExpDigits
		}
		v.state = jsAfter
		return v.Feed(b)
	}
	// Structural states: whitespace is allowed between tokens.
	if isSpace(b) {
		v.space++
		return v.MaxSpace <= 0 || v.space <= v.MaxSpace
	}
	v.space = 0
	switch v.state {
	case jsStart:
		if b != '{' {
			return false
		}
		v.stack = append(v.stack, '{')
		v.state = jsObjFirst
		return true
	case jsObjFirst, jsKey:
		switch {
		case b == '"':
			v.state, v.key = jsString, true
			return true
		case b == '}' && v.state == jsObjFirst:
			v.close()
			return true
		}
		return false
	case jsColon:
		if b != ':' {
			return false
		}
		v.state = jsValue
		return true
	case jsArrFirst:
		if b == ']' {
			v.close()
			return true
		}
		return v.value(b)
	case jsValue:
		return v.value(b)
	case jsAfter:
		top := v.stack[len(v.stack)-1]
		switch {
		case b == ',' && top == '{':
			v.state = jsKey
		case b == ',':
			v.state = jsValue
		case b == '}' && top == '{', b == ']' && top == '[':
			v.close()
		default:
			return false
		}
		return true
	}
	return false // jsDone: only whitespace
}

// value starts a value with b.
func (v *JSONValidator) value(b byte) bool {
	switch {
	case b == '"':
		v.state, v.key = jsString, false
	case b == '{':
		v.stack = append(v.stack, '{')
		v.state = jsObjFirst
	case b == '[':
		v.stack = append(v.stack, '[')
		v.state = jsArrFirst
	case b == '-':
		v.state = jsMinus
	case b == '0':
		v.state = jsZero
	case b >= '1' && b <= '9':
		v.state, v.digits = jsInt, 1
	default:
		for i, l := range jsonLiterals {
			if b == l[0] {
				v.state, v.lit, v.pos = jsLiteral, uint8(i), 1
				return true
			}
		}
		return false
	}
	return true
}

func (v *JSONValidator) endString() {
	if v.key {
		v.state = jsColon
	} else {
		v.state = jsAfter
	}
}

// close pops a container; closing the last one completes the document.
func (v *JSONValidator) close() {
	v.stack = v.stack[:len(v.stack)-1]
	if len(v.stack) == 0 {
		v.state = jsDone
	} else {
		v.state = jsAfter
	}
}

// ValidJSONPrefix reports whether p is a prefix of some valid JSON object
// document (p itself may be complete).
func ValidJSONPrefix(p []byte) bool { return NewJSONValidator().FeedBytes(p) }

// Constraint restricts the tokens a sequence may generate. A scheduler calls
// Mask on each step's logits before sampling and Accept with the token
// chosen; it is used by one sequence at a time.
type Constraint interface {
	// Mask sets the logits of the tokens not allowed next to -Inf and
	// reports whether any token remains allowed.
	Mask(logits []float32) bool
	// Accept records the generated token (never an EOS token) and reports
	// whether the constrained output is now complete (the sequence should
	// stop).
	Accept(tok int32) bool
}

// JSONVocab is a tokenizer's vocabulary prepared for JSON constraints: each
// token's bytes, grouped by first byte. Build it once per tokenizer (it is
// read-only and safe to share) and make a constraint per sequence with
// NewConstraint.
type JSONVocab struct {
	mid     [][]byte // a token's bytes after other output
	first   [][]byte // a token's bytes as the first output (a tokenizer may drop a leading space)
	plain   []bool   // every byte of mid is a plain string byte
	byFirst [256][]int32
	eos     []int32
}

// NewJSONVocab prepares a vocabulary. mid[i] is token i's text when it
// follows other output and first[i] its text as the sequence's first output
// (nil first means the same as mid). Bytes that are not valid UTF-8 may be
// given as U+FFFD: the validator only needs ASCII bytes exactly, and any
// non-ASCII byte is legal exactly where another is (inside strings). Tokens
// with empty text (special tokens) are never allowed, except the eos tokens
// once the object is complete.
func NewJSONVocab(mid, first []string, eos []int32) *JSONVocab {
	jv := &JSONVocab{mid: make([][]byte, len(mid)), plain: make([]bool, len(mid)), eos: append([]int32(nil), eos...)}
	if first != nil {
		jv.first = make([][]byte, len(mid))
	}
	for i, s := range mid {
		b := []byte(s)
		jv.mid[i] = b
		if first != nil {
			jv.first[i] = []byte(first[i])
		}
		if len(b) == 0 {
			continue
		}
		jv.byFirst[b[0]] = append(jv.byFirst[b[0]], int32(i))
		p := true
		for _, c := range b {
			if c == '"' || c == '\\' || c < 0x20 {
				p = false
				break
			}
		}
		jv.plain[i] = p
	}
	return jv
}

// NewConstraint returns a constraint that keeps the output a valid prefix of
// a JSON object, allows EOS only once it is complete and reports completion
// when the top-level object closes. maxSpace bounds runs of whitespace
// outside strings (0: unbounded).
//
// Cost: each step probes every token against the automaton, O(vocabulary ×
// token length) byte steps, reduced by grouping tokens by first byte (a
// group whose first byte is invalid is rejected with one probe) and by
// accepting string-safe tokens inside strings without probing. That is
// fine for small models; a production version would precompute token
// tries or per-state masks.
func (jv *JSONVocab) NewConstraint(maxSpace int) Constraint {
	return &jsonConstraint{jv: jv, v: JSONValidator{MaxSpace: maxSpace}}
}

type jsonConstraint struct {
	jv      *JSONVocab
	v       JSONValidator
	started bool // a token has produced output
	after   JSONValidator
	probe   JSONValidator
	allowed []bool // Mask's scratch
}

func (c *jsonConstraint) bytesOf(tok int32) []byte {
	if int(tok) >= len(c.jv.mid) || tok < 0 {
		return nil
	}
	if !c.started && c.jv.first != nil {
		return c.jv.first[tok]
	}
	return c.jv.mid[tok]
}

func (c *jsonConstraint) Mask(logits []float32) bool {
	ninf := float32(math.Inf(-1))
	jv := c.jv
	found := false
	if cap(c.allowed) < len(logits) {
		c.allowed = make([]bool, len(logits))
	}
	allowed := c.allowed[:len(logits)]
	clear(allowed)
	if !c.started && jv.first != nil {
		// First token: its bytes may differ from mid's; probe each token.
		for t := range min(len(logits), len(jv.first)) {
			if b := jv.first[t]; len(b) > 0 {
				c.v.copyTo(&c.probe)
				allowed[t] = c.probe.FeedBytes(b)
			}
		}
	} else {
		for b := range 256 {
			c.v.copyTo(&c.after)
			if !c.after.Feed(byte(b)) {
				continue
			}
			str := c.after.inPlainString()
			for _, t := range jv.byFirst[b] {
				if int(t) >= len(logits) {
					continue
				}
				tb := jv.mid[t]
				if len(tb) == 1 || str && jv.plain[t] {
					allowed[t] = true
					continue
				}
				c.after.copyTo(&c.probe)
				allowed[t] = c.probe.FeedBytes(tb[1:])
			}
		}
	}
	done := c.v.Complete()
	for _, e := range jv.eos {
		if int(e) < len(allowed) {
			allowed[e] = done
		}
	}
	for t, ok := range allowed {
		if ok {
			found = found || !math.IsInf(float64(logits[t]), -1)
		} else {
			logits[t] = ninf
		}
	}
	return found
}

func (c *jsonConstraint) Accept(tok int32) bool {
	b := c.bytesOf(tok)
	if len(b) > 0 {
		c.v.FeedBytes(b) // Mask allowed it
		c.started = true
	}
	return c.v.Complete()
}
