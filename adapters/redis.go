package adapters

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sooserve/sooserve/internal/depend"
)

// RedisStore keeps adapters in Redis so several replicas share them:
//
//	PREFIX index          hash: name -> record JSON
//	PREFIX blob:<sha256>  file contents, content-addressed
//	PREFIX version        counter giving out versions
//	PREFIX events         pub/sub channel of Event JSON
//
// A put or delete writes the blobs, the record and removes blobs no record
// references any more in one MULTI/EXEC transaction (optimistic, WATCHing
// the index), and publishes its Event in the same transaction, so readers
// see the old or the new adapter whole.
type RedisStore struct {
	c      *redis.Client
	prefix string
	log    *slog.Logger
}

// DefaultRedisPrefix prefixes the keys of a RedisStore.
const DefaultRedisPrefix = "soo:adapters:"

// OpenRedis connects to url (redis://host:port/db) and checks the
// connection. prefix "" means DefaultRedisPrefix.
//
// Calls are bounded as depend.RedisOptions bounds them (a few hundred
// milliseconds, unless the URL sets its own timeouts), except the transfers
// of adapter files, whose time grows with their size (transferTimeout). A
// Redis that is down or stalled makes the store's methods fail with an
// error wrapping ErrUnavailable that names Redis.
func OpenRedis(ctx context.Context, url, prefix string, log *slog.Logger) (*RedisStore, error) {
	opt, err := depend.RedisOptions(url)
	if err != nil {
		return nil, fmt.Errorf("adapters: %w", err)
	}
	if prefix == "" {
		prefix = DefaultRedisPrefix
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := redis.NewClient(opt)
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		return nil, fmt.Errorf("adapters: redis %s: %w", opt.Addr, depend.Classify("redis", err))
	}
	return &RedisStore{c: c, prefix: prefix, log: log}, nil
}

func (s *RedisStore) index() string          { return s.prefix + "index" }
func (s *RedisStore) blob(sum string) string { return s.prefix + "blob:" + sum }
func (s *RedisStore) channel() string        { return s.prefix + "events" }
func (s *RedisStore) versionKey() string     { return s.prefix + "version" }
func (s *RedisStore) encode(e Event) []byte  { b, _ := json.Marshal(e); return b }
func decodeRecord(b string) (Record, error) {
	var r Record
	err := json.Unmarshal([]byte(b), &r)
	return r, err
}

// wrap adds op to a failed call's error; a Redis that is down or stalled
// becomes an ErrUnavailable error naming Redis.
func (s *RedisStore) wrap(op string, err error) error {
	if err == nil || IsTyped(err) {
		return err
	}
	return fmt.Errorf("adapters: redis %s: %w", op, depend.Classify("redis", err))
}

// Transfers of adapter files may take longer than the bounds of small
// calls: their timeout is transferTimeout, the client's timeout plus the
// time to move n bytes at transferRate (a slow link; loopback is 100 times
// faster), so a stalled Redis still fails them in bounded time.
const transferRate = 8 << 20 // bytes per second

// transfer returns a client sharing s.c's connections whose read and write
// timeouts allow moving n bytes (s.c itself when it has no timeouts).
func (s *RedisStore) transfer(n int64) *redis.Client {
	rt := s.c.Options().ReadTimeout
	if rt <= 0 {
		return s.c
	}
	return s.c.WithTimeout(transferTimeout(rt, n))
}

// transferTimeout is base plus the time n bytes take at transferRate.
func transferTimeout(base time.Duration, n int64) time.Duration {
	return max(base, 0) + time.Duration(float64(n)/transferRate*float64(time.Second))
}

// update runs fn in a WATCH transaction on the index with client c (s.c or
// a transfer client), retrying when another replica changed it meanwhile.
func (s *RedisStore) update(ctx context.Context, c *redis.Client, fn func(tx *redis.Tx, all map[string]string) error) error {
	for range 20 {
		err := c.Watch(ctx, func(tx *redis.Tx) error {
			all, err := tx.HGetAll(ctx, s.index()).Result()
			if err != nil {
				return err
			}
			return fn(tx, all)
		}, s.index())
		if !errors.Is(err, redis.TxFailedErr) {
			return err
		}
	}
	return errors.New("too much contention on the adapter index")
}

// unreferenced returns the blobs of old that no record of all (other than
// old's name, and other than keep) references.
func unreferenced(old Record, all map[string]string, keep ...string) []string {
	var out []string
	for _, sum := range []string{old.SHA256, old.ConfigSHA256} {
		if slices.Contains(keep, sum) || slices.Contains(out, sum) {
			continue
		}
		used := false
		for name, js := range all {
			if name == old.Name {
				continue
			}
			if r, err := decodeRecord(js); err == nil && (r.SHA256 == sum || r.ConfigSHA256 == sum) {
				used = true
				break
			}
		}
		if !used {
			out = append(out, sum)
		}
	}
	return out
}

// Put implements Store.
func (s *RedisStore) Put(ctx context.Context, rec Record, f Files, replace bool) (Record, error) {
	if err := ValidateName(rec.Name); err != nil {
		return Record{}, err
	}
	rec.SHA256, rec.ConfigSHA256, rec.Size = Sum(f.Weights), Sum(f.Config), f.Size()
	v, err := s.c.Incr(ctx, s.versionKey()).Result()
	if err != nil {
		return Record{}, s.wrap("put", err)
	}
	rec.Version = v
	js, err := json.Marshal(rec)
	if err != nil {
		return Record{}, fmt.Errorf("adapters: put %s: %w", rec.Name, err)
	}
	err = s.update(ctx, s.transfer(rec.Size), func(tx *redis.Tx, all map[string]string) error {
		oldJS, had := all[rec.Name]
		if had && !replace {
			return exists(rec.Name)
		}
		op := OpPut
		var gc []string
		if had {
			op = OpUpdate
			if old, err := decodeRecord(oldJS); err == nil {
				gc = unreferenced(old, all, rec.SHA256, rec.ConfigSHA256)
			}
		}
		_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, s.blob(rec.SHA256), f.Weights, 0)
			p.Set(ctx, s.blob(rec.ConfigSHA256), f.Config, 0)
			p.HSet(ctx, s.index(), rec.Name, js)
			for _, sum := range gc {
				p.Del(ctx, s.blob(sum))
			}
			p.Publish(ctx, s.channel(), s.encode(Event{Op: op, Name: rec.Name, Version: rec.Version}))
			return nil
		})
		return err
	})
	if err != nil {
		return Record{}, s.wrap("put "+rec.Name, err)
	}
	return rec, nil
}

// Get implements Store.
func (s *RedisStore) Get(ctx context.Context, name string) (Record, error) {
	js, err := s.c.HGet(ctx, s.index(), name).Result()
	if errors.Is(err, redis.Nil) {
		return Record{}, notFound(name)
	}
	if err != nil {
		return Record{}, s.wrap("get "+name, err)
	}
	rec, err := decodeRecord(js)
	if err != nil {
		return Record{}, fmt.Errorf("adapters: redis record %s: %w", name, err)
	}
	return rec, nil
}

// Load implements Store. A replacement racing with the read is retried.
func (s *RedisStore) Load(ctx context.Context, name string) (Record, Files, error) {
	var last error
	for range 5 {
		rec, err := s.Get(ctx, name)
		if err != nil {
			return Record{}, Files{}, err
		}
		vals, err := s.transfer(rec.Size).MGet(ctx, s.blob(rec.SHA256), s.blob(rec.ConfigSHA256)).Result()
		if err != nil {
			return Record{}, Files{}, s.wrap("load "+name, err)
		}
		w, ok1 := vals[0].(string)
		c, ok2 := vals[1].(string)
		if !ok1 || !ok2 {
			last = fmt.Errorf("adapters: redis load %s: a blob of version %d is gone", name, rec.Version)
			continue
		}
		f := Files{Config: []byte(c), Weights: []byte(w)}
		if Sum(f.Weights) != rec.SHA256 || Sum(f.Config) != rec.ConfigSHA256 {
			return Record{}, Files{}, fmt.Errorf("adapters: redis load %s: blobs do not match the record's sha256", name)
		}
		return rec, f, nil
	}
	return Record{}, Files{}, last
}

// List implements Store.
func (s *RedisStore) List(ctx context.Context) ([]Record, error) {
	all, err := s.c.HGetAll(ctx, s.index()).Result()
	if err != nil {
		return nil, s.wrap("list", err)
	}
	out := make([]Record, 0, len(all))
	for name, js := range all {
		rec, err := decodeRecord(js)
		if err != nil {
			s.log.Warn("adapters: ignoring an unreadable redis record", "name", name, "err", err)
			continue
		}
		out = append(out, rec)
	}
	slices.SortFunc(out, func(a, b Record) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Delete implements Store.
func (s *RedisStore) Delete(ctx context.Context, name string) error {
	err := s.update(ctx, s.c, func(tx *redis.Tx, all map[string]string) error {
		js, ok := all[name]
		if !ok {
			return notFound(name)
		}
		var gc []string
		if old, err := decodeRecord(js); err == nil {
			gc = unreferenced(old, all)
		}
		_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HDel(ctx, s.index(), name)
			for _, sum := range gc {
				p.Del(ctx, s.blob(sum))
			}
			p.Publish(ctx, s.channel(), s.encode(Event{Op: OpDelete, Name: name}))
			return nil
		})
		return err
	})
	return s.wrap("delete "+name, err)
}

// Watch implements Watcher: it subscribes to the events channel and calls fn
// for each event, and with OpResync after every (re)subscription, so a
// replica that lost its connection lists again. It returns when ctx ends.
func (s *RedisStore) Watch(ctx context.Context, fn func(Event)) error {
	ps := s.c.Subscribe(ctx, s.channel())
	stop := context.AfterFunc(ctx, func() { ps.Close() }) // unblocks a pending receive
	defer stop()
	defer ps.Close()
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		msg, err := ps.ReceiveTimeout(ctx, 5*time.Second)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Quiet channel: check the connection is alive (a failed
				// ping reconnects and resubscribes).
				if perr := ps.Ping(ctx); perr != nil {
					s.log.Warn("adapters: redis subscription ping failed", "err", perr)
				}
				continue
			}
			s.log.Warn("adapters: redis subscription lost; reconnecting", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				fn(Event{Op: OpResync})
			}
		case *redis.Message:
			var ev Event
			if err := json.Unmarshal([]byte(m.Payload), &ev); err != nil || ValidateName(ev.Name) != nil {
				s.log.Warn("adapters: ignoring a malformed event", "payload", clip(m.Payload))
				continue
			}
			fn(ev)
		}
	}
	return nil
}

// Close implements Store.
func (s *RedisStore) Close() error { return s.c.Close() }
