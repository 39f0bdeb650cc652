package testbed

import (
	"fmt"

	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/testbed/world"
)

// lookahead is how many tokenized documents a Packer keeps ready: a row is
// filled first-fit from them, so few positions are left over as padding.
const lookahead = 32

// encodedDoc is a tokenized document with its tokens' loss weights.
type encodedDoc struct {
	ids []int32
	ws  []float32
}

// Packer draws documents from a world stream, tokenizes them and packs them
// into rows of a fixed length with per-document ids. A row begins with the
// oldest waiting document; the space left is filled first-fit from the
// next waiting ones (up to lookahead), and what no waiting document fits
// is padding (<|endoftext|>, weight 0, a document of its own). A document
// longer than a row is cut to the row's length, its first RowLen tokens
// kept (none is cut in practice: with the default tokenizer the world's
// documents have about 70 tokens, fewer than 180 at most). The rows are a
// function of the stream alone, so a Packer made anew and advanced by the
// same number of rows is in the same state.
type Packer struct {
	w       *world.World
	enc     *Encoder
	stream  *world.Stream
	rowLen  int
	pad     int32
	queue   []encodedDoc
	Docs    int64 // documents drawn from the stream
	Cut     int64 // documents cut to the row length
	Tokens  int64 // tokens packed, padding included
	Padding int64 // padding tokens
	Rows    int64 // rows made
}

// NewPacker returns a packer of rows of rowLen tokens over stream number id
// of mix in w.
func NewPacker(w *world.World, enc *Encoder, mix world.Mix, id uint64, rowLen int) (*Packer, error) {
	if rowLen < 2 {
		return nil, fmt.Errorf("testbed: packer: row length %d is too short", rowLen)
	}
	s, err := w.Stream(mix, id)
	if err != nil {
		return nil, fmt.Errorf("testbed: packer: %w", err)
	}
	return &Packer{w: w, enc: enc, stream: s, rowLen: rowLen, pad: enc.Special(world.EndOfText)}, nil
}

// fill tops the queue up to lookahead documents.
func (p *Packer) fill() error {
	for len(p.queue) < lookahead {
		ids, ws, err := p.enc.Encode(p.w.Render(p.stream.Next()))
		if err != nil {
			return err
		}
		p.Docs++
		if len(ids) > p.rowLen {
			ids, ws = ids[:p.rowLen], ws[:p.rowLen]
			p.Cut++
		}
		p.queue = append(p.queue, encodedDoc{ids, ws})
	}
	return nil
}

// Row packs the next row: its tokens, document ids and loss weights.
func (p *Packer) Row() (ids, docs []int32, ws []float32, err error) {
	ids = make([]int32, 0, p.rowLen)
	docs = make([]int32, 0, p.rowLen)
	ws = make([]float32, 0, p.rowLen)
	var doc int32
	for {
		if err := p.fill(); err != nil {
			return nil, nil, nil, err
		}
		room := p.rowLen - len(ids)
		k := -1
		for i, d := range p.queue {
			if len(d.ids) <= room {
				k = i
				break
			}
		}
		if k < 0 {
			break
		}
		d := p.queue[k]
		p.queue = append(p.queue[:k], p.queue[k+1:]...)
		ids, ws = append(ids, d.ids...), append(ws, d.ws...)
		for range d.ids {
			docs = append(docs, doc)
		}
		doc++
		if len(ids) == p.rowLen {
			break
		}
	}
	for n := p.rowLen - len(ids); n > 0; n-- {
		ids, ws, docs = append(ids, p.pad), append(ws, 0), append(docs, doc)
		p.Padding++
	}
	p.Tokens += int64(p.rowLen)
	p.Rows++
	return ids, docs, ws, nil
}

// Batch packs the next n rows as a training batch.
func (p *Packer) Batch(n int) (cpu.LMBatch, error) {
	var b cpu.LMBatch
	for range n {
		ids, docs, ws, err := p.Row()
		if err != nil {
			return cpu.LMBatch{}, err
		}
		b.Rows, b.Docs, b.Weights = append(b.Rows, ids), append(b.Docs, docs), append(b.Weights, ws)
	}
	return b, nil
}

// Skip advances the packer by n rows without keeping them (a resumed build
// catches up with its stream this way).
func (p *Packer) Skip(n int64) error {
	for range n {
		if _, _, _, err := p.Row(); err != nil {
			return err
		}
	}
	return nil
}
