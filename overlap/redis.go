package overlap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultRedisMaxLen is the stream cap of NewRedisStore(c, key, 0).
const DefaultRedisMaxLen = 10000

// redisFieldRecord is the stream entry field holding a record's JSON (the
// entry's "id" field holds its id).
const redisFieldRecord = "record"

// redisBlock is how long one XREAD of a subscriber blocks; a cancelled
// subscriber's channel is closed within about this long.
var redisBlock = 500 * time.Millisecond

// redisReadCount is the most entries one subscriber XREAD returns.
const redisReadCount = 256

// addScript appends a record to the capped stream (KEYS[1]) and maps its
// record id to the new entry id in the index hash (KEYS[2]). When the index
// holds more than twice the cap it forgets every id whose entry is older than
// the stream's oldest, so the index stays bounded by about 2*maxLen + slack.
// ARGV: maxLen, record id, record JSON.
var addScript = redis.NewScript(`
local eid = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'id', ARGV[2], 'record', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], eid)
local cap = tonumber(ARGV[1])
if redis.call('HLEN', KEYS[2]) > 2 * cap then
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #first > 0 then
    local function parse(s)
      local d = string.find(s, '-', 1, true)
      return tonumber(string.sub(s, 1, d - 1)), tonumber(string.sub(s, d + 1))
    end
    local fms, fseq = parse(first[1][1])
    local all = redis.call('HGETALL', KEYS[2])
    for i = 1, #all, 2 do
      local ms, seq = parse(all[i + 1])
      if ms < fms or (ms == fms and seq < fseq) then
        redis.call('HDEL', KEYS[2], all[i])
      end
    end
  end
end
return eid
`)

// RedisStore is a Store over a capped Redis stream, shared by every replica
// that uses the same key: records added by one are listed, found and
// streamed by all.
//
// Layout: the stream key holds one entry per record (fields "id" and
// "record", the record's JSON), appended with XADD MAXLEN ~ maxLen, so Redis
// trims the oldest entries approximately (the stream may briefly hold a
// little more than maxLen). The hash key+":ids" maps a record id to its
// latest entry id, for Get; it is pruned of trimmed entries whenever it grows
// past 2*maxLen, so it is bounded too. Get of a record whose entry was
// trimmed returns ErrNotFound. A record whose id is added again is found by
// Get as the newer copy; both stay in Recent until trimmed, as with Ring.
type RedisStore struct {
	c       *redis.Client
	key     string
	maxLen  int64
	dropped atomic.Uint64
}

var _ Store = (*RedisStore)(nil)

// NewRedisStore returns a store over the stream at key on client, capped at
// about maxLen records (DefaultRedisMaxLen if maxLen <= 0). The caller owns
// and closes client.
func NewRedisStore(client *redis.Client, key string, maxLen int64) *RedisStore {
	if maxLen <= 0 {
		maxLen = DefaultRedisMaxLen
	}
	return &RedisStore{c: client, key: key, maxLen: maxLen}
}

// MaxLen returns the stream's approximate cap.
func (s *RedisStore) MaxLen() int64 { return s.maxLen }

// Dropped returns how many deliveries to slow subscribers of this store were
// skipped.
func (s *RedisStore) Dropped() uint64 { return s.dropped.Load() }

func (s *RedisStore) index() string { return s.key + ":ids" }

// Add appends rec to the stream, trimming it to about MaxLen entries.
func (s *RedisStore) Add(ctx context.Context, rec Record) error {
	if rec.ID == "" {
		return errors.New("overlap: record without an id")
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("overlap: encode record %s: %w", rec.ID, err)
	}
	if err := addScript.Run(ctx, s.c, []string{s.key, s.index()}, s.maxLen, rec.ID, b).Err(); err != nil {
		return fmt.Errorf("overlap: redis add %s: %w", rec.ID, err)
	}
	return nil
}

// Recent returns up to n records, newest first (n <= 0: all kept).
func (s *RedisStore) Recent(ctx context.Context, n int) ([]Record, error) {
	var msgs []redis.XMessage
	var err error
	if n <= 0 {
		msgs, err = s.c.XRevRange(ctx, s.key, "+", "-").Result()
	} else {
		msgs, err = s.c.XRevRangeN(ctx, s.key, "+", "-", int64(n)).Result()
	}
	if err != nil {
		return nil, fmt.Errorf("overlap: redis recent: %w", err)
	}
	out := make([]Record, 0, len(msgs))
	for _, m := range msgs {
		r, err := decodeEntry(m)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Get returns the latest record with the given id, or ErrNotFound when it was
// never added or has been trimmed away.
func (s *RedisStore) Get(ctx context.Context, id string) (Record, error) {
	eid, err := s.c.HGet(ctx, s.index(), id).Result()
	if errors.Is(err, redis.Nil) {
		return Record{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if err != nil {
		return Record{}, fmt.Errorf("overlap: redis get %q: %w", id, err)
	}
	msgs, err := s.c.XRange(ctx, s.key, eid, eid).Result()
	if err != nil {
		return Record{}, fmt.Errorf("overlap: redis get %q: %w", id, err)
	}
	if len(msgs) == 0 {
		return Record{}, fmt.Errorf("%w: %q (trimmed)", ErrNotFound, id)
	}
	return decodeEntry(msgs[0])
}

// Subscribe returns a channel of the records added to the stream, by any
// replica, after it returns; it is closed when ctx is done. A goroutine
// reads the stream with XREAD BLOCK from the entry that was newest when
// Subscribe was called (the equivalent of "$" without missing records added
// in between), then from the last one seen. Records that do not fit in the
// channel's buffer are dropped (counted by Dropped), as with Ring. Read errors
// (Redis unreachable) are retried after a pause until ctx is done.
func (s *RedisStore) Subscribe(ctx context.Context) (<-chan Record, error) {
	last := "0-0"
	msgs, err := s.c.XRevRangeN(ctx, s.key, "+", "-", 1).Result()
	if err != nil {
		return nil, fmt.Errorf("overlap: redis subscribe: %w", err)
	}
	if len(msgs) > 0 {
		last = msgs[0].ID
	}
	ch := make(chan Record, subscriberBuffer)
	go func() {
		defer close(ch)
		for ctx.Err() == nil {
			streams, err := s.c.XRead(ctx, &redis.XReadArgs{
				Streams: []string{s.key, last}, Count: redisReadCount, Block: redisBlock,
			}).Result()
			if errors.Is(err, redis.Nil) {
				continue // block timed out
			}
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
				continue
			}
			for _, st := range streams {
				for _, m := range st.Messages {
					last = m.ID
					r, err := decodeEntry(m)
					if err != nil {
						continue // not a record: skip it
					}
					select {
					case ch <- r:
					default:
						s.dropped.Add(1)
					}
				}
			}
		}
	}()
	return ch, nil
}

// decodeEntry decodes the record of a stream entry.
func decodeEntry(m redis.XMessage) (Record, error) {
	v, ok := m.Values[redisFieldRecord].(string)
	if !ok {
		return Record{}, fmt.Errorf("overlap: redis entry %s: no %q field", m.ID, redisFieldRecord)
	}
	var r Record
	if err := json.Unmarshal([]byte(v), &r); err != nil {
		return Record{}, fmt.Errorf("overlap: redis entry %s: %w", m.ID, err)
	}
	return r, nil
}
