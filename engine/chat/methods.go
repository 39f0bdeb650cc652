package chat

import (
	"fmt"
	"strings"
	"unicode"

	"github.com/nikolalohinski/gonja/v2/builtins"
	"github.com/nikolalohinski/gonja/v2/exec"
)

// builtinStrMethods are the names of gonja's str methods kept as they are.
var builtinStrMethods = []string{
	"capitalize", "capwords", "casefold", "center", "encode", "endswith",
	"expandtabs", "find", "format", "format_map", "isalnum", "isalpha",
	"isascii", "isdecimal", "isdigit", "islower", "isnumeric",
	"isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower",
	"partition", "removeprefix", "removesuffix", "rfind", "rjust",
	"rpartition", "splitlines", "startswith", "swapcase", "title", "upper",
	"zfill",
}

// strMethods returns gonja's str methods with Python-exact replacements
// for those gonja v2.9 gets wrong: strip/lstrip/rstrip and split/rsplit
// without arguments fail, replace requires count, count counts the string
// in itself.
func strMethods() *exec.MethodSet[string] {
	m := map[string]exec.Method[string]{}
	for _, name := range builtinStrMethods {
		if fn, ok := builtins.Methods.Str.Get(name); ok {
			m[name] = fn
		}
	}
	m["strip"] = stripMethod(strings.TrimFunc, strings.Trim)
	m["lstrip"] = stripMethod(strings.TrimLeftFunc, strings.TrimLeft)
	m["rstrip"] = stripMethod(strings.TrimRightFunc, strings.TrimRight)
	m["split"] = splitMethod(false)
	m["rsplit"] = splitMethod(true)
	m["replace"] = replaceMethod
	m["count"] = countMethod
	return exec.NewMethodSet(m)
}

// optString returns positional argument i as a string, with ok false when
// it is absent or None.
func optString(args *exec.VarArgs, i int, name string) (string, bool, error) {
	v := args.Args
	var a *exec.Value
	if i < len(v) {
		a = v[i]
	} else if kw, ok := args.KwArgs[name]; ok {
		a = kw
	}
	if a == nil || a.IsNil() {
		return "", false, nil
	}
	if !a.IsString() {
		return "", false, exec.ErrInvalidCall(fmt.Errorf("argument %q must be a string or None", name))
	}
	return a.String(), true, nil
}

func optInt(args *exec.VarArgs, i int, name string, def int) (int, error) {
	var a *exec.Value
	if i < len(args.Args) {
		a = args.Args[i]
	} else if kw, ok := args.KwArgs[name]; ok {
		a = kw
	}
	if a == nil || a.IsNil() {
		return def, nil
	}
	if !a.IsInteger() {
		return 0, exec.ErrInvalidCall(fmt.Errorf("argument %q must be an integer", name))
	}
	return a.Integer(), nil
}

func stripMethod(byFunc func(string, func(rune) bool) string, byChars func(string, string) string) exec.Method[string] {
	return func(self string, _ *exec.Value, args *exec.VarArgs) (any, error) {
		chars, ok, err := optString(args, 0, "chars")
		if err != nil {
			return nil, err
		}
		if !ok {
			return byFunc(self, unicode.IsSpace), nil
		}
		return byChars(self, chars), nil
	}
}

func splitMethod(fromRight bool) exec.Method[string] {
	return func(self string, _ *exec.Value, args *exec.VarArgs) (any, error) {
		sep, ok, err := optString(args, 0, "sep")
		if err != nil {
			return nil, err
		}
		maxsplit, err := optInt(args, 1, "maxsplit", -1)
		if err != nil {
			return nil, err
		}
		var parts []string
		switch {
		case ok && sep == "":
			return nil, exec.ErrInvalidCall(fmt.Errorf("empty separator"))
		case ok && !fromRight:
			parts = strings.SplitN(self, sep, splitN(maxsplit))
		case ok && fromRight:
			parts = rsplitN(self, sep, maxsplit)
		default:
			parts = whitespaceSplit(self, maxsplit, fromRight)
		}
		out := make(pyList, len(parts))
		for i, p := range parts {
			out[i] = p
		}
		return out, nil
	}
}

func splitN(maxsplit int) int {
	if maxsplit < 0 {
		return -1
	}
	return maxsplit + 1
}

func rsplitN(s, sep string, maxsplit int) []string {
	if maxsplit < 0 {
		return strings.Split(s, sep)
	}
	var rev []string
	for maxsplit > 0 {
		i := strings.LastIndex(s, sep)
		if i < 0 {
			break
		}
		rev = append(rev, s[i+len(sep):])
		s = s[:i]
		maxsplit--
	}
	out := []string{s}
	for i := len(rev) - 1; i >= 0; i-- {
		out = append(out, rev[i])
	}
	return out
}

// whitespaceSplit is Python's str.split() / str.rsplit() with sep=None.
func whitespaceSplit(s string, maxsplit int, fromRight bool) []string {
	if maxsplit < 0 {
		return strings.Fields(s)
	}
	var out []string
	if !fromRight {
		for len(out) < maxsplit {
			s = strings.TrimLeftFunc(s, unicode.IsSpace)
			i := strings.IndexFunc(s, unicode.IsSpace)
			if s == "" || i < 0 {
				break
			}
			out = append(out, s[:i])
			s = s[i:]
		}
		if s = strings.TrimLeftFunc(s, unicode.IsSpace); s != "" {
			out = append(out, s)
		}
		return out
	}
	var rev []string
	for len(rev) < maxsplit {
		s = strings.TrimRightFunc(s, unicode.IsSpace)
		i := strings.LastIndexFunc(s, unicode.IsSpace)
		if s == "" || i < 0 {
			break
		}
		_, w := lastRune(s[i:])
		rev = append(rev, s[i+w:])
		s = s[:i]
	}
	if s = strings.TrimRightFunc(s, unicode.IsSpace); s != "" {
		out = append(out, s)
	}
	for i := len(rev) - 1; i >= 0; i-- {
		out = append(out, rev[i])
	}
	return out
}

func lastRune(s string) (rune, int) {
	for _, r := range s {
		return r, len(string(r))
	}
	return 0, 0
}

func replaceMethod(self string, _ *exec.Value, args *exec.VarArgs) (any, error) {
	if len(args.Args) < 2 || !args.Args[0].IsString() || !args.Args[1].IsString() {
		return nil, exec.ErrInvalidCall(fmt.Errorf("replace expects (old, new[, count]) strings"))
	}
	count, err := optInt(args, 2, "count", -1)
	if err != nil {
		return nil, err
	}
	return strings.Replace(self, args.Args[0].String(), args.Args[1].String(), count), nil
}

func countMethod(self string, _ *exec.Value, args *exec.VarArgs) (any, error) {
	sub, ok, err := optString(args, 0, "sub")
	if err != nil || !ok {
		return nil, exec.ErrInvalidCall(fmt.Errorf("count expects a substring"))
	}
	r := []rune(self)
	start, err := optInt(args, 1, "start", 0)
	if err != nil {
		return nil, err
	}
	end, err := optInt(args, 2, "end", len(r))
	if err != nil {
		return nil, err
	}
	start, end = clampSlice(start, len(r)), clampSlice(end, len(r))
	if start > end {
		return 0, nil
	}
	s := string(r[start:end])
	if sub == "" {
		return len([]rune(s)) + 1, nil
	}
	return strings.Count(s, sub), nil
}

func clampSlice(i, n int) int {
	if i < 0 {
		i += n
	}
	return max(0, min(i, n))
}
