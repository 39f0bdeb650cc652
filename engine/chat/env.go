package chat

import (
	"bytes"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"

	"github.com/nikolalohinski/gonja/v2/builtins"
	"github.com/nikolalohinski/gonja/v2/config"
	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/loaders"
)

// environment is the gonja environment shared by all chat templates. It
// holds private copies of gonja's filter and test sets (so that overriding
// tojson does not leak into other users of gonja in the process); it is
// only read after init, which makes concurrent rendering safe.
var environment = newEnvironment()

// templateConfig mirrors the jinja2 environment options of transformers'
// apply_chat_template.
func templateConfig() *config.Config {
	c := config.New()
	c.TrimBlocks = true
	// lstrip_blocks is applied by lstripBlocks before parsing: gonja's
	// own implementation also strips blanks that follow a tag on the same
	// line.
	c.LeftStripBlocks = false
	c.KeepTrailingNewline = false
	return c
}

func newEnvironment() *exec.Environment {
	filters := exec.NewFilterSet(map[string]exec.FilterFunction{}).Update(builtins.Filters)
	builtinItems, _ := builtins.Filters.Get("items")
	for name, fn := range map[string]exec.FilterFunction{
		"tojson": filterToJSON,
		"items":  filterItems(builtinItems),
	} {
		if err := filters.Replace(name, fn); err != nil {
			panic(err)
		}
	}
	tests := exec.NewTestSet(map[string]exec.TestFunction{}).Update(builtins.Tests)
	methods := builtins.Methods
	methods.Str = strMethods()
	return &exec.Environment{
		Context:           exec.EmptyContext().Update(builtins.GlobalFunctions).Update(builtins.GlobalVariables),
		Filters:           filters,
		Tests:             tests,
		ControlStructures: builtins.ControlStructures,
		Methods:           methods,
	}
}

// compile parses src with the chat template environment.
func compile(src string) (*exec.Template, error) {
	const name = "chat_template"
	loader, err := loaders.NewFileSystemLoader("")
	if err != nil {
		return nil, err
	}
	shifted, err := loaders.NewShiftedLoader(name, strings.NewReader(lstripBlocks(src)), loader)
	if err != nil {
		return nil, err
	}
	return exec.NewTemplate(name, templateConfig(), shifted, environment)
}

// renderState holds the per-Render globals.
type renderState struct {
	now    func() time.Time
	raised *TemplateError
}

// raiseException implements the raise_exception(msg) global.
func (s *renderState) raiseException(args *exec.VarArgs) (any, error) {
	msg := ""
	if len(args.Args) > 0 {
		msg = args.Args[0].String()
	}
	if s.raised == nil {
		s.raised = &TemplateError{Message: msg}
	}
	return nil, s.raised
}

// strftimeNow implements the strftime_now(format) global.
func (s *renderState) strftimeNow(args *exec.VarArgs) (any, error) {
	if len(args.Args) != 1 || !args.Args[0].IsString() {
		return nil, exec.ErrInvalidCall(fmt.Errorf("strftime_now expects one string argument"))
	}
	return strftime(s.now(), args.Args[0].String()), nil
}

// filterToJSON is HF's tojson: json.dumps(x, ensure_ascii=False,
// indent=None, separators=None, sort_keys=False).
func filterToJSON(_ *exec.Evaluator, in *exec.Value, params *exec.VarArgs) *exec.Value {
	if in.IsError() {
		return in
	}
	o := jsonOptions{itemSep: ", ", keySep: ": ", indent: -1}
	for k, v := range params.KwArgs {
		switch k {
		case "indent":
			switch {
			case v.IsNil():
			case v.IsInteger():
				o.indent = v.Integer()
				o.itemSep = ","
			case v.IsString():
				o.indentStr = v.String()
				o.indent = 0
				o.itemSep = ","
			default:
				return exec.AsValue(fmt.Errorf("tojson: indent must be an integer or a string"))
			}
		case "ensure_ascii":
			o.ascii = v.IsTrue()
		case "sort_keys":
			o.sortKeys = v.IsTrue()
		case "separators":
			if !v.IsNil() {
				if v.Len() != 2 {
					return exec.AsValue(fmt.Errorf("tojson: separators must be a pair"))
				}
				o.separatorsSet = true
				o.itemSep, o.keySep = v.Index(0).String(), v.Index(1).String()
			}
		default:
			return exec.AsValue(fmt.Errorf("tojson: unexpected keyword argument %q", k))
		}
	}
	if o.indentStr == "" && o.indent > 0 {
		o.indentStr = strings.Repeat(" ", o.indent)
	}
	if len(params.Args) > 0 {
		return exec.AsValue(fmt.Errorf("tojson: unexpected positional argument"))
	}
	var b bytes.Buffer
	if err := o.encode(&b, in, 0); err != nil {
		return exec.AsValue(fmt.Errorf("tojson: %w", err))
	}
	return exec.AsSafeValue(b.String())
}

type jsonOptions struct {
	itemSep, keySep string
	separatorsSet   bool
	indent          int // -1: no indentation
	indentStr       string
	ascii           bool
	sortKeys        bool
}

func (o *jsonOptions) newline(b *bytes.Buffer, level int) {
	b.WriteByte('\n')
	for range level {
		b.WriteString(o.indentStr)
	}
}

func (o *jsonOptions) encode(b *bytes.Buffer, v *exec.Value, level int) error {
	switch {
	case v.IsNil():
		b.WriteString("null")
	case v.IsError():
		return fmt.Errorf("%s", v.Error())
	case v.IsBool():
		if v.Bool() {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case v.IsInteger():
		b.WriteString(strconv.Itoa(v.Integer()))
	case v.IsFloat():
		b.WriteString(pyFloat(v.Float()))
	case v.IsString():
		o.encodeString(b, v.String())
	case v.IsList():
		n := v.Len()
		if n == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteByte('[')
		for i := range n {
			if i > 0 {
				b.WriteString(o.itemSep)
			}
			if o.indent >= 0 {
				o.newline(b, level+1)
			}
			if err := o.encode(b, itemAt(v, i), level+1); err != nil {
				return err
			}
		}
		if o.indent >= 0 {
			o.newline(b, level)
		}
		b.WriteByte(']')
	case v.IsDict():
		var pairs []*exec.Pair
		if d, ok := v.Interface().(*exec.Dict); ok {
			pairs = d.Pairs
		} else if d, ok := v.Interface().(exec.Dict); ok {
			pairs = d.Pairs
		} else {
			pairs = v.Items() // Go map: keys sorted for determinism
			sortPairs(pairs)
		}
		if o.sortKeys {
			pairs = append([]*exec.Pair(nil), pairs...)
			sortPairs(pairs)
		}
		if len(pairs) == 0 {
			b.WriteString("{}")
			return nil
		}
		b.WriteByte('{')
		for i, p := range pairs {
			if i > 0 {
				b.WriteString(o.itemSep)
			}
			if o.indent >= 0 {
				o.newline(b, level+1)
			}
			switch {
			case p.Key.IsString():
				o.encodeString(b, p.Key.String())
			case p.Key.IsBool(), p.Key.IsNumber(), p.Key.IsNil():
				var kb bytes.Buffer
				if err := o.encode(&kb, p.Key, 0); err != nil {
					return err
				}
				o.encodeString(b, kb.String())
			default:
				return fmt.Errorf("keys must be str, int, float, bool or None, not %s", p.Key.String())
			}
			b.WriteString(o.keySep)
			if err := o.encode(b, p.Value, level+1); err != nil {
				return err
			}
		}
		if o.indent >= 0 {
			o.newline(b, level)
		}
		b.WriteByte('}')
	default:
		return fmt.Errorf("object of type %s is not JSON serializable", v.Val.Type())
	}
	return nil
}

func itemAt(v *exec.Value, i int) *exec.Value {
	if l, ok := v.Interface().(pyList); ok {
		return exec.ToValue(l[i])
	}
	return v.Index(i)
}

func sortPairs(pairs []*exec.Pair) {
	for i := 1; i < len(pairs); i++ {
		for j := i; j > 0 && pairs[j].Key.String() < pairs[j-1].Key.String(); j-- {
			pairs[j], pairs[j-1] = pairs[j-1], pairs[j]
		}
	}
}

// encodeString writes s as a JSON string the way Python's json.dumps does.
func (o *jsonOptions) encodeString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			switch {
			case r < 0x20 || (o.ascii && r == 0x7f):
				fmt.Fprintf(b, `\u%04x`, r)
			case o.ascii && r > 0x7f:
				if r > 0xffff {
					r1, r2 := utf16.EncodeRune(r)
					fmt.Fprintf(b, `\u%04x\u%04x`, r1, r2)
				} else {
					fmt.Fprintf(b, `\u%04x`, r)
				}
			default:
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}

// pyFloat formats f like Python's float repr.
func pyFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // d.ddde±XX
	mant, expStr, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expStr)
	if exp < -4 || exp >= 16 {
		sign := "+"
		if exp < 0 {
			sign, exp = "-", -exp
		}
		return fmt.Sprintf("%se%s%02d", mant, sign, exp)
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}

// filterItems is the items filter, keeping the order of ordered dicts
// (gonja's builtin only handles Go maps).
func filterItems(builtin exec.FilterFunction) exec.FilterFunction {
	return func(e *exec.Evaluator, in *exec.Value, params *exec.VarArgs) *exec.Value {
		var pairs []*exec.Pair
		switch d := in.Interface().(type) {
		case *exec.Dict:
			pairs = d.Pairs
		case exec.Dict:
			pairs = d.Pairs
		default:
			if in.IsDict() && !in.IsError() {
				pairs = in.Items()
				sortPairs(pairs)
				break
			}
			return builtin(e, in, params)
		}
		if len(params.Args) > 0 || len(params.KwArgs) > 0 {
			return exec.AsValue(exec.ErrInvalidCall(fmt.Errorf("items takes no arguments")))
		}
		out := make(pyList, len(pairs))
		for i, p := range pairs {
			out[i] = pyList{p.Key.Interface(), p.Value.Interface()}
		}
		return exec.AsValue(out)
	}
}
