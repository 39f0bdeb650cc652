package depend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestClassify(t *testing.T) {
	_, dialErr := net.DialTimeout("tcp", closedAddr(t), time.Second)
	if dialErr == nil {
		t.Fatal("dialed a closed port")
	}
	for _, tc := range []struct {
		name        string
		err         error
		unavailable bool
	}{
		{"nil", nil, false},
		{"refused", dialErr, true},
		{"wrapped refused", fmt.Errorf("get x: %w", dialErr), true},
		{"econnreset", fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{"deadline", context.DeadlineExceeded, true},
		{"eof", io.EOF, true},
		{"closed client", redis.ErrClosed, true},
		{"pool timeout", redis.ErrPoolTimeout, true},
		{"cancelled", context.Canceled, false},
		{"cancelled while dialing", fmt.Errorf("%w: %w", context.Canceled, dialErr), false},
		{"missing key", redis.Nil, false},
		{"other", errors.New("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Classify("redis", tc.err)
			if is := errors.Is(got, ErrUnavailable); is != tc.unavailable {
				t.Fatalf("Classify(%v) unavailable=%v, want %v", tc.err, is, tc.unavailable)
			}
			if !tc.unavailable {
				if got != tc.err {
					t.Errorf("Classify changed a passing error: %v -> %v", tc.err, got)
				}
				return
			}
			if !errors.Is(got, tc.err) {
				t.Errorf("the cause is lost: %v", got)
			}
			if !strings.HasPrefix(got.Error(), "redis is unavailable: ") || Name(got) != "redis" {
				t.Errorf("message %q, name %q", got.Error(), Name(got))
			}
			if again := Classify("other", fmt.Errorf("wrapped: %w", got)); Name(again) != "redis" {
				t.Errorf("classified twice: %v", again)
			}
		})
	}
}

func TestUnavailable(t *testing.T) {
	cause := errors.New("boom")
	err := Unavailable("redis", cause)
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, cause) || err.Error() != "redis is unavailable: boom" {
		t.Errorf("%v", err)
	}
	if err := Unavailable("redis", nil); !errors.Is(err, ErrUnavailable) || err.Error() != "redis is unavailable" {
		t.Errorf("%v", err)
	}
	if Name(cause) != "" {
		t.Error("a plain error has a dependency name")
	}
}

// TestRedisOptionsBounded checks the bounds and that a go-redis client built
// with them reports a Redis that is not there as unavailable, fast.
func TestRedisOptionsBounded(t *testing.T) {
	opt, err := RedisOptions("redis://" + closedAddr(t) + "/0")
	if err != nil {
		t.Fatal(err)
	}
	if opt.DialTimeout != RedisDialTimeout || opt.ReadTimeout != RedisIOTimeout || opt.WriteTimeout != RedisIOTimeout ||
		opt.PoolTimeout != RedisPoolTimeout || opt.MaxRetries != RedisMaxRetries {
		t.Errorf("options %+v", opt)
	}
	c := redis.NewClient(opt)
	defer c.Close()
	start := time.Now()
	err = Classify("redis", c.Get(context.Background(), "k").Err())
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("GET on a closed port: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("GET on a closed port took %v", took)
	}
	// The URL's own settings win.
	opt, err = RedisOptions("redis://127.0.0.1:1/0?read_timeout=7s&max_retries=5")
	if err != nil {
		t.Fatal(err)
	}
	if opt.ReadTimeout != 7*time.Second || opt.MaxRetries != 5 || opt.WriteTimeout != RedisIOTimeout {
		t.Errorf("URL settings lost: read %v retries %d write %v", opt.ReadTimeout, opt.MaxRetries, opt.WriteTimeout)
	}
	if _, err := RedisOptions("http://x"); err == nil {
		t.Error("a bad URL was accepted")
	}
}
