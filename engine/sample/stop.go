package sample

import "strings"

// StopMatcher watches streamed text for stop sequences. It holds back any
// tail that could still grow into a stop sequence, so text it releases never
// contains (a part of) a stop sequence.
type StopMatcher struct {
	stops   []string
	pending string
	stopped bool
}

// NewStopMatcher returns a matcher for the given stop sequences (empty strings are ignored).
func NewStopMatcher(stops []string) *StopMatcher {
	m := &StopMatcher{}
	for _, s := range stops {
		if s != "" {
			m.stops = append(m.stops, s)
		}
	}
	return m
}

// Push adds newly decoded text; it returns the text that is safe to emit and
// whether a stop sequence was reached (the stop sequence itself and anything
// after it are dropped).
func (m *StopMatcher) Push(text string) (emit string, stopped bool) {
	if m.stopped {
		return "", true
	}
	buf := m.pending + text
	cut := -1
	for _, s := range m.stops {
		if i := strings.Index(buf, s); i >= 0 && (cut < 0 || i < cut) {
			cut = i
		}
	}
	if cut >= 0 {
		m.stopped = true
		m.pending = ""
		return buf[:cut], true
	}
	hold := 0
	for _, s := range m.stops {
		for n := min(len(s)-1, len(buf)); n > hold; n-- {
			if strings.HasSuffix(buf, s[:n]) {
				hold = n
				break
			}
		}
	}
	m.pending = buf[len(buf)-hold:]
	return buf[:len(buf)-hold], false
}

// Flush returns the held-back text at the end of generation.
func (m *StopMatcher) Flush() string {
	p := m.pending
	m.pending = ""
	if m.stopped {
		return ""
	}
	return p
}
