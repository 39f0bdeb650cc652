package depend

import (
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Bounds on Redis calls on the request path. A stopped Redis fails a call at
// once (connection refused); a stalled one (paused, overloaded, partitioned)
// fails it after about RedisIOTimeout per try, and RedisMaxRetries tries
// follow the first, so a request learns within about a second that Redis is
// unavailable instead of hanging for go-redis's defaults (5 s per read, 3
// retries). Transfers of large values pass their own longer timeout
// (redis.Client.WithTimeout); blocking commands (XREADGROUP BLOCK) get their
// block time added by go-redis.
const (
	RedisDialTimeout = 500 * time.Millisecond
	RedisIOTimeout   = 300 * time.Millisecond
	RedisPoolTimeout = 500 * time.Millisecond
	RedisMaxRetries  = 1
)

// RedisOptions parses url (redis://host:port/db) and bounds its timeouts
// with the Redis* constants where the URL does not set them itself
// (dial_timeout, read_timeout, write_timeout, pool_timeout, max_retries).
func RedisOptions(url string) (*redis.Options, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	Bound(opt)
	return opt, nil
}

// Bound sets the request-path bounds on the fields of opt that are unset,
// and makes each connection attempt a single dial (go-redis's default is 5
// dials 100 ms apart; the command's own retry dials again).
func Bound(opt *redis.Options) {
	if opt.DialTimeout == 0 {
		opt.DialTimeout = RedisDialTimeout
	}
	if opt.ReadTimeout == 0 {
		opt.ReadTimeout = RedisIOTimeout
	}
	if opt.WriteTimeout == 0 {
		opt.WriteTimeout = RedisIOTimeout
	}
	if opt.PoolTimeout == 0 {
		opt.PoolTimeout = RedisPoolTimeout
	}
	if opt.MaxRetries == 0 {
		opt.MaxRetries = RedisMaxRetries
	}
	if opt.DialerRetries == 0 {
		opt.DialerRetries = 1
	}
}
