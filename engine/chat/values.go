package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"

	"github.com/nikolalohinski/gonja/v2/exec"
)

// pyList is the list type handed to templates. It fixes Python-style
// negative indexing (gonja's builtin indexing rejects xs[-1] on a
// one-element list).
type pyList []any

// GetItem implements exec.ItemGetter with Python indexing semantics.
func (l pyList) GetItem(key any) (*exec.Value, bool) {
	i, ok := key.(int)
	if !ok {
		return exec.AsValue(nil), false
	}
	if i < 0 {
		i += len(l)
	}
	if i < 0 || i >= len(l) {
		return exec.AsValue(nil), false
	}
	return exec.ToValue(l[i]), true
}

// dict is an insertion-ordered mapping backed by gonja's exec.Dict, so
// iteration and tojson keep the order keys were given in.
type dict = exec.Dict

func newDict() *dict { return exec.NewDict() }

// set appends key (callers never set a key twice).
func dictSet(d *dict, key string, value any) {
	d.Pairs = append(d.Pairs, &exec.Pair{Key: exec.AsValue(key), Value: exec.ToValue(value)})
}

// convertValue turns a caller-supplied Go value into the value templates
// see: json.RawMessage is decoded keeping key order, slices become pyList
// and maps become ordered dicts with sorted keys (Go maps have no order).
func convertValue(v any) (any, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		return decodeOrdered(x)
	case string, bool, int, int64, float64:
		return x, nil
	case []any:
		out := make(pyList, len(x))
		for i, e := range x {
			c, err := convertValue(e)
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		d := newDict()
		for _, k := range keys {
			c, err := convertValue(x[k])
			if err != nil {
				return nil, err
			}
			dictSet(d, k, c)
		}
		return d, nil
	}
	// Other slices and maps (e.g. []map[string]any) are converted
	// element-wise through reflection; everything else is passed as is.
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			return v, nil
		}
		out := make([]any, rv.Len())
		for i := range out {
			out[i] = rv.Index(i).Interface()
		}
		return convertValue(out)
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String {
			return v, nil
		}
		out := make(map[string]any, rv.Len())
		for it := rv.MapRange(); it.Next(); {
			out[it.Key().String()] = it.Value().Interface()
		}
		return convertValue(out)
	}
	return v, nil
}

// decodeOrdered decodes JSON into pyList / ordered dict / string / float64
// or int / bool / nil.
func decodeOrdered(raw []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := decodeToken(dec)
	if err != nil {
		return nil, fmt.Errorf("decode JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("decode JSON: trailing data")
	}
	return v, nil
}

func decodeToken(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '[':
			out := pyList{}
			for dec.More() {
				v, err := decodeToken(dec)
				if err != nil {
					return nil, err
				}
				out = append(out, v)
			}
			_, err := dec.Token()
			return out, err
		case '{':
			d := newDict()
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				v, err := decodeToken(dec)
				if err != nil {
					return nil, err
				}
				dictSet(d, kt.(string), v)
			}
			_, err := dec.Token()
			return d, err
		}
		return nil, fmt.Errorf("unexpected delimiter %v", t)
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return int(i), nil
		}
		return t.Float64()
	default:
		return t, nil
	}
}
