package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func encode(t *testing.T, tensors []Tensor) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, tensors, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	vals := []float32{1, -2.5, 3.25, 0, 1e-3, 65504}
	in := []Tensor{
		FromFloat32("b.f16", F16, []int{2, 3}, vals),
		FromFloat32("a.f32", F32, []int{3, 2}, vals),
		FromFloat32("c.bf16", BF16, []int{6}, vals),
	}
	data := encode(t, in)
	if hl := binary.LittleEndian.Uint64(data); hl%8 != 0 {
		t.Errorf("header length %d not padded to 8", hl)
	}
	f, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.Names(), ","); got != "a.f32,b.f16,c.bf16" {
		t.Errorf("names %s", got)
	}
	if f.Metadata()["format"] != "pt" {
		t.Errorf("metadata %v", f.Metadata())
	}
	for _, name := range f.Names() {
		tt, _ := f.Tensor(name)
		got, err := tt.Float32()
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range vals {
			tol := float32(0)
			switch tt.DType {
			case BF16:
				tol = float32(math.Abs(float64(v))) / 128
			case F16:
				tol = float32(math.Abs(float64(v))) / 1024
			}
			if d := got[i] - v; d > tol || d < -tol {
				t.Errorf("%s[%d] = %v, want %v", name, i, got[i], v)
			}
		}
	}
}

func TestOpenFileAndDir(t *testing.T) {
	dir := t.TempDir()
	w := FromFloat32("w", F32, []int{2, 2}, []float32{1, 2, 3, 4})
	if err := WriteFile(filepath.Join(dir, "model.safetensors"), []Tensor{w}, nil); err != nil {
		t.Fatal(err)
	}
	s, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, ok := s.Tensor("w")
	if !ok {
		t.Fatal("missing w")
	}
	v, _ := got.Float32()
	if v[3] != 4 {
		t.Errorf("got %v", v)
	}
}

func TestShardedIndex(t *testing.T) {
	dir := t.TempDir()
	a := FromFloat32("a", F32, []int{1}, []float32{1})
	b := FromFloat32("b", F32, []int{1}, []float32{2})
	WriteFile(filepath.Join(dir, "s1.safetensors"), []Tensor{a}, nil)
	WriteFile(filepath.Join(dir, "s2.safetensors"), []Tensor{b}, nil)
	writeIndex := func(m map[string]string) {
		js, _ := json.Marshal(map[string]any{"weight_map": m})
		os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), js, 0o644)
	}
	writeIndex(map[string]string{"a": "s1.safetensors", "b": "s2.safetensors"})
	s, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Tensor("b"); !ok {
		t.Error("missing b")
	}
	s.Close()
	for _, bad := range []map[string]string{
		{"a": "s2.safetensors"},
		{"a": "../s1.safetensors"},
		{"a": "missing.safetensors"},
	} {
		writeIndex(bad)
		if s, err := OpenDir(dir); err == nil {
			s.Close()
			t.Errorf("index %v: no error", bad)
		}
	}
}

func header(js string, body int) []byte {
	b := make([]byte, 8+len(js)+body)
	binary.LittleEndian.PutUint64(b, uint64(len(js)))
	copy(b[8:], js)
	return b
}

func TestCorrupt(t *testing.T) {
	cases := map[string][]byte{
		"short":        {1, 2, 3},
		"huge header":  append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, make([]byte, 8)...),
		"header > len": header(`{}`, 0)[:9],
		"bad json":     header(`{"a":`, 0),
		"bad dtype":    header(`{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}}`, 4),
		"outside":      header(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 4),
		"shape size":   header(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, 8),
		"negative":     header(`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, 4),
		"gap":          header(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8),
		"overlap":      header(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8),
		"trailing":     header(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 8),
		"offsets":      header(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}`, 4),
		"reversed":     header(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}`, 4),
		"overflow":     header(`{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}`, 0),
		"metadata":     header(`{"__metadata__":{"a":1}}`, 0),
	}
	for name, data := range cases {
		if _, err := Parse(data); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestHalfConversions(t *testing.T) {
	for _, v := range []float32{0, 1, -1, 0.5, 65504, 6.1035156e-05, 5.9604645e-08, 3.0517578e-05, 1.0009766} {
		if got := F16ToF32(F32ToF16(v)); got != v {
			t.Errorf("f16 round trip %v -> %v", v, got)
		}
	}
	if !math.IsInf(float64(F16ToF32(F32ToF16(1e6))), 1) {
		t.Error("f16 overflow should be +Inf")
	}
	if got := BF16ToF32(F32ToBF16(1.00390625)); got != 1 { // tie rounds to even
		t.Errorf("bf16 tie: %v", got)
	}
	if v := BF16ToF32(F32ToBF16(float32(math.NaN()))); !math.IsNaN(float64(v)) {
		t.Error("bf16 NaN lost")
	}
	// Every finite half value survives f16 -> f32 -> f16.
	for h := 0; h < 1<<16; h++ {
		if h&0x7c00 == 0x7c00 {
			continue
		}
		if got := F32ToF16(F16ToF32(uint16(h))); got != uint16(h) {
			t.Fatalf("half %#04x -> %#04x", h, got)
		}
	}
}

func FuzzParse(f *testing.F) {
	var buf bytes.Buffer
	Write(&buf, []Tensor{FromFloat32("x", F32, []int{2}, []float32{1, 2}), FromFloat32("y", BF16, []int{1, 1}, []float32{3})}, nil)
	f.Add(buf.Bytes())
	f.Add(header(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse(data)
		if err != nil {
			return
		}
		for _, n := range file.Names() {
			tt, _ := file.Tensor(n)
			if tt.NumElements()*tt.DType.Size() != len(tt.Data) {
				t.Fatalf("%s: size mismatch", n)
			}
			switch tt.DType {
			case F32, F16, BF16, F64:
				if _, err := tt.Float32(); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}
