// Package safetensors reads and writes the safetensors tensor file format
// (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
// length, a JSON header describing each tensor, then the raw tensor bytes.
//
// Files are memory-mapped where the platform allows it, and every header is
// validated in full (dtype, shape, offsets inside the file, contiguous
// coverage of the data section, bounded header size) before any tensor is
// handed out, so a corrupt file yields an error and never a panic.
package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
)

// MaxHeaderSize bounds the JSON header; larger headers are rejected as corrupt.
const MaxHeaderSize = 100 << 20

// DType is a tensor element type as spelled in safetensors headers.
type DType string

// Element types understood by this package.
const (
	F64  DType = "F64"
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
	I64  DType = "I64"
	I32  DType = "I32"
	I16  DType = "I16"
	I8   DType = "I8"
	U8   DType = "U8"
	Bool DType = "BOOL"
)

// Size returns the byte size of one element, or 0 for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case F64, I64:
		return 8
	case F32, I32:
		return 4
	case F16, BF16, I16:
		return 2
	case I8, U8, Bool:
		return 1
	}
	return 0
}

// Tensor is one named tensor; Data aliases the file's mapping (or a copy) and
// must not be modified.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// NumElements returns the product of the shape.
func (t Tensor) NumElements() int {
	n := 1
	for _, s := range t.Shape {
		n *= s
	}
	return n
}

// File is an opened safetensors file.
type File struct {
	path     string
	data     []byte // whole file
	unmap    func() error
	tensors  map[string]Tensor
	names    []string
	metadata map[string]string
}

// Open memory-maps and validates the safetensors file at path.
func Open(path string) (*File, error) {
	data, unmap, err := mapFile(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: open %s: %w", path, err)
	}
	f, err := parse(data)
	if err != nil {
		if unmap != nil {
			_ = unmap()
		}
		return nil, fmt.Errorf("safetensors: %s: %w", path, err)
	}
	f.path = path
	f.unmap = unmap
	return f, nil
}

// Parse validates an in-memory safetensors buffer. The returned File aliases data.
func Parse(data []byte) (*File, error) {
	f, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	return f, nil
}

type headerEntry struct {
	DType       DType   `json:"dtype"`
	Shape       []int64 `json:"shape"`
	DataOffsets []int64 `json:"data_offsets"`
}

func parse(data []byte) (*File, error) {
	if len(data) < 8 {
		return nil, errors.New("file shorter than the 8-byte header length")
	}
	n := binary.LittleEndian.Uint64(data[:8])
	if n > MaxHeaderSize {
		return nil, fmt.Errorf("header size %d exceeds limit %d", n, MaxHeaderSize)
	}
	if n > uint64(len(data)-8) {
		return nil, fmt.Errorf("header size %d exceeds file size %d", n, len(data))
	}
	hdr := data[8 : 8+n]
	body := data[8+n:]
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(hdr, &raw); err != nil {
		return nil, fmt.Errorf("header JSON: %w", err)
	}
	f := &File{data: data, tensors: make(map[string]Tensor, len(raw))}
	type span struct {
		name       string
		begin, end int64
	}
	spans := make([]span, 0, len(raw))
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &f.metadata); err != nil {
				return nil, fmt.Errorf("header __metadata__ must map strings to strings: %w", err)
			}
			continue
		}
		var e headerEntry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		size := e.DType.Size()
		if size == 0 {
			return nil, fmt.Errorf("tensor %q: unsupported dtype %q", name, e.DType)
		}
		if len(e.DataOffsets) != 2 {
			return nil, fmt.Errorf("tensor %q: data_offsets must have 2 entries, got %d", name, len(e.DataOffsets))
		}
		begin, end := e.DataOffsets[0], e.DataOffsets[1]
		if begin < 0 || end < begin || end > int64(len(body)) {
			return nil, fmt.Errorf("tensor %q: data_offsets [%d,%d] outside data section of %d bytes", name, begin, end, len(body))
		}
		elems := int64(1)
		shape := make([]int, len(e.Shape))
		for i, s := range e.Shape {
			if s < 0 {
				return nil, fmt.Errorf("tensor %q: negative dimension %d", name, s)
			}
			if s > 0 && elems > math.MaxInt64/s/int64(size) {
				return nil, fmt.Errorf("tensor %q: shape %v overflows", name, e.Shape)
			}
			elems *= s
			shape[i] = int(s)
		}
		if elems*int64(size) != end-begin {
			return nil, fmt.Errorf("tensor %q: shape %v of %s needs %d bytes, data_offsets span %d", name, e.Shape, e.DType, elems*int64(size), end-begin)
		}
		f.tensors[name] = Tensor{Name: name, DType: e.DType, Shape: shape, Data: body[begin:end:end]}
		spans = append(spans, span{name, begin, end})
	}
	sort.Slice(spans, func(i, j int) bool {
		if spans[i].begin != spans[j].begin {
			return spans[i].begin < spans[j].begin
		}
		return spans[i].end < spans[j].end
	})
	var pos int64
	for _, s := range spans {
		if s.begin != pos {
			if s.begin < pos {
				return nil, fmt.Errorf("tensor %q overlaps the tensor before it (offset %d < %d)", s.name, s.begin, pos)
			}
			return nil, fmt.Errorf("gap in data section before tensor %q (offset %d, expected %d)", s.name, s.begin, pos)
		}
		pos = s.end
	}
	if pos != int64(len(body)) {
		return nil, fmt.Errorf("data section has %d bytes but tensors cover %d", len(body), pos)
	}
	for _, s := range spans {
		f.names = append(f.names, s.name)
	}
	slices.Sort(f.names)
	return f, nil
}

// Path returns the file's path ("" for buffers given to Parse).
func (f *File) Path() string { return f.path }

// Names returns the tensor names in sorted order.
func (f *File) Names() []string { return slices.Clone(f.names) }

// Metadata returns the header's __metadata__ map (nil when absent).
func (f *File) Metadata() map[string]string { return f.metadata }

// Tensor returns the named tensor.
func (f *File) Tensor(name string) (Tensor, bool) {
	t, ok := f.tensors[name]
	return t, ok
}

// Close unmaps the file; tensors obtained from it must not be used afterwards.
func (f *File) Close() error {
	if f.unmap == nil {
		return nil
	}
	err := f.unmap()
	f.unmap = nil
	f.tensors = nil
	return err
}

// Float32 decodes a floating-point tensor (F32, F16, BF16, F64) into a new float32 slice.
func (t Tensor) Float32() ([]float32, error) {
	n := t.NumElements()
	out := make([]float32, n)
	d := t.Data
	switch t.DType {
	case F32:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(d[4*i:]))
		}
	case BF16:
		for i := range out {
			out[i] = BF16ToF32(binary.LittleEndian.Uint16(d[2*i:]))
		}
	case F16:
		for i := range out {
			out[i] = F16ToF32(binary.LittleEndian.Uint16(d[2*i:]))
		}
	case F64:
		for i := range out {
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(d[8*i:])))
		}
	default:
		return nil, fmt.Errorf("safetensors: tensor %q: dtype %s is not floating point", t.Name, t.DType)
	}
	return out, nil
}

// Set is the tensors of a checkpoint that may span several files.
type Set struct {
	files []*File
	where map[string]*File
}

// OpenDir opens the safetensors weights of a Hugging Face model directory: a
// sharded checkpoint described by model.safetensors.index.json, a single
// model.safetensors, or otherwise every *.safetensors file in dir.
func OpenDir(dir string) (*Set, error) {
	idxPath := dir + "/model.safetensors.index.json"
	if b, err := os.ReadFile(idxPath); err == nil {
		return openIndexed(dir, b)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	paths := []string{dir + "/model.safetensors"}
	if _, err := os.Stat(paths[0]); err != nil {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("safetensors: %w", err)
		}
		paths = paths[:0]
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".safetensors") && !e.IsDir() {
				paths = append(paths, dir+"/"+e.Name())
			}
		}
		if len(paths) == 0 {
			return nil, fmt.Errorf("safetensors: no *.safetensors files in %s", dir)
		}
	}
	s := &Set{where: map[string]*File{}}
	for _, p := range paths {
		f, err := Open(p)
		if err != nil {
			s.Close()
			return nil, err
		}
		if err := s.add(f); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

func openIndexed(dir string, idx []byte) (*Set, error) {
	var index struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(idx, &index); err != nil {
		return nil, fmt.Errorf("safetensors: model.safetensors.index.json: %w", err)
	}
	if len(index.WeightMap) == 0 {
		return nil, errors.New("safetensors: model.safetensors.index.json has an empty weight_map")
	}
	s := &Set{where: map[string]*File{}}
	byFile := map[string]*File{}
	names := make([]string, 0, len(index.WeightMap))
	for n := range index.WeightMap {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		file := index.WeightMap[name]
		if file == "" || strings.Contains(file, "/") || strings.Contains(file, `\`) || file == ".." {
			s.Close()
			return nil, fmt.Errorf("safetensors: index maps %q to invalid file name %q", name, file)
		}
		f, ok := byFile[file]
		if !ok {
			var err error
			f, err = Open(dir + "/" + file)
			if err != nil {
				s.Close()
				return nil, err
			}
			byFile[file] = f
			if err := s.add(f); err != nil {
				s.Close()
				return nil, err
			}
		}
		if got := s.where[name]; got != f {
			s.Close()
			return nil, fmt.Errorf("safetensors: index says %q is in %s but it is not there", name, file)
		}
	}
	return s, nil
}

func (s *Set) add(f *File) error {
	s.files = append(s.files, f)
	for _, n := range f.names {
		if other, dup := s.where[n]; dup {
			return fmt.Errorf("safetensors: tensor %q is in both %s and %s", n, other.path, f.path)
		}
		s.where[n] = f
	}
	return nil
}

// Tensor returns the named tensor from whichever shard holds it.
func (s *Set) Tensor(name string) (Tensor, bool) {
	f, ok := s.where[name]
	if !ok {
		return Tensor{}, false
	}
	return f.Tensor(name)
}

// Names returns every tensor name in the set, sorted.
func (s *Set) Names() []string {
	out := make([]string, 0, len(s.where))
	for n := range s.where {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Close closes every shard.
func (s *Set) Close() error {
	var errs []error
	for _, f := range s.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}
