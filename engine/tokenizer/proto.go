package tokenizer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// This file holds a minimal protobuf wire-format reader for the parts of
// SentencePiece's ModelProto that the tokenizer needs.

// Piece types from sentencepiece_model.proto.
const (
	pieceNormal      = 1
	pieceUnknown     = 2
	pieceControl     = 3
	pieceUserDefined = 4
	pieceUnused      = 5
	pieceByte        = 6
)

// SentencePiece model types.
const (
	spmUnigram = 1
	spmBPE     = 2
	spmWord    = 3
	spmChar    = 4
)

var errTruncated = errors.New("truncated protobuf")

// spmPiece is one vocabulary entry of a SentencePiece model.
type spmPiece struct {
	piece string
	score float32
	typ   int
}

// spmModel is the decoded subset of a SentencePiece ModelProto.
type spmModel struct {
	pieces []spmPiece

	modelType    int
	byteFallback bool
	unkID        int32
	bosID        int32
	eosID        int32
	padID        int32
	unkSurface   string

	normName               string
	charsMap               []byte
	addDummyPrefix         bool
	removeExtraWhitespaces bool
	escapeWhitespaces      bool
}

// wireReader walks the fields of one protobuf message.
type wireReader struct {
	b []byte
}

func (r *wireReader) varint() (uint64, error) {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		return 0, errTruncated
	}
	r.b = r.b[n:]
	return v, nil
}

// next returns the next field's number, wire type and, for wire types
// 0 (varint), 1 (fixed64), 2 (bytes) and 5 (fixed32), its value: varints and
// fixed values in num, length-delimited payloads in data.
func (r *wireReader) next() (field int, wt int, num uint64, data []byte, err error) {
	key, err := r.varint()
	if err != nil {
		return 0, 0, 0, nil, err
	}
	field, wt = int(key>>3), int(key&7)
	if field <= 0 {
		return 0, 0, 0, nil, fmt.Errorf("invalid field number %d", key>>3)
	}
	switch wt {
	case 0:
		num, err = r.varint()
	case 1:
		if len(r.b) < 8 {
			return 0, 0, 0, nil, errTruncated
		}
		num = binary.LittleEndian.Uint64(r.b)
		r.b = r.b[8:]
	case 2:
		var l uint64
		l, err = r.varint()
		if err == nil {
			if l > uint64(len(r.b)) {
				return 0, 0, 0, nil, errTruncated
			}
			data = r.b[:l]
			r.b = r.b[l:]
		}
	case 5:
		if len(r.b) < 4 {
			return 0, 0, 0, nil, errTruncated
		}
		num = uint64(binary.LittleEndian.Uint32(r.b))
		r.b = r.b[4:]
	default:
		return 0, 0, 0, nil, fmt.Errorf("unsupported wire type %d", wt)
	}
	return field, wt, num, data, err
}

func wantType(field, got, want int) error {
	if got != want {
		return fmt.Errorf("field %d: wire type %d, want %d", field, got, want)
	}
	return nil
}

// parseSPMModel decodes a serialized SentencePiece ModelProto.
func parseSPMModel(b []byte) (*spmModel, error) {
	m := &spmModel{
		modelType:              spmUnigram,
		unkID:                  0,
		bosID:                  1,
		eosID:                  2,
		padID:                  -1,
		unkSurface:             " \u2047 ",
		addDummyPrefix:         true,
		removeExtraWhitespaces: true,
		escapeWhitespaces:      true,
	}
	r := &wireReader{b: b}
	for len(r.b) > 0 {
		f, wt, _, data, err := r.next()
		if err != nil {
			return nil, err
		}
		switch f {
		case 1:
			if err := wantType(f, wt, 2); err != nil {
				return nil, err
			}
			p, err := parsePiece(data)
			if err != nil {
				return nil, fmt.Errorf("piece %d: %w", len(m.pieces), err)
			}
			m.pieces = append(m.pieces, p)
		case 2:
			if err := wantType(f, wt, 2); err != nil {
				return nil, err
			}
			if err := parseTrainerSpec(data, m); err != nil {
				return nil, fmt.Errorf("trainer_spec: %w", err)
			}
		case 3:
			if err := wantType(f, wt, 2); err != nil {
				return nil, err
			}
			if err := parseNormalizerSpec(data, m); err != nil {
				return nil, fmt.Errorf("normalizer_spec: %w", err)
			}
		}
	}
	if len(m.pieces) == 0 {
		return nil, errors.New("model has no pieces")
	}
	if len(m.pieces) > math.MaxInt32 {
		return nil, errors.New("too many pieces")
	}
	return m, nil
}

func parsePiece(b []byte) (spmPiece, error) {
	p := spmPiece{typ: pieceNormal}
	r := &wireReader{b: b}
	for len(r.b) > 0 {
		f, wt, num, data, err := r.next()
		if err != nil {
			return p, err
		}
		switch f {
		case 1:
			if err := wantType(f, wt, 2); err != nil {
				return p, err
			}
			p.piece = string(data)
		case 2:
			if err := wantType(f, wt, 5); err != nil {
				return p, err
			}
			p.score = math.Float32frombits(uint32(num))
		case 3:
			if err := wantType(f, wt, 0); err != nil {
				return p, err
			}
			p.typ = int(int32(num))
		}
	}
	return p, nil
}

func parseTrainerSpec(b []byte, m *spmModel) error {
	r := &wireReader{b: b}
	for len(r.b) > 0 {
		f, wt, num, data, err := r.next()
		if err != nil {
			return err
		}
		isVarint := func() error { return wantType(f, wt, 0) }
		switch f {
		case 3:
			if err := isVarint(); err != nil {
				return err
			}
			m.modelType = int(int32(num))
		case 35:
			if err := isVarint(); err != nil {
				return err
			}
			m.byteFallback = num != 0
		case 40, 41, 42, 43:
			if err := isVarint(); err != nil {
				return err
			}
			v := int32(num)
			switch f {
			case 40:
				m.unkID = v
			case 41:
				m.bosID = v
			case 42:
				m.eosID = v
			case 43:
				m.padID = v
			}
		case 44:
			if err := wantType(f, wt, 2); err != nil {
				return err
			}
			m.unkSurface = string(data)
		}
	}
	return nil
}

func parseNormalizerSpec(b []byte, m *spmModel) error {
	r := &wireReader{b: b}
	for len(r.b) > 0 {
		f, wt, num, data, err := r.next()
		if err != nil {
			return err
		}
		switch f {
		case 1:
			if err := wantType(f, wt, 2); err != nil {
				return err
			}
			m.normName = string(data)
		case 2:
			if err := wantType(f, wt, 2); err != nil {
				return err
			}
			m.charsMap = data
		case 3, 4, 5:
			if err := wantType(f, wt, 0); err != nil {
				return err
			}
			switch f {
			case 3:
				m.addDummyPrefix = num != 0
			case 4:
				m.removeExtraWhitespaces = num != 0
			case 5:
				m.escapeWhitespaces = num != 0
			}
		}
	}
	return nil
}
