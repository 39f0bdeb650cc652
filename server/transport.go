package server

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

// The transport layer: what every request passes before a handler reads it.
//
//   - guard (fasthttp level, before fiber): an unknown method, two
//     Content-Length headers that differ, or Content-Length with
//     Transfer-Encoding (request smuggling behind a proxy) are answered 400
//     in the envelope; the framing errors close the connection.
//   - transport (fiber middleware, after auth): the Origin check, the
//     content type of bodies, and Content-Encoding, decoded here as a stream
//     whose decoded size is capped at Limits.MaxBodyBytes (413), at most
//     maxEncodings layers, gzip and deflate only (415 otherwise). The request
//     then carries the decoded body and no Content-Encoding, so c.Body()
//     (which decodes whatever Content-Encoding says, with no limit) returns
//     the plain bytes everywhere.

// maxEncodings bounds the Content-Encoding layers of a request body.
const maxEncodings = 2

// guard wraps fiber's fasthttp handler: it answers, in the error envelope,
// the requests fiber would answer in plain text (an unknown method) or
// accept when it should not (ambiguous framing).
func (s *Server) guard(next fasthttp.RequestHandler) fasthttp.RequestHandler {
	methods := make(map[string]bool)
	for _, m := range s.app.Config().RequestMethods {
		methods[m] = true
	}
	allowed := strings.Join(s.app.Config().RequestMethods, ", ")
	return func(ctx *fasthttp.RequestCtx) {
		var e *Error
		closeConn := false
		if msg := framingError(&ctx.Request.Header); msg != "" {
			e = Invalid("", "%s", msg)
			e.Code = "bad_framing"
			closeConn = true // the rest of the stream cannot be trusted
		} else if !methods[string(ctx.Method())] {
			e = Invalid("", "unknown HTTP method; this server answers %s", allowed)
			e.Code = "unknown_method"
		}
		if e == nil {
			next(ctx)
			return
		}
		start := time.Now()
		ctx.Response.Reset()
		if closeConn {
			ctx.SetConnectionClose()
		}
		ctx.SetStatusCode(e.Status)
		ctx.SetContentType(fiber.MIMEApplicationJSON)
		ctx.SetBody(e.Envelope())
		route := "unmatched"
		if p := string(ctx.Path()); s.paths[p] {
			route = p
		}
		s.record(route, "", e.Status, time.Since(start))
	}
}

// framingError returns why a request's framing is ambiguous ("" when it is
// not): Content-Length headers that differ (fasthttp keeps the last), or
// Content-Length beside Transfer-Encoding (RFC 9112 §6.3: both mean an
// attempt at request smuggling).
func framingError(h *fasthttp.RequestHeader) string {
	var length []byte
	var te bool
	for raw := h.RawHeaders(); len(raw) > 0; {
		var line []byte
		line, raw, _ = bytes.Cut(raw, []byte("\n"))
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		k, v = bytes.TrimSpace(k), bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte(fiber.HeaderContentLength)):
			if length != nil && !bytes.Equal(length, v) {
				return "the request has conflicting Content-Length headers"
			}
			length = v
		case bytes.EqualFold(k, []byte(fiber.HeaderTransferEncoding)):
			te = true
		}
	}
	if te && length != nil {
		return "the request has both Transfer-Encoding and Content-Length"
	}
	return ""
}

// transport checks a request's origin and content type and decodes its
// body (see the comment at the top of this file).
func (s *Server) transport(c *fiber.Ctx) error {
	if err := s.checkOrigin(c); err != nil {
		return err
	}
	if err := checkContentType(c); err != nil {
		return err
	}
	if err := s.decodeBody(c); err != nil {
		return err
	}
	return c.Next()
}

// stateChanging reports whether method may change the server's state.
func stateChanging(method string) bool {
	switch method {
	case fiber.MethodPost, fiber.MethodPut, fiber.MethodPatch, fiber.MethodDelete:
		return true
	}
	return false
}

// checkOrigin refuses (403) a state-changing request that a web page of
// another origin sent, when the server runs without an API key: a browser
// sends such a request (a form post, a text/plain or multipart fetch)
// without asking first, so the page could train, upload or delete. The
// request's Origin must name the server's own Host (scheme default ports
// allowed when Host has no port), or both must be loopback names with the
// same port. A request with no Origin (curl, SDKs, other servers) passes.
// With an API key browsers cannot send the Authorization header across
// origins without a preflight this server does not grant, so no check is
// needed. Origin matching Host does not stop DNS rebinding: a server
// reachable by others should set an API key.
func (s *Server) checkOrigin(c *fiber.Ctx) error {
	if s.opts.APIKey != "" || !stateChanging(c.Method()) {
		return nil
	}
	origin := c.Get(fiber.HeaderOrigin)
	if origin == "" || sameOrigin(origin, string(c.Request().Host())) {
		return nil
	}
	return &Error{Status: http.StatusForbidden, Type: TypePermission, Code: "cross_origin",
		Message: fmt.Sprintf("cross-origin request refused: Origin %q is not this server (%q); without an API key only same-origin pages and non-browser clients may change state",
			clip(origin), clip(string(c.Request().Host())))}
}

// sameOrigin reports whether origin (scheme://host[:port]) names host (the
// Host header, host[:port]).
func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || host == "" {
		return false
	}
	oh, op := u.Hostname(), u.Port()
	if op == "" {
		op = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	hh, hp, err := net.SplitHostPort(host)
	if err != nil {
		hh, hp = strings.Trim(host, "[]"), ""
	}
	switch {
	case hp == "" && op != "80" && op != "443":
		return false
	case hp != "" && hp != op:
		return false
	}
	return strings.EqualFold(oh, hh) || (loopback(oh) && loopback(hh))
}

// loopback reports whether host names the loopback interface.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// uploadRoute reports whether c is POST /v1/adapters (multipart; its handler
// checks the type), matched as fiber routes: case-insensitive, trailing
// slashes ignored.
func uploadRoute(c *fiber.Ctx) bool {
	return c.Method() == fiber.MethodPost && strings.EqualFold(strings.TrimRight(c.Path(), "/"), "/v1/adapters")
}

// checkContentType requires application/json (any parameters, such as
// charset) on a POST, PUT or PATCH with a body: the types a browser sends
// across origins without a preflight (text/plain, forms) are refused with
// 415, and so is a body without a type. The adapter upload takes multipart.
func checkContentType(c *fiber.Ctx) error {
	switch c.Method() {
	case fiber.MethodPost, fiber.MethodPut, fiber.MethodPatch:
	default:
		return nil
	}
	if len(c.Request().Body()) == 0 || uploadRoute(c) {
		return nil
	}
	ct := c.Get(fiber.HeaderContentType)
	if mt, _, err := mime.ParseMediaType(ct); err == nil && mt == fiber.MIMEApplicationJSON {
		return nil
	}
	msg := "this route takes a JSON body: send Content-Type: application/json"
	if ct != "" {
		msg += fmt.Sprintf(" (got %q)", clip(ct))
	}
	return &Error{Status: http.StatusUnsupportedMediaType, Type: TypeUnsupported, Code: "unsupported_content_type", Message: msg}
}

// errBodyTooLarge is returned by capped when a decoded body passes its limit.
var errBodyTooLarge = errors.New("decoded body too large")

// capped reads r and fails with errBodyTooLarge once more than left bytes
// have come out of it.
type capped struct {
	r    io.Reader
	left int64
	over bool
}

func (c *capped) Read(p []byte) (int, error) {
	if c.over {
		return 0, errBodyTooLarge
	}
	if int64(len(p)) > c.left+1 {
		p = p[:c.left+1]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if c.left < 0 {
		c.over = true
		return n, errBodyTooLarge
	}
	return n, err
}

// decodeBody replaces a request body sent with Content-Encoding by its
// decoded bytes and removes the header. Every layer's output is capped at
// Limits.MaxBodyBytes, so the work is bounded by layers x limit whatever the
// compression ratio.
// maxDecodes bounds the compressed bodies decoded at once, and decodeWait how
// long a request waits for a turn before a 429.
const (
	maxDecodes = 4
	decodeWait = 5 * time.Second
)

func (s *Server) decodeBody(c *fiber.Ctx) error {
	h := &c.Request().Header
	var encs []string
	h.VisitAll(func(k, v []byte) {
		if !strings.EqualFold(string(k), fiber.HeaderContentEncoding) {
			return
		}
		for _, e := range strings.Split(string(v), ",") {
			if e = strings.ToLower(strings.TrimSpace(e)); e != "" && e != "identity" {
				encs = append(encs, e)
			}
		}
	})
	if len(encs) == 0 {
		h.Del(fiber.HeaderContentEncoding) // "identity" or empty: nothing to decode
		return nil
	}
	if len(encs) > maxEncodings {
		return &Error{Status: http.StatusUnsupportedMediaType, Type: TypeUnsupported, Code: "too_many_encodings",
			Message: fmt.Sprintf("the request body has %d content encodings; at most %d are accepted", len(encs), maxEncodings)}
	}
	for _, e := range encs {
		if e != "gzip" && e != "x-gzip" && e != "deflate" {
			return &Error{Status: http.StatusUnsupportedMediaType, Type: TypeUnsupported, Code: "unsupported_encoding",
				Message: fmt.Sprintf("Content-Encoding %q is not supported; send gzip, deflate or an unencoded body", clip(e))}
		}
	}
	raw := c.Request().Body()
	if len(raw) == 0 {
		h.Del(fiber.HeaderContentEncoding)
		return nil
	}
	// At most maxDecodes bodies decode at once: each may grow to the body
	// limit, so the decoders' memory stays bounded however many clients send
	// compressed bodies together; the others wait their turn, briefly.
	select {
	case s.decodes <- struct{}{}:
		defer func() { <-s.decodes }()
	case <-time.After(decodeWait):
		return &Error{Status: http.StatusTooManyRequests, Type: TypeRateLimit, Code: "decoder_busy",
			Message: "too many compressed request bodies are being decoded; retry, or send the body uncompressed"}
	}
	raw = bytes.Clone(raw) // the body buffer is about to be reused for the output
	limit := int64(s.opts.Limits.MaxBodyBytes)
	var r io.Reader = bytes.NewReader(raw)
	var caps []*capped
	for i := len(encs) - 1; i >= 0; i-- { // the last coding listed was applied last
		var err error
		if r, err = decoder(encs[i], r); err != nil {
			return badEncoding(encs[i], err)
		}
		cr := &capped{r: r, left: limit}
		caps, r = append(caps, cr), cr
	}
	c.Request().ResetBody()
	_, err := io.Copy(c.Request().BodyWriter(), r)
	for _, cr := range caps {
		if cr.over {
			c.Request().ResetBody()
			return &Error{Status: http.StatusRequestEntityTooLarge, Type: TypeTooLarge, Code: "body_too_large",
				Message: fmt.Sprintf("the request body decodes to more than %d bytes", limit)}
		}
	}
	if err != nil {
		c.Request().ResetBody()
		return badEncoding(strings.Join(encs, ", "), err)
	}
	h.Del(fiber.HeaderContentEncoding)
	h.SetContentLength(len(c.Request().Body()))
	return nil
}

// decoder returns a reader of r decoded from encoding (gzip or deflate;
// deflate is zlib-wrapped as HTTP specifies, or raw as some clients send).
func decoder(encoding string, r io.Reader) (io.Reader, error) {
	if encoding == "deflate" {
		br := bufio.NewReader(r)
		if b, err := br.Peek(2); err == nil && b[0]&0x0f == 8 && (uint16(b[0])<<8|uint16(b[1]))%31 == 0 {
			return zlib.NewReader(br)
		}
		return flate.NewReader(br), nil
	}
	return gzip.NewReader(r)
}

// badEncoding is the 400 of a body that does not decode as it says.
func badEncoding(encoding string, err error) *Error {
	return &Error{Status: http.StatusBadRequest, Type: TypeInvalidRequest, Code: "invalid_encoding",
		Message: fmt.Sprintf("the request body is not valid %s data: %v", clip(encoding), err), Err: err}
}
